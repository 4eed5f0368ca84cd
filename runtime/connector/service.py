"""One replica of one shard's connector: its parts, started and stopped together.

    exchange ─ws─▶ KalshiWsClient ─[Frame]─▶ Forwarder.on_frames ─▶ JetStreamPublisher ─▶ internal.…
                                                 └─(window full / NATS away)─▶ FrameBuffer ─┘

- `ShardSymbols` (symbols.py) keeps the shard's symbol set current;
- `Membership` (runtime/membership.py) splits it between live replicas by rendezvous
  hashing; this replica subscribes only its share, plus symbols in handoff;
- `Forwarder` (forwarding.py) is the hot path from the socket to the stream;
- `ConnectorCollector` and `RedisReporter` (reporting.py) report.

Stop (SIGTERM): deregister, hand symbols over for two heartbeats if other replicas are live,
close the socket, drain the buffer, wait for the stream's acknowledgements, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from runtime.buffer import FrameBuffer
from runtime.connector.forwarding import Forwarder, Item
from runtime.connector.reporting import ConnectorCollector, RateWindow, RedisReporter
from runtime.connector.settings import ConnectorSettings, default_member_id
from runtime.connector.symbols import STARTUP_RETRY_SECONDS, ShardSymbols
from runtime.health import HealthServer
from runtime.kalshi.auth import KalshiSigner
from runtime.kalshi.client import KalshiWsClient
from runtime.kalshi.contract import PRIVATE_CHANNELS
from runtime.membership import Membership, redis_client
from runtime.nats.publisher import JetStreamPublisher
from runtime.tasks import cancel
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.secmaster import SymbolSource
from ssmd_infra.core.subjects import INBOX_PREFIX

log = logging.getLogger("ssmd.connector")

# A symbol that changes owner while other replicas are live is held by both for a while: the
# old owner lets go one heartbeat after it notices (its next heartbeat), and an unsubscribe
# takes effect only once the exchange has it. Frames of such symbols are counted for this long.
HANDOFF_HEARTBEATS = 2


class Connector:
    """One replica of one shard's connector; `await run()` until `stop()`."""

    def __init__(
        self,
        env: Environment,
        shard: str,
        settings: ConnectorSettings,
        *,
        signer: KalshiSigner | None = None,
        symbol_source: SymbolSource | None = None,
    ) -> None:
        self.env = env
        self.shard = shard
        shard_cfg = env.shard(shard)  # ConfigError naming the known shards
        self.settings = settings
        self.member = settings.member or default_member_id()
        self._signer = signer
        # the shard's `channels` (environment YAML) unless the settings override them
        self.channels: tuple[str, ...] = (
            settings.channels if settings.channels is not None else tuple(shard_cfg.channels)
        )
        private = sorted(set(self.channels) & PRIVATE_CHANNELS)
        if private and signer is None:
            raise ConfigError(
                f"shard {shard!r} captures {', '.join(private)}, a private Kalshi channel: "
                f"set KALSHI_API_KEY_ID and KALSHI_PRIVATE_KEY_PATH"
            )
        self._refresh_interval = (
            settings.refresh_interval
            if settings.refresh_interval is not None
            else env.secmaster.refresh_interval
        )
        self.symbols = ShardSymbols(
            env,
            shard,
            kalshi_rest_url=settings.kalshi_rest_url,
            signer=signer,
            source=symbol_source,
            shards_file=settings.shards_file,
        )
        self.buffer: FrameBuffer[Item] = FrameBuffer(
            settings.buffer_capacity or shard_cfg.buffer.capacity,
            settings.drop_policy or shard_cfg.buffer.drop_policy,
        )
        credentials = settings.nats_credentials
        self.publisher = JetStreamPublisher(
            settings.nats_url,
            name=f"ssmd-connector-{shard}-{self.member}",
            max_inflight=settings.max_inflight,
            ack_timeout=settings.ack_timeout,
            read_interval=settings.read_interval,
            nkey_seed_file=credentials.seed_file if credentials else None,
            inbox_prefix=credentials.inbox_prefix if credentials else INBOX_PREFIX,
        )
        self.forwarder = Forwarder(shard, env.feed, self.buffer, self.publisher)
        self._redis: aioredis.Redis | None = (
            redis_client(settings.redis_url) if settings.redis_url else None
        )
        self.membership = Membership(
            self._redis,
            env.name,
            shard,
            self.member,
            heartbeat=settings.heartbeat,
            member_ttl=settings.member_ttl,
        )
        self.reporter = RedisReporter(self._redis, self) if self._redis is not None else None
        self.client: KalshiWsClient | None = None
        self.registry = CollectorRegistry()
        self.registry.register(ConnectorCollector(self))
        self.health: HealthServer | None = None
        self.subscribed: frozenset[str] = frozenset()  # what this replica asked to subscribe
        self._changing: dict[str, float] = {}  # symbol → in handoff until (monotonic)
        self._rate = RateWindow()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._failed: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def received(self) -> int:
        """Frames taken from the exchange so far."""
        return self.forwarder.received

    @property
    def message_rate(self) -> float:
        return self._rate.rate()

    @property
    def port(self) -> int | None:
        return self.health.port if self.health is not None else None

    # -- subscriptions ------------------------------------------------------------------------

    async def _apply_subscriptions(self) -> None:
        membership = self.membership
        desired = frozenset(membership.desired(self.symbols.current))
        self._note_handoff(desired)
        if desired != self.subscribed and self.client is not None:
            self.subscribed = desired
            await self.client.set_markets(sorted(desired))

    def _note_handoff(self, desired: frozenset[str]) -> None:
        """Which symbols another replica may hold too, for the handoff count: those released
        and held in grace, and, while other replicas are live, those this replica takes
        over or gives up, for `HANDOFF_HEARTBEATS` heartbeats (until the old owner has let go,
        or the new one has taken over and the exchange has confirmed our unsubscribe)."""
        now = time.monotonic()
        if self.membership.others():
            until = now + HANDOFF_HEARTBEATS * self.settings.heartbeat
            for symbol in desired ^ self.subscribed:
                self._changing[symbol] = until
        for symbol in [s for s, t in self._changing.items() if t <= now]:
            del self._changing[symbol]  # bounded by the shard's symbols
        owned = self.membership.owned
        self.forwarder.handoff = frozenset((desired - owned) | self._changing.keys())

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; raises `SsmdError` (e.g. refused credentials) on a fatal error."""
        first = await self.symbols.first()
        self.forwarder.resize(self.symbols.current)
        self.client = KalshiWsClient(
            self.settings.kalshi_ws_url,
            self._signer,
            list(self.channels),
            self.forwarder.on_frames,
            wait_ready=self.forwarder.wait_ready,
            **{"read_interval": self.settings.read_interval, **self.settings.client_options},
        )
        if self.settings.metrics_port is not None:
            self.health = HealthServer(self.registry, self._health, self.settings.metrics_port)
            await self.health.start()
        await self.publisher.start()
        await self.membership.peek()  # our share, before the others know about us
        await self._apply_subscriptions()
        self._spawn(self._run_client(), "kalshi-ws")
        self._spawn(self.forwarder.drain_buffer(), "buffer-drain")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self._refresh_loop(first), "secmaster")
        self._spawn(self._sample_loop(), "rate")
        log.info(
            "connector %s/%s (%s) started: %d shard symbols, %d subscribed",
            self.env.name,
            self.shard,
            self.member,
            len(self.symbols.current),
            len(self.subscribed),
        )
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        """Ask `run()` to finish cleanly (safe from a signal handler)."""
        self._stopping.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopped:
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s failed: %s", task.get_name(), exc)
            self._failed = exc
            self._stopping.set()
        elif task.get_name() == "kalshi-ws" and not self._stopping.is_set():
            self._failed = SsmdError("the Kalshi WebSocket client ended unexpectedly")
            self._stopping.set()

    async def _run_client(self) -> None:
        assert self.client is not None
        await self.client.run()

    async def _shutdown(self) -> None:
        tasks = {t.get_name(): t for t in self._tasks}
        for name in ("heartbeat", "secmaster", "rate"):
            await cancel(tasks.get(name))
        if self._failed is None and self.membership.known and self.membership.others():
            # hand over: survivors see us gone at their next heartbeat and subscribe first;
            # from now on what we still receive, they may receive too
            self.forwarder.handoff = self.subscribed
            await self.membership.leave()
            await asyncio.sleep(self.settings.heartbeat * 2)
        else:
            await self.membership.leave()
        if self.client is not None:
            self.client.stop()
        client_task = tasks.get("kalshi-ws")
        if client_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(client_task), 5.0)
            except (TimeoutError, Exception):
                await cancel(client_task)
        self._stopped = True
        self.buffer.close()
        drain = tasks.get("buffer-drain")
        drain_timeout = self.settings.drain_timeout
        if drain is not None:
            try:
                await asyncio.wait_for(asyncio.shield(drain), drain_timeout)
            except TimeoutError:
                await cancel(drain)
        if not await self.publisher.drain(drain_timeout):
            log.error("stopping with %d messages unacknowledged by NATS", self.publisher.inflight)
        await self.publisher.close()
        if self.reporter is not None:
            with contextlib.suppress(Exception):
                await self.reporter.report(final=True)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self.health is not None:
            await self.health.stop()
        log.info(
            "connector stopped: %d received, %d acknowledged, %d duplicates, %d dropped",
            self.forwarder.received,
            self.publisher.stats.acked,
            self.publisher.stats.duplicates,
            self.buffer.dropped + self.publisher.stats.given_up,
        )

    # -- periodic work ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self._wait_subscribed(self.settings.member_ttl)
        joining = True
        while True:
            registered = await self.membership.heartbeat()
            if joining and registered:  # the old owners let go from now on, not from before
                joining = False
                until = time.monotonic() + HANDOFF_HEARTBEATS * self.settings.heartbeat
                self._changing = dict.fromkeys(self._changing, until)
            await self._apply_subscriptions()
            if self.reporter is not None:
                try:
                    await self.reporter.report()
                except (aioredis.RedisError, OSError) as exc:
                    log.debug("redis report failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat)

    async def _wait_subscribed(self, timeout: float) -> None:
        """Until the exchange has acknowledged every symbol we asked for (or `timeout`): only
        then do we register, so the members we take symbols from hand over with an overlap."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            client = self.client
            if client is not None and self.subscribed <= client.subscribed:
                return
            await asyncio.sleep(0.05)
        log.warning("subscriptions not confirmed within %.0fs; joining the shard anyway", timeout)

    async def _refresh_loop(self, first_ok: bool) -> None:
        ok = first_ok
        while True:
            await asyncio.sleep(
                self._refresh_interval if ok else min(STARTUP_RETRY_SECONDS, self._refresh_interval)
            )
            ok = await self.symbols.refresh() or ok
            self.forwarder.resize(self.symbols.current)
            await self._apply_subscriptions()

    async def _sample_loop(self) -> None:
        while True:
            self._rate.add(time.monotonic(), self.forwarder.received)
            await asyncio.sleep(1.0)

    def _health(self) -> tuple[bool, str]:
        client = self.client
        kalshi = bool(client is not None and client.stats.connected)
        detail = (
            f"shard={self.shard} member={self.member} nats={self.publisher.connected} "
            f"kalshi={kalshi} redis={self.membership.healthy} "
            f"subscribed={len(self.subscribed)} buffer={len(self.buffer)}"
        )
        if self._failed is not None:
            return False, f"failed: {self._failed}; {detail}"
        return True, detail
