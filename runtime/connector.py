"""The connector: one shard's Kalshi WebSocket feed, forwarded into the shard's NATS stream.

    exchange ─ws─▶ KalshiWsClient ─[Frame]─▶ on_frames ──▶ JetStreamPublisher ─▶ internal.…
                                                └─(window full / NATS away)─▶ FrameBuffer ─┘

- Symbols: the shard's symbols are resolved at start-up and every
  `secmaster.refresh_interval` (manual symbols, plus Kalshi's open markets when the
  environment's secmaster source is `kalshi`), so new markets matching the shard's selector
  are subscribed intraday and closed ones dropped. A failed refresh keeps the last good set.
- Replicas: the shard's symbols are split between live replicas by rendezvous hashing
  (`membership.py`); this replica subscribes only its share (plus symbols in handoff).
- Forwarding: each frame's exact bytes go to `internal.{shard}.{feed}.{type}.{symbol}` with
  `Nats-Msg-Id` = the frame's exchange-stable id, acknowledged by the stream. While the
  publisher's window has room, frames are published straight from the socket reader (no
  queue hop, no task switch); otherwise they wait in the bounded buffer, whose drop policy
  decides what happens when it is full. Drops are counted.
- Reports: Prometheus `/metrics` + `/healthz`, and Redis keys (symbols, replicas, metrics,
  per-symbol rates) every heartbeat. Redis being down degrades reports, never the data path.
- Stop (SIGTERM): deregister, hand symbols over for one heartbeat if other replicas are live,
  close the socket, drain the buffer, wait for the stream's acknowledgements, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import typer
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.buffer import DropPolicy, FrameBuffer
from runtime.health import HealthServer, ShardMetrics
from runtime.kalshi.auth import KalshiSigner
from runtime.kalshi.client import KalshiAuthError, KalshiWsClient
from runtime.kalshi.contract import PRIVATE_CHANNELS
from runtime.kalshi.protocol import Frame
from runtime.membership import Membership, redis_client
from runtime.nats.credentials import NatsCredentials, permission_errors_metric, role_credentials
from runtime.nats.publisher import JetStreamPublisher
from runtime.procstats import ProcStats
from runtime.tasks import cancel
from ssmd_infra.core import redis_keys
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.nats_auth import connector_role
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE
from ssmd_infra.core.resolution import resolve, resolve_with_problems
from ssmd_infra.core.secmaster import SymbolSource, merge_symbols
from ssmd_infra.core.shard_catalog import with_catalog
from ssmd_infra.core.subjects import INBOX_PREFIX, internal_subject
from ssmd_infra.core.workload import SHARDS_FILE_VARIABLE

log = logging.getLogger("ssmd.connector")

_SAFE_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a message type becomes one subject token
RATE_WINDOW_SECONDS = 10.0  # ssmd_connector_message_rate and per-symbol rates average over this
STARTUP_RETRY_SECONDS = 5.0  # secmaster retry after a failed first fetch (not the full interval)
# The exchange socket and the acks from NATS are read at most once per READ_INTERVAL, on the
# same clock grid, and each batch is flushed to NATS at once: one wake-up per interval on a
# busy feed instead of one per socket read (see runtime/kalshi/transport.py and the
# "Connector" section of docs/BENCHMARKS.md). It bounds the latency this adds to a message
# (none on a quiet feed); `--read-interval 0` reads as data arrives.
READ_INTERVAL = 0.004

# (subject, raw frame, msg id) — what waits in the buffer
_Item = tuple[bytes, bytes, bytes]


def default_member_id() -> str:
    """Pod name (the hostname in Kubernetes) and pid: unique per replica, readable in Redis."""
    return f"{socket.gethostname()}-{os.getpid()}"


class _RateWindow:
    """Messages per second over the last `window` seconds, from periodic samples of a total."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, tick: float = 1.0) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(window / tick) + 1)

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Connector:
    """One replica of one shard's connector; `await run()` until `stop()`."""

    def __init__(
        self,
        env: Environment,
        shard: str,
        *,
        nats_url: str,
        kalshi_ws_url: str,
        redis_url: str | None = None,
        kalshi_rest_url: str | None = None,
        signer: KalshiSigner | None = None,
        metrics_port: int | None = 9100,
        member: str | None = None,
        channels: Iterable[str] | None = None,
        buffer_capacity: int | None = None,
        drop_policy: DropPolicy | None = None,
        refresh_interval: float | None = None,
        heartbeat: float = redis_keys.HEARTBEAT_SECONDS,
        member_ttl: float = redis_keys.MEMBER_TTL_SECONDS,
        symbol_source: SymbolSource | None = None,
        drain_timeout: float = 10.0,
        max_inflight: int = 8192,
        ack_timeout: float = 2.0,
        client_options: dict[str, Any] | None = None,
        read_interval: float = READ_INTERVAL,
        shards_file: Path | None = None,
        nats_credentials: NatsCredentials | None = None,
    ) -> None:
        self.env = env
        self.shard = shard
        # the other shards and pins (`ssmd_infra.core.shard_catalog`), re-read at every refresh
        self._shards_file = shards_file
        shard_cfg = env.shard(shard)  # ConfigError naming the known shards
        self._kalshi_ws_url = kalshi_ws_url
        self._kalshi_rest_url = kalshi_rest_url
        self._signer = signer
        self._metrics_port = metrics_port
        self.member = member or default_member_id()
        # the shard's `channels` (environment YAML) unless a caller overrides them
        self._channels = tuple(channels if channels is not None else shard_cfg.channels)
        private = sorted(set(self._channels) & PRIVATE_CHANNELS)
        if private and signer is None:
            raise ConfigError(
                f"shard {shard!r} captures {', '.join(private)}, a private Kalshi channel: "
                f"set KALSHI_API_KEY_ID and KALSHI_PRIVATE_KEY_PATH"
            )
        self._refresh_interval = (
            refresh_interval if refresh_interval is not None else env.secmaster.refresh_interval
        )
        self._heartbeat = heartbeat
        self._member_ttl = member_ttl
        self._symbol_source = symbol_source
        self._drain_timeout = drain_timeout
        self._client_options = {"read_interval": read_interval, **(client_options or {})}
        self.buffer: FrameBuffer[_Item] = FrameBuffer(
            buffer_capacity or shard_cfg.buffer.capacity,
            drop_policy or shard_cfg.buffer.drop_policy,
        )
        self.publisher = JetStreamPublisher(
            nats_url,
            name=f"ssmd-connector-{shard}-{self.member}",
            max_inflight=max_inflight,
            ack_timeout=ack_timeout,
            read_interval=read_interval,
            nkey_seed_file=nats_credentials.seed_file if nats_credentials else None,
            inbox_prefix=nats_credentials.inbox_prefix if nats_credentials else INBOX_PREFIX,
        )
        self._redis: aioredis.Redis | None = redis_client(redis_url) if redis_url else None
        self.membership = Membership(
            self._redis,
            env.name,
            shard,
            self.member,
            heartbeat=heartbeat,
            member_ttl=member_ttl,
        )
        self.client: KalshiWsClient | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_ConnectorCollector(self))
        self.health: HealthServer | None = None
        self._procstats = ProcStats()

        self.shard_symbols: frozenset[str] = frozenset()  # the shard's resolved symbols
        self.subscribed: frozenset[str] = frozenset()  # what this replica asked to subscribe
        self.secmaster_failures = 0
        self.unresolved = 0  # live-universe symbols that are orphans or overlaps
        self.received = 0
        self.rejected = 0  # frames whose type/ticker/id cannot be published safely
        self._subjects: dict[tuple[str, str], bytes] = {}
        self._subject_bound = 4096
        self._symbol_counts: dict[str, int] = {}
        self._symbol_count_bound = 1024
        self._symbol_snapshots: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=max(2, int(RATE_WINDOW_SECONDS / heartbeat) + 1)
        )
        self._rate = _RateWindow()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._failed: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_symbols_written: frozenset[str] | None = None
        self._redis_symbols_at = 0.0

    # -- the hot path -------------------------------------------------------------------------

    def on_frames(self, frames: list[Frame]) -> int:
        """Called by the WebSocket client with the market-data frames of one socket read, in
        arrival order; returns how many it took. Under `block` it stops at a full buffer (the
        client then stops reading the socket and offers the rest after `wait_ready`); under
        the drop policies it takes them all and the buffer's policy decides what is kept.
        While the publisher's window has room and nothing is buffered, frames go straight to
        the publisher, as one batch and one socket write; the rest go to the buffer, in order
        (the drain task runs only after this returns, so the batch goes out first)."""
        publisher = self.publisher
        buffer = self.buffer
        block = buffer.policy == "block"
        subjects = self._subjects
        counts = self._symbol_counts
        room = publisher.room if not len(buffer) else 0
        direct: list[tuple[bytes, bytes, bytes]] = []
        taken = 0
        for frame in frames:
            if block and buffer.full and not buffer.closed:
                break
            taken += 1
            ticker = frame.ticker
            subject = subjects.get((frame.msg_type, ticker))
            if subject is None:
                subject = self._subject(frame.msg_type, ticker)
                if subject is None:
                    continue
            msg_id = frame.msg_id
            if "\r" in msg_id or "\n" in msg_id:  # would break the header block: never forward
                self.rejected += 1
                continue
            if ticker in counts:
                counts[ticker] += 1
            elif len(counts) < self._symbol_count_bound:
                counts[ticker] = 1
            if room > 0:
                direct.append((subject, frame.raw, msg_id.encode()))
                room -= 1
            else:
                buffer.offer((subject, frame.raw, msg_id.encode()))
        self.received += taken
        if direct:  # one write per read, in this wake-up: no flush timer
            publisher.publish_many(direct, flush=True)
        return taken

    async def wait_ready(self) -> None:
        """Until `on_frames` takes frames again (room in the buffer, or the buffer closed)."""
        await self.buffer.wait_not_full()

    def _subject(self, msg_type: str, ticker: str) -> bytes | None:
        """The subject of a (type, ticker) not seen before, or None (counted) when the exchange
        sent a type that cannot be a subject token or a ticker with control characters."""
        if not _SAFE_TYPE.match(msg_type) or any(ord(c) < 32 for c in ticker):
            self.rejected += 1
            if self.rejected <= 10:
                log.warning("rejected a frame with type %r, ticker %r", msg_type, ticker)
            return None
        if len(self._subjects) >= self._subject_bound:
            self._subjects.clear()  # bounded: types × symbols of the shard, plus strays
        subject = internal_subject(self.shard, self.env.feed, msg_type, ticker).encode()
        self._subjects[(msg_type, ticker)] = subject
        return subject

    async def _drain_buffer(self) -> None:
        """Move buffered frames to the publisher whenever its window has room."""
        buffer, publisher = self.buffer, self.publisher
        while await buffer.wait_not_empty():
            room = publisher.room
            if room <= 0:
                await publisher.wait_for_room()
                continue
            for subject, raw, msg_id in buffer.take(min(room, 1024)):
                publisher.publish(subject, raw, msg_id)
            await asyncio.sleep(0)

    # -- symbols ------------------------------------------------------------------------------

    def _source(self) -> SymbolSource | None:
        if self._symbol_source is not None:
            return self._symbol_source
        if self.env.secmaster.source == "kalshi":
            if not self._kalshi_rest_url:
                raise ConfigError(
                    f"environment {self.env.name!r} takes symbols from Kalshi "
                    f"(secmaster.source: kalshi): --kalshi-rest-url is required"
                )
            from runtime.kalshi.rest import KalshiRestSource

            self._symbol_source = KalshiRestSource(
                self._kalshi_rest_url, signer=self._signer, status=self.env.secmaster.status
            )
            return self._symbol_source
        return None

    def _resolve_now(self) -> frozenset[str]:
        """The shard's symbols now. With only the file's symbols, any orphan or overlap is a
        configuration error (fatal at start-up, as `ssmd shard validate` says). With a live
        secmaster the exchange can list a market no selector foresaw: that market is not
        captured by any shard, which is logged and exported as
        `ssmd_connector_unresolved_symbols`, but it must not stop this shard's capture."""
        source = self._source()
        env = self._with_other_shards()
        universe = merge_symbols(env, source)
        if source is None:
            layout = resolve(env, universe, complete_universe=False)
            self.unresolved = 0
            return frozenset(layout.symbols_of(self.shard))
        layout, problems = resolve_with_problems(env, universe, complete_universe=True)
        if problems and len(problems) != self.unresolved:
            log.warning(
                "%d symbol problem(s) in the live universe, not captured by any shard: %s",
                len(problems),
                "; ".join(p.message for p in problems[:5]),
            )
        self.unresolved = len(problems)
        return frozenset(layout.symbols_of(self.shard))

    def _with_other_shards(self) -> Environment:
        """The environment to resolve with: in Kubernetes the pod's file holds its own shard
        only, and the mounted shard catalog (updated in place, read afresh each time) adds the
        others, so carve-outs and pins elsewhere take their markets away from this shard."""
        if self._shards_file is None:
            return self.env
        try:
            text = self._shards_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the shard catalog {self._shards_file}: {exc}") from None
        return with_catalog(self.env, self.shard, text, str(self._shards_file))

    async def refresh_symbols(self) -> bool:
        """Re-resolve the shard's symbols; on failure keep the last good set. True if fresh."""
        try:
            symbols = await asyncio.to_thread(self._resolve_now)
        except Exception as exc:  # secmaster (HTTP) or resolution trouble: keep serving
            self.secmaster_failures += 1
            log.warning(
                "symbol refresh failed, keeping the last %d symbols: %s",
                len(self.shard_symbols),
                exc,
            )
            return False
        if symbols != self.shard_symbols:
            added = len(symbols - self.shard_symbols)
            removed = len(self.shard_symbols - symbols)
            log.info("shard %s: %d symbols (+%d, -%d)", self.shard, len(symbols), added, removed)
        self.shard_symbols = symbols
        self._symbol_count_bound = 2 * len(symbols) + 64
        self._subject_bound = 8 * len(symbols) + 1024
        for stale in [s for s in self._symbol_counts if s not in symbols]:
            del self._symbol_counts[stale]
        return True

    async def _apply_subscriptions(self) -> None:
        desired = frozenset(self.membership.desired(self.shard_symbols))
        if desired != self.subscribed and self.client is not None:
            self.subscribed = desired
            await self.client.set_markets(sorted(desired))

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; raises `SsmdError` (e.g. refused credentials) on a fatal error."""
        first = await self._first_symbols()
        self.client = KalshiWsClient(
            self._kalshi_ws_url,
            self._signer,
            list(self._channels),
            self.on_frames,
            wait_ready=self.wait_ready,
            **self._client_options,
        )
        if self._metrics_port is not None:
            self.health = HealthServer(self.registry, self._health, self._metrics_port)
            await self.health.start()
        await self.publisher.start()
        await self.membership.peek()  # our share, before the others know about us
        await self._apply_subscriptions()
        self._spawn(self._run_client(), "kalshi-ws")
        self._spawn(self._drain_buffer(), "buffer-drain")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self._refresh_loop(first), "secmaster")
        self._spawn(self._sample_loop(), "rate")
        log.info(
            "connector %s/%s (%s) started: %d shard symbols, %d subscribed",
            self.env.name,
            self.shard,
            self.member,
            len(self.shard_symbols),
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

    @property
    def port(self) -> int | None:
        return self.health.port if self.health is not None else None

    async def _first_symbols(self) -> bool:
        """Resolve before subscribing. A configuration error is fatal; a secmaster outage is not:
        start from the manual symbols and retry soon. Returns whether the secmaster answered."""
        try:
            self.shard_symbols = await asyncio.to_thread(self._resolve_now)
        except ConfigError:
            raise
        except Exception as exc:
            self.secmaster_failures += 1
            log.warning("secmaster unavailable at start-up (%s); starting from manual symbols", exc)
            universe = merge_symbols(self.env, None)
            layout = resolve(self.env, universe, complete_universe=False)
            self.shard_symbols = frozenset(layout.symbols_of(self.shard))
            self._symbol_count_bound = 2 * len(self.shard_symbols) + 64
            return False
        self._symbol_count_bound = 2 * len(self.shard_symbols) + 64
        self._subject_bound = 8 * len(self.shard_symbols) + 1024
        return True

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
            # hand over: survivors see us gone at their next heartbeat and subscribe first
            await self.membership.leave()
            await asyncio.sleep(self._heartbeat * 2)
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
        if drain is not None:
            try:
                await asyncio.wait_for(asyncio.shield(drain), self._drain_timeout)
            except TimeoutError:
                await cancel(drain)
        if not await self.publisher.drain(self._drain_timeout):
            log.error("stopping with %d messages unacknowledged by NATS", self.publisher.inflight)
        await self.publisher.close()
        with contextlib.suppress(Exception):
            await self._report_redis(final=True)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self.health is not None:
            await self.health.stop()
        log.info(
            "connector stopped: %d received, %d acknowledged, %d dropped",
            self.received,
            self.publisher.stats.acked,
            self.dropped_buffer + self.publisher.stats.given_up,
        )

    # -- periodic work ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self._wait_subscribed(self._member_ttl)
        while True:
            await self.membership.heartbeat()
            await self._apply_subscriptions()
            try:
                await self._report_redis()
            except (aioredis.RedisError, OSError) as exc:
                log.debug("redis report failed: %s", exc)
            await asyncio.sleep(self._heartbeat)

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
            ok = await self.refresh_symbols() or ok
            await self._apply_subscriptions()

    async def _sample_loop(self) -> None:
        while True:
            self._rate.add(time.monotonic(), self.received)
            await asyncio.sleep(1.0)

    # -- reports ------------------------------------------------------------------------------

    @property
    def message_rate(self) -> float:
        return self._rate.rate()

    @property
    def dropped_buffer(self) -> int:
        return self.buffer.dropped

    def symbol_rates(self) -> dict[str, float]:
        """msg/s per symbol this replica subscribes, over the last few heartbeats."""
        now = time.monotonic()
        current = dict(self._symbol_counts)
        self._symbol_snapshots.append((now, current))
        then, old = self._symbol_snapshots[0]
        elapsed = now - then
        if elapsed <= 0:
            return {s: 0.0 for s in self.subscribed}
        return {s: round((current.get(s, 0) - old.get(s, 0)) / elapsed, 3) for s in self.subscribed}

    async def _report_redis(self, final: bool = False) -> None:
        """Symbols, replicas, metrics and per-symbol rates; every key has a TTL."""
        if self._redis is None or (not final and not self.membership.healthy):
            return
        env, shard = self.env.name, self.shard
        member_ttl = max(1, int(self._member_ttl))
        cpu_pct, mem_pct = self._procstats.sample()
        mine: dict[Any, Any] = {
            redis_keys.METRIC_MSG_RATE: round(self.message_rate, 3),
            redis_keys.METRIC_CPU_PCT: cpu_pct,
            redis_keys.METRIC_MEM_PCT: mem_pct,
        }
        members = self.membership.members
        own_key = redis_keys.member_metrics_key(env, shard, self.member)
        if final:  # a stopping replica stops counting at once; shared keys age out by TTL
            await self._redis.delete(own_key)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(own_key, mapping=mine)
            pipe.expire(own_key, member_ttl)
            for other in members:
                if other != self.member:
                    pipe.hgetall(redis_keys.member_metrics_key(env, shard, other))
            answers = await pipe.execute()
        live = [mine]
        for answer in answers[2:]:
            if answer:
                live.append({_text(k): float(v) for k, v in answer.items()})
        aggregate: dict[Any, Any] = {
            redis_keys.METRIC_MSG_RATE: round(
                sum(m.get(redis_keys.METRIC_MSG_RATE, 0.0) for m in live), 3
            ),
            redis_keys.METRIC_CPU_PCT: _mean(m.get(redis_keys.METRIC_CPU_PCT, 0.0) for m in live),
            redis_keys.METRIC_MEM_PCT: _mean(m.get(redis_keys.METRIC_MEM_PCT, 0.0) for m in live),
        }
        symbols_key = redis_keys.symbols_key(env, shard)
        rates_key = redis_keys.symbol_rates_key(env, shard)
        now = time.monotonic()
        async with self._redis.pipeline(transaction=True) as pipe:
            metrics_key = redis_keys.metrics_key(env, shard)
            pipe.hset(metrics_key, mapping=aggregate)
            pipe.expire(metrics_key, member_ttl)
            pipe.set(redis_keys.replicas_key(env, shard), len(members), ex=member_ttl)
            rewrite = (
                self._redis_symbols_written != self.shard_symbols
                or now - self._redis_symbols_at > redis_keys.KEY_TTL_SECONDS / 2
            )
            if rewrite:
                pipe.delete(symbols_key)
                if self.shard_symbols:
                    pipe.sadd(symbols_key, *sorted(self.shard_symbols))
            pipe.expire(symbols_key, redis_keys.KEY_TTL_SECONDS)
            rates: dict[Any, Any] = dict(self.symbol_rates())
            if rates:
                pipe.hset(rates_key, mapping=rates)
            pipe.expire(rates_key, redis_keys.KEY_TTL_SECONDS)
            await pipe.execute()
        if rewrite:
            self._redis_symbols_written = self.shard_symbols
            self._redis_symbols_at = now
            # bounded by the shard's symbols: fields of symbols that left the shard go
            fields = await self._redis.hkeys(rates_key)
            stale = [f for f in fields if _text(f) not in self.shard_symbols]
            if stale:
                await self._redis.hdel(rates_key, *stale)

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return round(sum(items) / len(items), 2) if items else 0.0


class _ConnectorCollector(Collector):
    """Exports the connector's plain counters at scrape time (nothing on the hot path)."""

    def __init__(self, connector: Connector) -> None:
        self._c = connector

    def collect(self) -> Iterator[Metric]:
        c = self._c
        stats = c.client.stats if c.client is not None else None
        pub = c.publisher.stats

        metrics = ShardMetrics(c.shard)
        gauge, counter = metrics.gauge, metrics.counter

        yield gauge(
            "ssmd_connector_message_rate",
            "Messages per second received from the exchange (recent window); the HPA's "
            "per-pod metric",
            c.message_rate,
        )
        yield counter("ssmd_connector_messages", "Frames received from the exchange", c.received)
        yield counter(
            "ssmd_connector_published", "Frames acknowledged by the shard stream", pub.acked
        )
        dropped = CounterMetricFamily(
            "ssmd_connector_dropped", "Frames dropped, by reason", labels=["shard", "reason"]
        )
        dropped.add_metric([c.shard, "buffer_full"], c.buffer.dropped)
        dropped.add_metric([c.shard, "publish_failed"], pub.given_up)
        dropped.add_metric([c.shard, "rejected"], c.rejected)
        yield dropped
        yield counter(
            "ssmd_connector_sequence_gaps",
            "Sequence gaps on exchange subscriptions",
            stats.gaps if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_reconnects",
            "Exchange WebSocket reconnections",
            stats.reconnects if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_malformed",
            "Malformed exchange frames skipped",
            stats.malformed if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_unknown_messages",
            "Exchange messages of a type the connector does not capture, skipped",
            stats.unknown if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_book_resnapshots",
            "Order book subscriptions renewed after a sequence gap (for a fresh snapshot)",
            stats.resnapshots if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_publish_failures",
            "Publishes refused or unacknowledged in time (each is resent)",
            pub.failures,
        )
        yield counter("ssmd_connector_nats_reconnects", "NATS reconnections", pub.reconnects)
        yield permission_errors_metric(
            c.shard,
            connector_role(c.shard),
            c.publisher.connection.stats.permission_violations,
        )
        yield counter(
            "ssmd_connector_secmaster_failures", "Failed symbol refreshes", c.secmaster_failures
        )
        yield gauge(
            "ssmd_connector_unresolved_symbols",
            "Live secmaster symbols that are orphans or overlaps (captured by no shard)",
            c.unresolved,
        )
        yield gauge("ssmd_connector_buffer_depth", "Frames waiting in the buffer", len(c.buffer))
        yield gauge(
            "ssmd_connector_publish_inflight",
            "Frames awaiting the stream's ack",
            c.publisher.inflight,
        )
        yield gauge(
            "ssmd_connector_subscribed_symbols",
            "Symbols this replica subscribes",
            len(c.subscribed),
        )
        yield gauge(
            "ssmd_connector_shard_symbols", "Symbols resolved to the shard", len(c.shard_symbols)
        )
        yield gauge(
            "ssmd_connector_replicas",
            "Live replicas of the shard as last seen",
            len(c.membership.members),
        )


# -- `ssmd run connector ENV SHARD` ----------------------------------------------------------


def signer_from_environment() -> KalshiSigner | None:
    """Credentials from `KALSHI_API_KEY_ID` + `KALSHI_PRIVATE_KEY_PATH`; neither → unsigned."""
    key_id = os.environ.get("KALSHI_API_KEY_ID", "").strip()
    key_path = os.environ.get("KALSHI_PRIVATE_KEY_PATH", "").strip()
    if not key_id and not key_path:
        return None
    if not key_id or not key_path:
        missing = "KALSHI_API_KEY_ID" if not key_id else "KALSHI_PRIVATE_KEY_PATH"
        raise ConfigError(
            f"Kalshi credentials are half set: {missing} is missing "
            f"(set both KALSHI_API_KEY_ID and KALSHI_PRIVATE_KEY_PATH, or neither)"
        )
    try:
        return KalshiSigner.from_files(key_id, key_path)
    except SsmdError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load the Kalshi private key from KALSHI_PRIVATE_KEY_PATH={key_path}: {exc}"
        ) from None


async def run_connector(connector: Connector) -> None:
    """Run with SIGTERM/SIGINT wired to a clean stop (drain, flush, exit 0)."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, connector.stop)
    try:
        await connector.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def connector_command(
    env: str = typer.Argument(..., help="Environment name or path to its YAML file."),
    shard: str = typer.Argument(..., help="The shard this connector serves."),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", "--nats-url", envvar="NATS_URL"),
    redis_url: str | None = typer.Option(
        None, "--redis-url", envvar="REDIS_URL", help="Membership and reports; optional."
    ),
    kalshi_ws_url: str = typer.Option(
        "wss://api.elections.kalshi.com/trade-api/ws/v2", "--kalshi-ws-url", envvar="KALSHI_WS_URL"
    ),
    kalshi_rest_url: str = typer.Option(
        "https://api.elections.kalshi.com/trade-api/v2",
        "--kalshi-rest-url",
        envvar="KALSHI_REST_URL",
    ),
    metrics_port: int = typer.Option(
        9100, "--metrics-port", envvar="SSMD_METRICS_PORT", help="/metrics and /healthz."
    ),
    member: str | None = typer.Option(
        None,
        "--member",
        envvar="SSMD_MEMBER",
        help="This replica's name among the shard's members (default: hostname-pid).",
    ),
    log_level: str = typer.Option("INFO", "--log-level"),
    shards_file: Path | None = typer.Option(
        None,
        "--shards-file",
        envvar=SHARDS_FILE_VARIABLE,
        help="The shard catalog (every shard and pin) when ENV holds this shard only.",
    ),
    read_interval: float = typer.Option(
        READ_INTERVAL,
        "--read-interval",
        min=0.0,
        max=0.1,
        help="Seconds between reads of the exchange socket and of NATS acks on a busy feed "
        "(0: read as data arrives). Bounds the latency it adds; larger costs less CPU.",
    ),
    nats_nkey_seed: Path | None = typer.Option(
        None,
        "--nats-nkey-seed",
        envvar=NKEY_SEED_VARIABLE,
        help="The seed file of role connector-SHARD (required under nats.auth: nkeys).",
    ),
) -> None:
    """Forward one shard's Kalshi market data into its NATS stream."""
    from ssmd_infra.core.environment import load_environment

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environment = load_environment(env)
    environment.shard(shard)
    signer = signer_from_environment()
    credentials = role_credentials(environment, connector_role(shard), nats_nkey_seed)

    async def main() -> None:  # built inside the loop: the publisher binds to it
        connector = Connector(
            environment,
            shard,
            nats_url=nats_url,
            redis_url=redis_url or None,
            kalshi_ws_url=kalshi_ws_url,
            kalshi_rest_url=kalshi_rest_url,
            signer=signer,
            metrics_port=metrics_port,
            member=member or None,
            read_interval=read_interval,
            shards_file=shards_file,
            nats_credentials=credentials,
        )
        await run_connector(connector)

    try:
        import uvloop

        uvloop.run(main())
    except KalshiAuthError as exc:
        raise SsmdError(
            f"Kalshi refused the credentials (KALSHI_API_KEY_ID="
            f"{os.environ.get('KALSHI_API_KEY_ID', '')!r}): {exc}"
        ) from None
