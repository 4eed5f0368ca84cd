"""Replacing a file so that a reader never sees it half written (shared I/O: the core only
reads the files it is given).

Every file ssmd rewrites in place (an environment YAML after an edit or a roll, a stored plan,
the local pipeline's state file) goes through `write_atomically`: the bytes go to a temporary
file in the same directory, are flushed to disk, and take the name with one rename. A crash
leaves either the old file or the new one, never a mixture, and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.local_state import LocalState


class FileChanged(SsmdError):
    """The file no longer holds what the writer read, so it was not replaced."""


def write_atomically(path: Path, data: bytes, *, expected: bytes | None = None) -> None:
    """Replace (or create) `path` with `data` through a temporary file and a rename.

    With `expected`, refuse (`FileChanged`, file untouched) when the file no longer holds
    exactly those bytes: someone edited it since it was read. A replaced file keeps its
    permission bits; a new one gets the usual ones (0666 minus the umask).
    """
    target = path.resolve()
    if expected is not None:
        try:
            current = target.read_bytes()
        except OSError as exc:
            raise FileChanged(f"{path} unchanged: cannot re-read it: {exc.strerror}") from None
        if current != expected:
            raise FileChanged(f"{path} unchanged: it was modified while being edited; retry")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):  # a new file: nothing to keep
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_local_state(path: Path, state: LocalState) -> None:
    """Replace the local pipeline's state file `path` at once (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, state.dump())
