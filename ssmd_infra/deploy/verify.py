"""Verification after a roll: does data flow in every shard?

Data flows in a shard when its internal stream's last sequence grows; the per-shard rate is
that growth over the observed window. NATS is asked directly: it is where the data is, on
either target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ssmd_infra.core.nkey_seeds import RoleSeed
from ssmd_infra.core.subjects import CLIENT_STREAM, internal_stream

VERIFY_TIMEOUT = 60.0
VERIFY_WINDOW = 3.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Flow:
    """What one stream did after the roll."""

    stream: str
    shard: str | None
    messages: int  # since the verification began
    seconds: float  # the measuring window
    expected: bool  # False for a shard with no symbols: nothing can flow
    window_messages: int = 0  # during the measuring window

    @property
    def ok(self) -> bool:
        return self.messages > 0 or not self.expected

    @property
    def rate(self) -> float:
        return self.window_messages / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "shard": self.shard,
            "ok": self.ok,
            "messages": self.messages,
            "rate": round(self.rate, 3),
        }


async def _last_seqs(nc: Any, names: Sequence[str]) -> dict[str, int | None]:
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    out: dict[str, int | None] = {}
    for name in names:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            out[name] = None
            continue
        out[name] = int(info.state.last_seq)
    return out


async def verify_flow(
    nats_url: str,
    shards: Sequence[str],
    *,
    expect: Callable[[str], bool] = lambda _: True,
    timeout: float = VERIFY_TIMEOUT,
    window: float = VERIFY_WINDOW,
    seed: RoleSeed | None = None,
) -> list[Flow]:
    """Watch every shard stream (and the client stream) until each expected one has grown,
    at most `timeout` seconds; then measure every rate over a further `window` seconds, so
    the figures are the steady state, not the connectors' start-up. A stream that never grew
    is a failed shard (`Flow.ok` false). `seed`: the admin's, under NATS authorization."""
    from ssmd_infra.adapters import jetstream

    names = [internal_stream(s) for s in shards] + [CLIENT_STREAM]
    shard_of: dict[str, str | None] = {internal_stream(s): s for s in shards}
    shard_of[CLIENT_STREAM] = None
    wanted = [n for n in names if shard_of[n] is None or expect(str(shard_of[n]))]
    async with jetstream.connect(nats_url, seed=seed) as nc:
        start = await _last_seqs(nc, names)
        began = time.monotonic()
        while True:
            now = await _last_seqs(nc, names)
            if all((now[n] or 0) > (start[n] or 0) for n in wanted):
                break
            if time.monotonic() - began >= timeout:
                break
            await asyncio.sleep(POLL_SECONDS)
        flowing = await _last_seqs(nc, names)
        measured_from = time.monotonic()
        await asyncio.sleep(window)
        end = await _last_seqs(nc, names)
        seconds = time.monotonic() - measured_from
    return [
        Flow(
            stream=name,
            shard=shard_of[name],
            messages=max(0, (end[name] or 0) - (start[name] or 0)),
            seconds=seconds,
            expected=name in wanted,
            window_messages=max(0, (end[name] or 0) - (flowing[name] or 0)),
        )
        for name in names
    ]
