"""Restart with backoff: what `ssmd local up` does with a process that dies on its own.

As Kubernetes restarts a crashed pod: at once the first time, then after a delay that
doubles with each crash in a row (a crash loop must not burn the machine), reset once the
process has stayed up for a while. Runtime children (`ssmd_infra.local.children`) and servers
(`ssmd_infra.local.servers`) are supervised the same way; nats-server comes back on the same
port and store directory, so nothing it stored is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RestartPolicy:
    """Delay before restart number n (0-based) of a process that keeps crashing."""

    first: float = 0.0  # the first restart is immediate
    initial: float = 0.5
    maximum: float = 10.0
    stable_after: float = 30.0  # up this long: the next crash counts as a first one

    def delay(self, crashes_in_a_row: int) -> float:
        if crashes_in_a_row <= 0:
            return self.first
        return float(min(self.maximum, self.initial * 2 ** min(crashes_in_a_row - 1, 30)))


@dataclass
class Restarts:
    """The restart bookkeeping of one supervised process."""

    count: int = 0
    crashes_in_a_row: int = 0
    started_at: float = field(default_factory=time.monotonic)
    due_at: float | None = None  # when a pending restart happens
    last_exit: int | None = None


PIDS_KEPT = 64  # pids of the latest incarnations a process remembers (a crash loop is long)


class Restartable(Protocol):
    """What the supervision needs from a process: is it up, start it again, its record."""

    restarts: Restarts

    @property
    def label(self) -> str: ...

    def exit_code(self) -> int | None: ...

    def respawn(self) -> None: ...


class Supervision:
    """Restarts the processes it watches when they die on their own."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self._watched: list[Restartable] = []

    def watch(self, process: Restartable) -> None:
        process.restarts.started_at = time.monotonic()
        self._watched.append(process)

    def forget(self, stopped: Iterable[Restartable]) -> None:
        """Stop watching processes that are being stopped on purpose."""
        gone = {id(p) for p in stopped}
        self._watched = [p for p in self._watched if id(p) not in gone]

    def check(self, now: float | None = None) -> list[str]:
        """Restart what is due; returns one line per event for the operator."""
        now = time.monotonic() if now is None else now
        events: list[str] = []
        for process in list(self._watched):
            book = process.restarts
            code = process.exit_code()
            if code is None:
                if now - book.started_at >= self.policy.stable_after:
                    book.crashes_in_a_row = 0
                continue
            if book.due_at is None:
                delay = self.policy.delay(book.crashes_in_a_row)
                book.due_at, book.last_exit = now + delay, code
                events.append(f"{process.label} exited with code {code}; restart in {delay:.1f}s")
            if now >= book.due_at:
                process.respawn()
                book.count += 1
                book.crashes_in_a_row += 1
                book.started_at, book.due_at = now, None
                events.append(f"{process.label} restarted (restart {book.count})")
        return events
