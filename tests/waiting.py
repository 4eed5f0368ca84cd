"""Waiting for behaviour in asynchronous tests: a test waits for an outcome, it never
measures time. The timeout only turns a hang into a failure that names what was awaited."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol


async def eventually(
    check: Callable[[], object] | Callable[[], Awaitable[object]],
    what: str = "condition",
    timeout: float = 20.0,
) -> None:
    """Return once `check()` (or the awaitable it returns) is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


class Runnable(Protocol):
    """A runtime process as the tests drive it (the archiver, the connector)."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def port(self) -> int | None: ...


@contextlib.asynccontextmanager
async def running(process: Runnable) -> AsyncIterator[asyncio.Task[None]]:
    """`process.run()` as a task, once it serves its port (or has ended); stopped on exit."""
    task = asyncio.create_task(process.run())
    what = f"{type(process).__name__.lower()} started"
    try:
        await eventually(lambda: process.port is not None or task.done(), what)
        yield task
    finally:
        process.stop()
        await asyncio.wait_for(task, 20)
