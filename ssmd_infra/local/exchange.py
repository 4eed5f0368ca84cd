"""The exchange the local connectors read: Kalshi itself (or any compatible server), or the
simulator that `ssmd local up` starts.

A real exchange is chosen with `--kalshi demo|prod` (Kalshi's official URLs), explicit
`--kalshi-rest-url`/`--kalshi-ws-url`, or the environment variables the runtime reads
(`KALSHI_REST_URL`, `KALSHI_WS_URL`, `KALSHI_API_KEY_ID`, `KALSHI_PRIVATE_KEY_PATH`).
Everything is checked before any process starts: URL schemes, the key file, and that the
exchange answers at all — a wrong URL fails in seconds, naming it, instead of leaving
connectors retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.kalshi import (
    KALSHI_ENVIRONMENTS,
    KALSHI_PROD,
    REST_SCHEMES,
    WS_SCHEMES,
    private_key_problem,
    url_problem,
)
from ssmd_infra.local.children import Child
from ssmd_infra.local.processes import tail

PROBE_TIMEOUT = 5.0
SIMULATOR_READY_TIMEOUT = 20.0
SIMULATOR_KEY_ID = "ssmd-local-simulator"
CONTROL_TIMEOUT = 2.0


@dataclass(frozen=True)
class KalshiExchange:
    """A real (Kalshi-compatible) exchange, checked: URLs and, when given, a usable key."""

    rest_url: str
    ws_url: str
    key_id: str | None = None
    private_key: Path | None = None

    def credentials(self) -> dict[str, str]:
        """The connectors' environment (the runtime reads the key from a file)."""
        if self.key_id is None or self.private_key is None:
            return {}
        return {
            "KALSHI_API_KEY_ID": self.key_id,
            "KALSHI_PRIVATE_KEY_PATH": str(self.private_key.resolve()),
        }


def choose_exchange(
    preset: str | None,
    rest_url: str | None,
    ws_url: str | None,
    key_id: str | None,
    private_key: Path | None,
) -> KalshiExchange | None:
    """The real exchange these options name, or None for the simulator; `SsmdError` names
    the first problem (option, file, URL) before anything has started."""
    key_id = (key_id or "").strip() or None
    if preset is None and rest_url is None and ws_url is None and not key_id and not private_key:
        return None
    base = KALSHI_PROD
    if preset is not None:
        if preset not in KALSHI_ENVIRONMENTS:
            names = "|".join(KALSHI_ENVIRONMENTS)
            raise SsmdError(f"--kalshi {preset!r}: expected one of {names}")
        base = KALSHI_ENVIRONMENTS[preset]
    rest = rest_url or base.rest_url
    ws = ws_url or base.ws_url
    for problem in (
        url_problem(rest, REST_SCHEMES, "--kalshi-rest-url (KALSHI_REST_URL): Kalshi REST"),
        url_problem(ws, WS_SCHEMES, "--kalshi-ws-url (KALSHI_WS_URL): Kalshi WebSocket"),
    ):
        if problem:
            raise SsmdError(problem)
    if bool(key_id) != bool(private_key):
        missing = (
            "--kalshi-private-key (KALSHI_PRIVATE_KEY_PATH)"
            if key_id
            else "--kalshi-key-id (KALSHI_API_KEY_ID)"
        )
        raise SsmdError(f"Kalshi credentials are half set: {missing} is missing (give both)")
    if private_key is not None:
        check_private_key(private_key)
    return KalshiExchange(rest, ws, key_id, private_key)


def check_private_key(path: Path) -> None:
    """The key file exists, is readable and holds an unencrypted PEM RSA private key."""
    where = f"--kalshi-private-key (KALSHI_PRIVATE_KEY_PATH) {path}"
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SsmdError(f"cannot read {where}: {exc.strerror or exc}") from None
    problem = private_key_problem(pem)
    if problem:
        raise SsmdError(f"{where} {problem}")


async def probe_exchange(exchange: KalshiExchange, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast, naming the URL, when the exchange's REST or WebSocket endpoint does not
    answer (refused, unresolvable, silent, or a server error)."""
    url = exchange.rest_url.rstrip("/") + "/markets?limit=1"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as response,
        ):
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = str(exc) or f"no answer within {timeout:.0f}s"
        raise SsmdError(
            f"the Kalshi REST API at {exchange.rest_url} does not answer: {reason}"
        ) from None
    if status >= 500 or status == 404:
        raise SsmdError(
            f"the Kalshi REST API at {exchange.rest_url} answered HTTP {status} to GET {url}"
        )
    parts = urlsplit(exchange.ws_url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, port), timeout=timeout
        )
    except (TimeoutError, OSError) as exc:
        reason = str(exc) or f"no answer within {timeout:.0f}s"
        raise SsmdError(
            f"the Kalshi WebSocket at {exchange.ws_url} does not answer: {reason}"
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class Simulator:
    """The simulated exchange, a supervised child (`python -m runtime simulator`)."""

    def __init__(self, child: Child, port: int, key_dir: Path) -> None:
        self.child = child
        self.port = port
        self.key_dir = key_dir

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def exchange(self) -> KalshiExchange:
        return KalshiExchange(
            rest_url=f"{self.base}/trade-api/v2",
            ws_url=f"ws://127.0.0.1:{self.port}/trade-api/ws/v2",
            key_id=SIMULATOR_KEY_ID,
            private_key=self.key_dir / "kalshi-private.pem",
        )

    async def ready(self, timeout: float = SIMULATOR_READY_TIMEOUT) -> None:
        """Until it answers its control API; its death or silence is a start-up error."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if not self.child.alive:
                raise SsmdError(
                    f"the simulator exited during start-up; its log ({self.child.log}) ends "
                    f"with:\n{tail(self.child.log)}"
                )
            if await self.stats() is not None:
                return
            await asyncio.sleep(0.1)
        raise SsmdError(f"the simulator did not answer on {self.base} within {timeout:.0f}s")

    async def _call(self, method: str, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.request(method, f"{self.base}{path}") as response,
            ):
                if response.status != 200:
                    return None
                return json.loads(await response.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    async def pause(self) -> bool:
        """Stop generating, so the rest can drain to a fixed total."""
        return await self._call("POST", "/_sim/pause") is not None

    async def stats(self) -> dict[str, Any] | None:
        """Its `/_sim/stats`, also kept in the child's metrics so that the totals survive
        its restarts (`generated`, `sent_by_type:*`, `sent_by_market:*`)."""
        data = await self._call("GET", "/_sim/stats")
        if not isinstance(data, dict):
            return None
        flat = {"generated": float(data.get("generated", 0))}
        for group in ("sent_by_type", "sent_by_market"):
            for key, value in (data.get(group) or {}).items():
                flat[f"{group}:{key}"] = float(value)
        self.child.metrics = flat
        return data

    def totals(self) -> dict[str, Any]:
        """What every incarnation reported as sent (as last read from each)."""
        names = set(self.child.metrics) | set(self.child.carried)
        out: dict[str, Any] = {
            "generated": int(self.child.counter("generated")),
            "sent_by_type": {},
            "sent_by_market": {},
            "restarts": self.child.restarts.count,
        }
        for name in sorted(names):
            group, _, key = name.partition(":")
            if key:
                out[group][key] = int(self.child.counter(name))
        return out
