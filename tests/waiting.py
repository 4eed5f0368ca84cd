"""Waiting for behaviour in asynchronous tests: a test waits for an outcome, it never
measures time. The timeout only turns a hang into a failure that names what was awaited."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


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
