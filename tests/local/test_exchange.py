"""`ssmd local up` against an exchange it did not start, as it runs against Kalshi itself.

The "exchange" is a Kalshi-compatible server the test starts (`ssmd run simulator` with
synthetic markets and its own key pair) and never pauses: `local up` reaches it only through
`--kalshi-rest-url`, `--kalshi-ws-url`, `--kalshi-key-id` and `--kalshi-private-key`, its
symbols come from the Kalshi secmaster (the environment file lists none), and the stop has
to be bounded against a feed that keeps sending.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_runs import REPO, LocalRun

from ssmd_infra.local.servers import free_port

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

ENV_FILE = REPO / "tests" / "envs" / "e2e-secmaster.yaml"
SYNTHETIC = 40  # KXSYN000-25DEC31-B0.5 … B39.5: 10 in shard low, 30 in shard high


@pytest.fixture
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A live exchange: (port, key directory with kalshi-private.pem), outside the run's
    directory so that it does not count as a process of the run."""
    port = free_port()
    home = tmp_path_factory.mktemp("exchange")
    keys = home / "keys"
    log = open(home / "exchange.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "simulator",
            str(ENV_FILE),
            "--port",
            str(port),
            "--rate",
            "5",
            "--synthetic",
            str(SYNTHETIC),
            "--key-dir",
            str(keys),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no exchange"
                time.sleep(0.1)
        yield port, keys
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_an_external_exchange_with_its_secmaster_is_captured_and_the_drain_is_bounded(
    tmp_path: Path, exchange: tuple[int, Path]
) -> None:
    port, keys = exchange
    run = LocalRun(
        tmp_path,
        "--for",
        "10",
        "--kalshi-rest-url",
        f"http://127.0.0.1:{port}/trade-api/v2",
        "--kalshi-ws-url",
        f"ws://127.0.0.1:{port}/trade-api/ws/v2",
        "--kalshi-key-id",
        "test-key",
        "--kalshi-private-key",
        str(keys / "kalshi-private.pem"),
        env_file=ENV_FILE,
    ).start()
    summary = run.summary()  # ends by itself although the exchange never stops sending
    assert run.leftovers() == []
    assert summary["simulator"] is None  # no simulator of its own
    shards = {row["shard"]: row for row in summary["shards"]}
    # the real resolved counts (the file has no symbols: the layout alone would say 0)
    assert shards["low"]["symbols"] == 10
    assert shards["high"]["symbols"] == SYNTHETIC - 10
    for row in shards.values():
        assert row["published"] > 0, row
        # everything the stream got before the connectors stopped reading is archived
        assert row["archived_lines"] == row["published"], row
        assert row["drops"] == 0, row
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=5) as response:
        assert b'"connections": 0' in response.read()  # the connectors are gone
