"""`ssmd run simulator ENV`: the simulator as a process (local mode, benchmarks)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from kalshi_wire import get_json

from runtime.kalshi.auth import generate_key_pair

REPO = Path(__file__).resolve().parents[4]


def test_cli_serves_the_env_symbols_until_sigterm(tmp_path: Path) -> None:
    _, public = generate_key_pair(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "simulator",
            "kalshi-dev",
            "--synthetic",
            "5",
            "--public-key",
            str(public),
            "--rate",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[0].startswith("kalshi simulator: 25 markets")
        assert lines[1].startswith("ws_url: ws://127.0.0.1:") and lines[1].rstrip().endswith(
            "/trade-api/ws/v2"
        )
        rest_url = lines[2].split(": ", 1)[1].strip()
        status, body = asyncio.run(get_json(rest_url + "/markets", limit="1000"))
        assert status == 200
        assert "KXHIGHNY-24DEC05-B43.5" in {m["ticker"] for m in body["markets"]}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_an_unreadable_public_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "simulator",
            "kalshi-dev",
            "--public-key",
            str(tmp_path / "absent.pem"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot read --public-key" in result.stderr and "absent.pem" in result.stderr
