"""Cancelling background tasks, shared by the runtime processes and their raw NATS clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any, and still running) and wait for it; whatever it raised is
    swallowed: the caller is shutting it down, not asking how it ended."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel every task first, then wait for each; an exception other than the
    cancellation propagates (as it did where this was written out by hand)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
