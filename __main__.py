"""Pulumi program entry point: stack config -> environment -> one top-level component.

Everything is validated before the first resource is declared; a user error (bad stack
config, invalid environment file, orphan/overlap symbols, bad stream limits) fails the
program with the message alone, no traceback.
"""

import pulumi

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.pulumi.components import deploy

try:
    environment = deploy(pulumi.get_stack())
except SsmdError as exc:
    raise pulumi.RunError(str(exc)) from None

for key, value in environment.outputs.items():
    pulumi.export(key, value)
