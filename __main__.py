"""Pulumi program entry point: config -> environment -> one top-level component."""

from ssmd_infra.environment import load_environment

import pulumi

config = pulumi.Config("ssmd")
environment = load_environment(config.require("environment"))
