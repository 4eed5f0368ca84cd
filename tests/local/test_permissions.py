"""`ssmd local up` with NATS permissions on (`nats.auth: nkeys`, the default), for real.

The pipeline writes the environment's seeds and authorization under its work directory,
starts nats-server with that authorization, and hands every runtime child its own role's
seed and no other (`NATS_NKEY_SEED` in that child's environment). A day roll that adds a
shard adds its roles (the server reloads the new authorization) and the new shard's
processes publish and archive as their own roles; nothing is refused on the way.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from local_runs import LocalRun, metrics, sim_stats

from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE, read_seed_file

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]

RATE = "40"
ETH_CARVE_OUT = """\
  eth:
    selector: {tier: 1, prefix: "ETH*"}
    replicas: 1
"""


def environ(pid: int) -> dict[str, str]:
    """The environment a running process was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


def scrape(port: int) -> dict[str, float]:
    """A child's /metrics, or nothing while it is not listening yet."""
    try:
        return metrics(port)
    except OSError:
        return {}


def children(state: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [c for c in state["children"] if c["kind"] == kind]


def test_every_child_gets_only_its_own_roles_seed_and_a_roll_adds_the_new_shards_roles(
    tmp_path: Path,
) -> None:
    run = LocalRun(tmp_path, "--rate", RATE).start()  # no --for: the test ends it
    try:
        state = run.running()
        auth_dir = Path(state["nats_auth_dir"])
        assert auth_dir.is_relative_to(tmp_path)
        assert (auth_dir / "authorization.conf").stat().st_mode & 0o777 == 0o644
        for kind in ("connector", "archiver"):
            for child in children(state, kind):
                seed_file = auth_dir / f"{kind}-{child['shard']}.nk"
                assert environ(child["pid"])[NKEY_SEED_VARIABLE] == str(seed_file)
                assert seed_file.stat().st_mode & 0o777 == 0o600
                read_seed_file(seed_file, f"{kind}-{child['shard']}")  # a valid seed
        (simulator,) = children(state, "simulator")
        assert NKEY_SEED_VARIABLE not in environ(simulator["pid"])

        with run.env_file.open("a") as handle:
            handle.write(ETH_CARVE_OUT)
        run.signal(signal.SIGHUP)
        rolled = run.wait_until(
            "the roll that adds shard eth",
            lambda: (s := run.state()) and s["generation"] == 1 and s,
        )
        assert rolled["roll_error"] is None, rolled["roll_error"]
        for kind in ("connector", "archiver"):
            (child,) = [c for c in children(rolled, kind) if c["shard"] == "eth"]
            assert environ(child["pid"])[NKEY_SEED_VARIABLE] == str(auth_dir / f"{kind}-eth.nk")
        (eth,) = [c for c in children(rolled, "connector") if c["shard"] == "eth"]
        run.wait_until(
            "eth's connector publishes as connector-eth",
            lambda: scrape(eth["metrics_port"]).get("ssmd_connector_published_total", 0) > 0,
        )
        run.wait_until("the exchange is sending", lambda: sim_stats(rolled)["generated"] >= 100)
        for child in [*children(rolled, "connector"), *children(rolled, "archiver")]:
            figures = run.wait_until("its metrics", lambda c=child: scrape(c["metrics_port"]))
            assert figures["ssmd_nats_permission_errors_total"] == 0, child
        run.signal(signal.SIGTERM)
        summary = run.summary()
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    assert run.leftovers() == []
    shards = {row["shard"]: row for row in summary["shards"]}
    assert shards["eth"]["published"] > 0
    for row in shards.values():  # everything published, as each shard's roles, is archived
        assert row["archived_lines"] == row["published"], row
