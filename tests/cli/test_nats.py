"""`ssmd nats auth ENV --out DIR` as an operator running their own nats-server uses it: one
seed per role (mode 0600) and the authorization to include; re-running keeps the seeds, a
shard split adds roles, a shard removal revokes them; bad input changes nothing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cli_runner import Ssmd, in_process

from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.nats_auth import render_authorization
from ssmd_infra.core.nkey_seeds import read_seed_file

TWO_SHARDS = """\
name: ops
feed: kalshi
shards:
  tier1: {selector: {tier: 1}, replicas: 1}
  tier2: {selector: {tier: 2}, replicas: 1}
"""
ROLES = [
    "admin",
    "client",
    "connector-tier1",
    "archiver-tier1",
    "connector-tier2",
    "archiver-tier2",
]


@pytest.fixture
def ssmd(capsys: pytest.CaptureFixture[str]) -> Ssmd:
    return in_process(capsys)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ops.yaml"
    path.write_text(text)
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_auth_writes_one_private_seed_per_role_and_the_authorization(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    out = tmp_path / "auth"
    result = ssmd("nats", "auth", str(env_file(tmp_path, TWO_SHARDS)), "--out", str(out))
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == "added: " + ", ".join(f"{r}.nk" for r in ROLES)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["authorization.conf", *(f"{r}.nk" for r in ROLES)]
    )
    keys = {}
    for role in ROLES:
        path = out / f"{role}.nk"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        keys[role] = read_seed_file(path, role).public_key
    env = parse_environment(TWO_SHARDS, "ops.yaml")
    assert (out / "authorization.conf").read_text() == render_authorization(env, keys)


def test_rerunning_keeps_seeds_a_split_adds_roles_and_a_removal_revokes_them(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    out = tmp_path / "auth"
    env = env_file(tmp_path, TWO_SHARDS)
    assert ssmd("nats", "auth", str(env), "--out", str(out)).code == 0
    (out / "ops-team.nk").write_text("not ours\n")  # not a role's name: left alone
    first = snapshot(out)

    again = ssmd("nats", "auth", str(env), "--out", str(out))
    assert again.out.splitlines()[0] == "kept: " + ", ".join(f"{r}.nk" for r in ROLES)
    assert snapshot(out) == first

    env.write_text(TWO_SHARDS + "  tier3: {selector: {tier: 3}, replicas: 1}\n")
    split = ssmd("nats", "auth", str(env), "--out", str(out))
    assert split.out.splitlines()[:2] == [
        "added: connector-tier3.nk, archiver-tier3.nk",
        "kept: " + ", ".join(f"{r}.nk" for r in ROLES),
    ]
    after_split = snapshot(out)
    assert {k: v for k, v in after_split.items() if k in first and k != "authorization.conf"} == {
        k: v for k, v in first.items() if k != "authorization.conf"
    }

    env.write_text(
        TWO_SHARDS.replace("  tier1: {selector: {tier: 1}, replicas: 1}\n", "")
        + "  tier3: {selector: {tier: 3}, replicas: 1}\n"
    )
    removal = ssmd("nats", "auth", str(env), "--out", str(out))
    assert removal.code == 0, removal.err
    assert removal.out.splitlines()[1] == "removed (revoked): archiver-tier1.nk, connector-tier1.nk"
    assert not (out / "connector-tier1.nk").exists()
    assert not (out / "archiver-tier1.nk").exists()
    config = (out / "authorization.conf").read_text()
    assert "internal.tier1" not in config and "internal.tier3.>" in config
    assert (out / "connector-tier2.nk").read_bytes() == first["connector-tier2.nk"]
    assert (out / "ops-team.nk").read_text() == "not ours\n"


def test_a_damaged_seed_stops_it_with_nothing_changed(ssmd: Ssmd, tmp_path: Path) -> None:
    out = tmp_path / "auth"
    env = env_file(tmp_path, TWO_SHARDS)
    assert ssmd("nats", "auth", str(env), "--out", str(out)).code == 0
    (out / "client.nk").write_text("SUnot-a-seed\n")
    env.write_text(TWO_SHARDS + "  tier3: {selector: {tier: 3}, replicas: 1}\n")
    before = snapshot(out)
    result = ssmd("nats", "auth", str(env), "--out", str(out))
    assert result.code == 1
    assert result.err.strip() == (
        f"error: NATS seed file {out / 'client.nk'} is not a NATS user seed: a user seed has "
        f"58 characters, this has 12"
    )
    assert snapshot(out) == before


def test_an_environment_without_nats_auth_or_an_invalid_one_is_refused(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    out = tmp_path / "auth"
    env = env_file(tmp_path, TWO_SHARDS + "nats: {auth: none}\n")
    result = ssmd("nats", "auth", str(env), "--out", str(out))
    assert (result.code, result.err.strip()) == (
        1,
        "error: environment ops has nats.auth: none: it uses no NATS credentials (set "
        "nats.auth: nkeys to generate them)",
    )
    env.write_text(TWO_SHARDS + "nats: {auth: nkey}\n")
    result = ssmd("nats", "auth", str(env), "--out", str(out))
    assert result.code == 1
    assert f"{env}:6:8: nats.auth: Input should be 'nkeys' or 'none' (got 'nkey')" in result.err
    assert not out.exists()


def test_an_out_path_that_is_a_file_is_refused(ssmd: Ssmd, tmp_path: Path) -> None:
    out = tmp_path / "auth"
    out.write_text("a file\n")
    result = ssmd("nats", "auth", str(env_file(tmp_path, TWO_SHARDS)), "--out", str(out))
    assert (result.code, result.err.strip()) == (
        1,
        f"error: {out} exists and is not a directory",
    )
    assert out.read_text() == "a file\n"
