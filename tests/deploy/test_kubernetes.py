"""The Kubernetes target up to the Automation API: which stack, which project, which message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.deploy import kubernetes
from ssmd_infra.deploy.git import GitFile


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: ssmd\nruntime: python\n")
    (tmp_path / "Pulumi.prod.yaml").write_text(
        "config:\n  ssmd:environment: kalshi-prod\n  ssmd:natsUrl: nats://nats.ssmd:4222\n"
    )
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n  ssmd:environment: exchanges/environments/kalshi-dev.yaml\n"
        "  ssmd:natsUrl: nats://nats.ssmd:4222\n  ssmd:natsAdminUrl: nats://127.0.0.1:4222\n"
    )
    return tmp_path


def test_the_stack_is_the_one_naming_the_environment_by_name_or_path(project: Path) -> None:
    assert kubernetes.find_stack("kalshi-prod", project) == "prod"
    assert kubernetes.find_stack("kalshi-dev", project) == "dev"
    assert kubernetes.find_stack("kalshi-dev", project, "prod") == "prod"  # explicit wins


def test_no_stack_or_several_stacks_are_errors_that_say_what_to_do(project: Path) -> None:
    with pytest.raises(SsmdError, match=r"no Pulumi stack .* deploys environment 'kalshi-x'"):
        kubernetes.find_stack("kalshi-x", project)
    with pytest.raises(SsmdError, match=r"no stack file Pulumi\.staging\.yaml"):
        kubernetes.find_stack("kalshi-prod", project, "staging")
    (project / "Pulumi.prod2.yaml").write_text("config:\n  ssmd:environment: kalshi-prod\n")
    with pytest.raises(SsmdError, match="several stacks deploy 'kalshi-prod': prod, prod2"):
        kubernetes.find_stack("kalshi-prod", project)


def test_verification_reaches_nats_through_the_admin_url(project: Path) -> None:
    assert kubernetes.admin_nats_url(project, "dev") == "nats://127.0.0.1:4222"
    assert kubernetes.admin_nats_url(project, "prod") == "nats://nats.ssmd:4222"


def test_a_directory_without_pulumi_yaml_is_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(SsmdError, match="is not a Pulumi project"):
        kubernetes.project_dir(tmp_path)


@pytest.mark.parametrize("dirty", [False, True])
def test_the_update_message_records_the_commit_history_reads_back(dirty: bool) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    info = GitFile(Path("/ops/env.yaml"), Path("/ops"), "env.yaml", True, dirty, commit)
    message = kubernetes.update_message("shard apply", "kalshi-prod", info, "p-1")
    expected_ref = commit[:12] + ("-dirty" if dirty else "")
    assert message == f"ssmd shard apply kalshi-prod (plan p-1): env.yaml@{expected_ref}"
    assert kubernetes.commit_of_message(message) == expected_ref
    assert kubernetes.commit_of_message("manual pulumi up") is None
