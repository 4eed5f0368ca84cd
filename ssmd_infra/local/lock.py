"""One `ssmd local up` per data directory.

Two pipelines on one data dir would run two archivers per shard into the same files and
break each other's acknowledgements. The first takes an exclusive `fcntl` lock on
`DATA_DIR/.local/lock` and writes its pid into it; a second is refused, naming that pid.
The kernel releases the lock when its holder dies, however it dies, so a stale file never
blocks a new run. Taking the lock is also the check that the data dir can be written.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ssmd_infra.core.errors import SsmdError

LOCK_NAME = "lock"


class DataDirLock:
    """Held from `acquire()` until `release()` (or the process's end)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / ".local" / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SsmdError(
                f"cannot write the data dir {self.data_dir}: {exc.strerror or exc} "
                f"({exc.filename or self.path})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SsmdError(
                f"the data dir {self.data_dir} is in use by another `ssmd local up` "
                f"(pid {holder}); stop it, or give another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
