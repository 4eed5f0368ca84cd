"""Running `ssmd local up` as a real process, and reading what it leaves behind.

`LocalRun` starts the command on a copy of an environment file under the test's temporary
directory, so that every process of the run names that directory on its command line: the
servers through their store directories, the runtime children through the environment file.
`leftovers()` then finds any survivor, and the descendants seen during the run (polled in
the background) are checked by process group too.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
E2E_ENV = REPO / "tests" / "envs" / "e2e.yaml"


class LocalRun:
    """One `ssmd local up` process of a test."""

    def __init__(self, tmp: Path, *extra: str, env_file: Path = E2E_ENV) -> None:
        self.tmp = tmp
        self.env_file = tmp / env_file.name
        if not self.env_file.exists():
            shutil.copy(env_file, self.env_file)
        self.data = tmp / "data"
        self.argv = [
            sys.executable,
            "-m",
            "ssmd_infra",
            "local",
            "up",
            str(self.env_file),
            "--data-dir",
            str(self.data),
            "--json",
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.seen: set[int] = set()  # every descendant pid seen (each leads its own group)
        self._watcher: threading.Thread | None = None

    def start(self) -> LocalRun:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.tmp,  # the state file goes under the working directory
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        assert self.proc is not None
        try:
            me = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            return
        while self.proc.poll() is None:
            try:
                self.seen.update(p.pid for p in me.children(recursive=True))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    @property
    def state_path(self) -> Path:
        name = yaml.safe_load(self.env_file.read_text())["name"]
        return self.tmp / ".ssmd" / "local" / f"{name}.json"

    def state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state

    def wait_until(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        """Poll `check()` until it is truthy; fail if the run ends or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"local up ended before {what}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout}s: {what}")

    def running(self) -> dict[str, Any]:
        """The state file once the pipeline is up."""
        state: dict[str, Any] = self.wait_until("the pipeline is up", self.state)
        return state

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        assert self.proc is not None
        out, err = self.proc.communicate(timeout=timeout)
        if self._watcher is not None:
            self._watcher.join(5)
        return self.proc.returncode, out, err

    def summary(self, timeout: float = 120.0) -> dict[str, Any]:
        code, out, err = self.finish(timeout)
        assert code == 0, err[-3000:]
        summary: dict[str, Any] = json.loads(out)
        return summary

    def leftovers(self) -> list[str]:
        """Processes of this run still alive: by command line (naming the test's directory)
        and by process group (every child led its own)."""
        found = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == me:
                continue
            cmdline = " ".join(proc.info.get("cmdline") or [])
            try:
                group = os.getpgid(proc.pid)
            except OSError:
                continue
            if str(self.tmp) in cmdline or group in self.seen:
                found.append(f"{proc.pid} (group {group}): {cmdline}")
        return found


def sim_post(state: dict[str, Any], action: str) -> None:
    """A control call to the simulator the run started (its REST base names its port)."""
    import urllib.request

    base = state["exchange"]["rest_url"].split("/trade-api")[0]
    request = urllib.request.Request(f"{base}/_sim/{action}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=5):
        pass


def sim_stats(state: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    base = state["exchange"]["rest_url"].split("/trade-api")[0]
    with urllib.request.urlopen(f"{base}/_sim/stats", timeout=5) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def metrics(port: int) -> dict[str, float]:
    """A child's /metrics, sample name → value summed over labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def archived_ids_by_symbol(data: Path) -> dict[str, set[str]]:
    """Distinct message ids per symbol in the final archive files."""
    out: dict[str, set[str]] = {}
    for path in data.glob("kalshi/*/*/*/*.jsonl.gz"):
        with gzip.open(path, "rb") as handle:
            for raw in handle:
                line = json.loads(raw)
                out.setdefault(line["symbol"], set()).add(line["id"])
    return out


def archived_types(data: Path) -> Counter[str]:
    """Distinct archived messages per type."""
    ids: dict[str, set[str]] = {}
    for path in data.glob("kalshi/*/*/*/*.jsonl.gz"):
        with gzip.open(path, "rb") as handle:
            for raw in handle:
                line = json.loads(raw)
                ids.setdefault(line["type"], set()).add(line["id"])
    return Counter({msg_type: len(found) for msg_type, found in ids.items()})


def missing_from_archive(data: Path, sent_by_market: dict[str, int]) -> dict[str, int]:
    """Per symbol, how many more messages the exchange reported sending than the archive
    holds distinct ones (empty: every message is there at least once)."""
    archived = archived_ids_by_symbol(data)
    return {
        symbol: count - len(archived.get(symbol, ()))
        for symbol, count in sent_by_market.items()
        if count > len(archived.get(symbol, ()))
    }


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
