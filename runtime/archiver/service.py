"""The archiver: one shard's stream, drained into gzip JSONL files on disk, at least once.

    ssmd-internal-{shard} ──pull (batch_size)──▶ lines ──gzip member per file──▶ write + fsync
                 ▲                                                                   │
                 └──────────────── ack (ack-all: the round's newest message) ◀───────┘

Archive lines: `lines.py`. Files and rotation: `writer.py`; layout and manifest: `manifest.py`;
crash recovery: `recovery.py`; reports: `reporting.py`; the command: `command.py`.

Delivery and acknowledgement (at least once: nothing acknowledged is ever lost):

- A durable pull consumer `archiver-{shard}` with `AckPolicy.ALL`: one ack per round, for
  the round's newest message, once every line of the round is written and `fsync`ed (an ack
  that would also cover a message in hand but not yet written waits for the next round).
- Ack-all has a trap: it also acknowledges messages delivered to someone else — a previous
  archiver process killed with a batch in flight, or deliveries lost with a dropped
  connection — that were never written. So the archiver keeps an invariant: it acks only
  while it has received every delivery of the consumer since it last made sure nothing was
  outstanding. It checks the consumer's delivery sequence (in each message's ack subject)
  for contiguity. At start-up with deliveries outstanding (`num_ack_pending` > 0), or on any
  hole in the delivery sequence, it **resyncs**: deletes the consumer and creates it again
  starting just after the ack floor, so every unacknowledged message is delivered again at
  once (never acked unwritten; possibly written twice). Exactly one archiver per shard runs
  (the Kubernetes workload is a one-replica StatefulSet); two would break each other's acks.
  A consumer that is gone (deleted from outside, or a crash between the delete and the
  create) has lost its position: it is created again from the stream's beginning
  (duplicates, not loss).
- Pipelined: while one round is compressed, written and synced in a worker thread (zlib and
  fsync release the GIL), the next is fetched and turned into lines. Memory is bounded
  whatever the backlog: one pull request at a time (at most `batch_size` messages and
  `max_bytes` bytes), one round being written, so at most two rounds in hand; the writer's
  open files are bounded by the types seen (at most `max_open`); every cache is bounded.
- SIGTERM (or SIGINT), whenever it comes: stop asking for more, let the open request end
  (at most `expires`), write and fsync what is in hand, ack, rename every open file to its
  final name, write the manifests, exit 0. During start-up (connecting, checking the stream,
  resyncing the consumer, NATS unreachable) the step under way is abandoned — except the
  few JetStream calls between a resync's consumer delete and its re-creation — and the
  process stops the same way: a clean stop takes at most one request's expiry, one write
  and its fsync, and the final renames (every step after those has a time limit).

Reports: Prometheus `/metrics` and `/healthz` (`runtime/health.py`); Redis hash
`{env}:shard:{shard}:archiver` (messages, bytes, files, lag, …) with a TTL. Redis being down
changes nothing but the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from runtime.archiver.lines import epoch_json, frame_part
from runtime.archiver.recovery import RecoveryReport, recover
from runtime.archiver.reporting import ArchiverCollector, report_redis
from runtime.archiver.writer import ArchiveWriter, FileKey, Group
from runtime.health import HealthServer
from runtime.membership import redis_client
from runtime.nats.consumer import Delivery, PullClient
from runtime.nats.credentials import (
    NatsCredentials,
    NatsPyDenials,
)
from runtime.procstats import ProcStats
from runtime.tasks import cancel
from ssmd_infra.core import redis_keys
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.subjects import INBOX_PREFIX, INTERNAL_PREFIX, decode_symbol, internal_stream
from ssmd_infra.core.subjects import archiver_consumer as consumer_name  # one name rule

log = logging.getLogger("ssmd.archiver")

NS_PER_DAY = 86_400 * 1_000_000_000
INVALID_TYPE = "_invalid"
_SAFE_TYPE = re.compile(rb"^[A-Za-z0-9_-]{1,64}$")
# the header block the connector writes, with a JSON-safe id (printable ASCII but " and \)
_MSG_ID_HEADER = re.compile(
    rb"NATS/1\.0\r\nNats-Msg-Id: ?([\x20\x21\x23-\x5b\x5d-\x7e]*)\r\n\r\n\Z"
)
_T = TypeVar("_T")
CLOSE_TIMEOUT = 2.0  # each shutdown step after the files are closed (reports, connections)


class _StopRequested(Exception):
    """A stop was asked for while a start-up (or resync) step was under way."""


@dataclass(frozen=True, slots=True)
class _SubjectInfo:
    key: str  # "{feed}/{type}": the file a message goes to (with its day)
    tail: bytes  # the line's `,"type":…,"symbol":…` part


@dataclass(slots=True)
class Batch:
    """One prepared round: lines per file, sequence runs per (feed, date), what to ack."""

    groups: dict[FileKey, Group]
    runs: dict[tuple[str, str], list[tuple[int, int]]]
    count: int
    ack_reply: bytes | None
    ack_seq: int
    min_seq: int


@dataclass(slots=True)
class ArchiverStats:
    deliveries: int = 0  # messages received from the stream
    archived: int = 0  # lines written and fsynced
    batches: int = 0
    acked_seq: int = 0  # the stream sequence of the last ack sent
    lag: int = 0  # messages in the stream not yet delivered to the consumer
    redelivered: int = 0
    invalid: int = 0  # bad subject or a payload that is not JSON (still archived)
    resyncs: int = 0
    dropped_for_resync: int = 0  # received, not written: delivered again after the resync
    write_errors: int = 0


class Archiver:
    """One shard's archiver; `await run()` until `stop()`."""

    def __init__(
        self,
        env: Environment,
        shard: str,
        *,
        nats_url: str,
        data_dir: Path,
        redis_url: str | None = None,
        metrics_port: int | None = 9101,
        batch_size: int | None = None,
        rotation: float | None = None,
        max_delay: float = 0.2,
        expires: float = 1.0,
        ack_wait: float = 60.0,
        max_bytes: int = 16 << 20,
        report_interval: float = redis_keys.HEARTBEAT_SECONDS,
        manifest_interval: float = 10.0,
        max_open: int = 64,
        nats_credentials: NatsCredentials | None = None,
    ) -> None:
        self.env = env
        self.shard = shard
        env.shard(shard)  # ConfigError naming the known shards
        self.stream = internal_stream(shard)
        self.consumer = consumer_name(shard)
        self.batch_size = batch_size or env.archiver.batch_size
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        rotation = env.archiver.rotation if rotation is None else rotation
        if rotation <= 0:
            raise ConfigError(f"rotation must be positive, got {rotation}s")
        self._nats_url = nats_url
        self._metrics_port = metrics_port
        self._max_delay = max_delay
        self._expires = expires
        self._ack_wait = ack_wait
        self._max_bytes = max_bytes
        self._report_interval = report_interval
        self.data_dir = data_dir
        self.writer = ArchiveWriter(
            data_dir,
            shard,
            self.stream,
            rotation=rotation,
            manifest_interval=manifest_interval,
            max_open=max_open,
        )
        self._credentials = nats_credentials
        self.pull = PullClient(
            nats_url,
            self.stream,
            self.consumer,
            name=f"ssmd-archiver-{shard}",
            nkey_seed_file=nats_credentials.seed_file if nats_credentials else None,
            inbox_prefix=nats_credentials.inbox_prefix if nats_credentials else INBOX_PREFIX,
        )
        self.control_denials = NatsPyDenials(log, "archiver's control request")
        self.stats = ArchiverStats()
        self.recovery: RecoveryReport | None = None
        self.registry = CollectorRegistry()
        self.registry.register(ArchiverCollector(self))
        self.health: HealthServer | None = None
        self._redis: aioredis.Redis | None = redis_client(redis_url) if redis_url else None
        self.redis_ok = False
        self._procstats = ProcStats()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._expected_dseq = 0  # the next delivery sequence; 0 = resync before fetching
        self._last_ack: bytes | None = None
        self._generation = 0
        self._subjects: dict[bytes, _SubjectInfo] = {}
        self._writing: asyncio.Future[int] | None = None  # the round being written
        self._written: Batch | None = None
        self._stopping = asyncio.Event()
        self._failed: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consume_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover files, connect, ensure the consumer, archive until `stop()`."""
        self.recovery = await asyncio.to_thread(recover, self.writer)
        r = self.recovery
        if r.parts or r.parts_removed or r.unlisted:
            log.warning(
                "recovered %d .part file(s) (%d empty removed, %d torn bytes cut) and %d "
                "unlisted file(s): %d lines accounted for",
                r.parts,
                r.parts_removed,
                r.truncated_bytes,
                r.unlisted,
                r.lines,
            )
        try:
            await self._connect_control()
            await self._check_stream()
            await self._ensure_consumer()
            if self._metrics_port is not None:
                self.health = HealthServer(self.registry, self._health, self._metrics_port)
                await self.health.start()
            await self.pull.start()
            self._consume_task = asyncio.create_task(self._consume(), name="consume")
            self._consume_task.add_done_callback(self._task_done)
            self._spawn(self._report_loop(), "report")
            log.info(
                "archiver %s/%s started: consumer %s on %s, batch %d, rotation %gs, into %s",
                self.env.name,
                self.shard,
                self.consumer,
                self.stream,
                self.batch_size,
                self.writer.rotation,
                self.data_dir,
            )
            await self._stopping.wait()
        except _StopRequested:
            log.info("stop requested during start-up: stopping before archiving")
        finally:
            await self._shutdown()
        if self._failed is not None:
            raise self._failed

    def stop(self) -> None:
        """Ask `run()` to finish cleanly (safe from a signal handler)."""
        self._stopping.set()

    async def _unless_stopped(self, step: Awaitable[_T]) -> _T:
        """`step`, abandoned (cancelled) if a stop is asked for first: `_StopRequested`.
        Only for steps that may be abandoned half-way (connecting, reading state, creating
        the consumer — a later start finds it created or not, both fine)."""
        task = asyncio.ensure_future(step)
        if not self._stopping.is_set():
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                task.cancel()
                raise
            finally:
                stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # let it unwind (a connection attempt closes its socket)
        raise _StopRequested

    @property
    def port(self) -> int | None:
        return self.health.port if self.health is not None else None

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s failed: %s", task.get_name(), exc)
            self._failed = exc
        self._stopping.set()

    async def _shutdown(self) -> None:
        consume = self._consume_task
        if consume is not None:
            try:  # the loop sees `_stopping`, finishes its batch, acks and returns
                await asyncio.wait_for(asyncio.shield(consume), self._expires + 10.0)
            except (TimeoutError, Exception):
                await cancel(consume)
        for task in self._tasks:
            await cancel(task)
        writing = self._writing
        if writing is not None:  # cancelled while it waited: never two threads on the writer
            await asyncio.wait([writing])
            if self._failed is None and (writing.cancelled() or writing.exception()):
                self._failed = SsmdError(f"cannot write the archive under {self.data_dir}")
        if self._failed is None:
            closed = await asyncio.to_thread(self.writer.close)
            log.info("closed %d file(s); manifests written", closed)
        else:  # a write may have failed half-way: leave the .part files to recovery
            self.writer.abandon()
        # from here on nothing is at stake but reports and sockets: every step is bounded
        await self.pull.flush(1.0)  # the last ack reaches the server before we go
        await self.pull.close()
        if consume is not None:  # it ran: its last figures
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._report_redis(), CLOSE_TIMEOUT)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.aclose(), CLOSE_TIMEOUT)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), CLOSE_TIMEOUT)
        if self.health is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.health.stop(), CLOSE_TIMEOUT)
        log.info(
            "archiver stopped: %d archived, last acked sequence %d",
            self.stats.archived,
            self.stats.acked_seq,
        )

    # -- JetStream control (nats-py, a second connection) -------------------------------------

    async def _connect_control(self) -> None:
        async def quiet(exc: Exception) -> None:
            if not self.control_denials.note(exc):
                log.debug("nats (control): %s", exc)

        self._nc = NatsClient()  # ours before it connects: `_shutdown` closes it either way
        creds = self._credentials
        try:
            await self._unless_stopped(
                self._nc.connect(
                    self._nats_url,
                    name=f"ssmd-archiver-{self.shard}-control",
                    connect_timeout=2,
                    max_reconnect_attempts=2,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float sleeps fine
                    error_cb=quiet,
                    nkeys_seed_str=creds.nkeys_seed_str if creds else None,
                    inbox_prefix=creds.inbox_prefix if creds else INBOX_PREFIX,
                )
            )
        except _StopRequested:
            raise
        except Exception as exc:
            raise SsmdError(f"cannot connect to NATS at {self._nats_url}: {exc}") from None
        # connected once: from now on keep reconnecting through outages
        self._nc.options["max_reconnect_attempts"] = -1
        self._js = self._nc.jetstream(timeout=5.0)

    def _jetstream(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    async def _check_stream(self) -> None:
        try:
            await self._unless_stopped(self._jetstream().stream_info(self.stream))
        except NotFoundError:
            raise SsmdError(
                f"stream {self.stream} does not exist on {self._nats_url}: create the "
                f"environment's streams first (ssmd local up, or the Pulumi program)"
            ) from None

    def _consumer_config(self, start_seq: int | None) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer,
            description=f"ssmd archiver of shard {self.shard}",
            deliver_policy=DeliverPolicy.ALL
            if start_seq is None
            else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.ALL,
            ack_wait=self._ack_wait,
            max_ack_pending=max(4 * self.batch_size, 1000),
            max_waiting=16,
        )

    async def _ensure_consumer(self) -> None:
        js = self._jetstream()
        try:
            info = await self._unless_stopped(js.consumer_info(self.stream, self.consumer))
        except NotFoundError:
            info = await self._unless_stopped(
                js.add_consumer(self.stream, self._consumer_config(None))
            )
            log.info("created consumer %s on %s", self.consumer, self.stream)
        else:
            config = info.config
            if config.ack_policy != AckPolicy.ALL or config.deliver_subject:
                log.warning(
                    "consumer %s is not an ack-all pull consumer; replacing it from its ack floor",
                    self.consumer,
                )
                await self._resync("the consumer's configuration")
                return
            if info.num_ack_pending:
                await self._resync(
                    f"{info.num_ack_pending} message(s) delivered to a previous process "
                    f"and never acknowledged"
                )
                return
        self._expect_from(info)

    def _expect_from(self, info: ConsumerInfo) -> None:
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        self._expected_dseq = delivered + 1
        self.stats.lag = int(info.num_pending or 0)
        self.stats.acked_seq = max(self.stats.acked_seq, _ack_floor(info))

    async def _resync(self, reason: str) -> None:
        """Recreate the consumer just after its ack floor: every unacknowledged message is
        delivered again, to us, now (see the module docstring)."""
        js = self._jetstream()
        self.stats.resyncs += 1
        self._expected_dseq = 0
        if self._last_ack is not None:
            self.pull.ack(self._last_ack)
        await self.pull.flush()
        try:
            floor = _ack_floor(
                await self._unless_stopped(js.consumer_info(self.stream, self.consumer))
            )
        except NotFoundError:
            # gone (deleted from outside, or a resync that crashed half-way): its position
            # is unknown, and after a stream replacement so is the meaning of our last ack;
            # from the start of the stream, then: duplicates, never loss
            floor = 0
        if self._stopping.is_set():  # nothing changed yet: the next start resyncs
            raise _StopRequested
        # from the delete to the re-creation, no stop interrupts (each call has a time limit):
        # a consumer left deleted would make the next start archive the whole stream again
        log.warning(
            "resync of %s (%s): starting again after sequence %d", self.consumer, reason, floor
        )
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream, self.consumer)
        await self.pull.flush()  # whatever the old consumer sent us has arrived: forget it
        self.stats.dropped_for_resync += len(self.pull.take())
        self.pull.forget_request()
        info = await js.add_consumer(self.stream, self._consumer_config(floor + 1))
        self._last_ack = None
        self.pull.consumer_gone = False  # that was the old one (our own delete said so)
        self._expect_from(info)

    # -- the data path ------------------------------------------------------------------------

    async def _consume(self) -> None:
        """One pull request at a time. A round is written when its request has delivered all
        it will, when `batch_size` are in hand, or `max_delay` after the first arrived. While
        one round is written and synced (in a worker thread: zlib and fsync release the
        GIL), the next is fetched and prepared; each round is acked once its write is done.
        So at most two rounds are in memory: the one being written, the one being fetched."""
        pull = self.pull
        batch = self.batch_size
        max_bytes = max(self._max_bytes, 2 * pull.max_payload)
        deadline: float | None = None  # when the deliveries in hand are written regardless
        next_rotation = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            stopping = self._stopping.is_set()
            if self._writing is not None and self._writing.done():
                await self._finish_write()
            if now >= next_rotation:  # rotations also follow every write (`_write_round`)
                if self._writing is None:
                    await asyncio.to_thread(self.writer.rotate)
                next_rotation = now + min(1.0, self.writer.rotation / 4)
            if pull.connected and pull.generation != self._generation:
                self._generation = pull.generation
                if self._last_ack is not None:  # it may have been lost with the connection
                    pull.ack(self._last_ack)
            if pull.consumer_gone:  # deleted or never there: recreate it (a resync)
                pull.consumer_gone = False
                self._expected_dseq = 0
            if self._expected_dseq == 0 and (pull.connected or stopping):
                await self._finish_write()
                if stopping:  # what is unacked is delivered again at the next start's resync
                    return
                try:
                    await self._resync("deliveries this process did not receive")
                except _StopRequested:
                    return
                except Exception as exc:  # NATS away: try again shortly
                    log.warning("resync failed (%s); retrying", exc)
                    self._expected_dseq = 0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
                    continue
                deadline = None
                continue
            request_open = pull.request_open
            if pull.received:
                if deadline is None:
                    deadline = now + self._max_delay
                due = len(pull.received) >= batch or not request_open or now >= deadline
                if due and not (stopping and request_open):  # stopping: let the request end
                    deadline = None
                    prepared = self._prepare(pull.take())
                    # the previous round: written, synced, acked
                    await self._finish_write(prepared.min_seq if prepared else None)
                    if prepared is not None:
                        self._start_write(prepared)
                    continue
            elif not request_open:
                if stopping:
                    await self._finish_write()
                    return
                if pull.connected:
                    pull.request(batch, max_bytes, self._expires)
            wait = next_rotation - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if stopping:
                wait = min(wait, 0.05)
            await pull.wait_changed(max(wait, 0.001))

    def _start_write(self, batch: Batch) -> None:
        future = asyncio.ensure_future(asyncio.to_thread(self._write_round, batch))
        future.add_done_callback(lambda _f: self.pull.wake())
        self._writing = future
        self._written = batch

    def _write_round(self, batch: Batch) -> int:
        """In the worker thread: write and sync the round, then rotate what is due."""
        written = self.writer.write_batch(batch.groups, batch.runs)
        self.writer.rotate()
        return written

    async def _finish_write(self, unwritten_min: int | None = None) -> None:
        """Wait for the round being written; then count it and acknowledge it.
        `unwritten_min`: the lowest sequence of a prepared round not yet written."""
        future, batch = self._writing, self._written
        if future is None or batch is None:
            return
        try:
            # shielded: cancelling the loop (a stop that overran) must not abandon the write
            # half-way while `_shutdown` closes the files in another thread; it waits for it
            await asyncio.shield(future)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            self._writing = None
            self._written = None
            self.stats.write_errors += 1
            raise SsmdError(f"cannot write the archive under {self.data_dir}: {exc}") from exc
        self._writing = None
        self._written = None
        self.stats.archived += batch.count
        self.stats.batches += 1
        if batch.ack_reply is None:
            return
        # a message in hand, not yet written, at or below the ack would be acked unwritten
        # (only a redelivery can be): leave the ack to the next round, which covers it
        if unwritten_min is not None and unwritten_min <= batch.ack_seq:
            return
        for _subject, reply, _hdr, _payload in self.pull.received:
            if _ack_fields(reply)[0] <= batch.ack_seq:
                return
        if self.pull.ack(batch.ack_reply):
            self._last_ack = batch.ack_reply
            self.stats.acked_seq = max(self.stats.acked_seq, batch.ack_seq)

    def _prepare(self, deliveries: list[Delivery]) -> Batch | None:
        """The lines of one round, grouped per file, and its sequence runs per day; None
        (everything dropped, resync) on a hole in the delivery sequence."""
        if not deliveries:
            return None
        first = deliveries[0][1].split(b".")
        off = 0 if len(first) == 9 else 2  # $JS.ACK.<domain>.<account hash>.… (v2 subjects)
        d_first = int(first[6 + off])
        d_last = int(deliveries[-1][1].split(b".")[6 + off])
        expected = self._expected_dseq
        # delivery sequences only grow, so the ends tell whether one is missing in between
        if d_first != expected or d_last - d_first != len(deliveries) - 1:
            self.stats.dropped_for_resync += len(deliveries)
            log.warning(
                "deliveries %d..%d (%d in hand) after %d: some were lost; resync",
                d_first,
                d_last,
                len(deliveries),
                expected - 1,
            )
            self._expected_dseq = 0
            return None
        self._expected_dseq = d_last + 1
        i_delivered, i_seq, i_ts = 4 + off, 5 + off, 7 + off
        subjects = self._subjects
        frame_of = self._frame
        id_match = _MSG_ID_HEADER.match
        days: dict[str, dict[str, Group]] = {}
        runs: dict[str, list[tuple[int, int]]] = {}
        lo = hi = b""
        date = ""
        groups: dict[str, Group] = {}
        day_runs: list[tuple[int, int]] = []
        run_start = run_end = -2
        best_seq = -1
        best_reply: bytes | None = None
        redelivered = 0
        for subject, reply, hdr, payload in deliveries:
            parts = reply.split(b".")
            seq_b = parts[i_seq]
            ts_b = parts[i_ts]
            if parts[i_delivered] != b"1":
                redelivered += 1
            if not (lo <= ts_b < hi and len(ts_b) == 19):  # another day (rare)
                if run_end >= 0:
                    day_runs.append((run_start, run_end))
                    run_end = -2
                date, lo, hi = self._day_of(int(ts_b))
                groups = days.setdefault(date, {})
                day_runs = runs.setdefault(date, [])
            seq = int(seq_b)
            if seq == run_end + 1:
                run_end = seq
            else:
                if run_end >= 0:
                    day_runs.append((run_start, run_end))
                run_start = run_end = seq
            if seq > best_seq:
                best_seq = seq
                best_reply = reply
            info = subjects.get(subject)
            if info is None:
                info = self._subject(subject)
            found = id_match(hdr)
            if found is not None:
                msg_id: bytes | None = found[1]
                id_json = b'"' + found[1] + b'"'
            else:
                msg_id, id_json = self._msg_id_slow(hdr)
            line = b'{"seq":%b,"received_ns":%b,"id":%b%b,"epoch":%b%b}\n' % (
                seq_b,
                ts_b,
                id_json,
                info.tail,
                epoch_json(msg_id),
                frame_of(payload),
            )
            group = groups.get(info.key)
            if group is None:
                groups[info.key] = Group([line], seq, seq, int(ts_b) / 1e9)
            else:
                group.lines.append(line)
                if seq > group.seq_max:
                    group.seq_max = seq
                elif seq < group.seq_min:
                    group.seq_min = seq
        if run_end >= 0:
            day_runs.append((run_start, run_end))
        self.stats.deliveries += len(deliveries)
        self.stats.redelivered += redelivered
        self.stats.lag = int(deliveries[-1][1].split(b".")[8 + off])
        file_groups: dict[FileKey, Group] = {}
        day_seqs: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for day, by_key in days.items():
            for key, group in by_key.items():
                feed, _, msg_type = key.partition("/")
                file_groups[(feed, day, msg_type)] = group
                if (feed, day) not in day_seqs:
                    day_seqs[(feed, day)] = runs[day]
        min_seq = min(g.seq_min for g in file_groups.values())
        return Batch(file_groups, day_seqs, len(deliveries), best_reply, best_seq, min_seq)

    def _day_of(self, ts_ns: int) -> tuple[str, bytes, bytes]:
        """(UTC date, first and past-the-end ns of that day as 19-digit bytes)."""
        day = ts_ns // NS_PER_DAY
        date = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
        return date, b"%019d" % (day * NS_PER_DAY), b"%019d" % ((day + 1) * NS_PER_DAY)

    @staticmethod
    def _msg_id_slow(hdr: bytes) -> tuple[bytes | None, bytes]:
        """The `Nats-Msg-Id` header in a header block of another shape: the id when it is
        JSON-safe ASCII (else None), and its JSON (`null` when absent)."""
        for raw in hdr.split(b"\r\n")[1:]:
            name, sep, value = raw.partition(b":")
            if sep and name.strip().lower() == b"nats-msg-id":
                value = value.strip()
                as_json = json.dumps(value.decode("utf-8", "replace")).encode()
                return (value if as_json == b'"' + value + b'"' else None), as_json
        return None, b"null"

    def _frame(self, payload: bytes) -> bytes:
        """The line's origin and frame part (`lines.frame_part`); a non-JSON payload is
        counted as invalid."""
        part, valid = frame_part(payload)
        if not valid:
            self.stats.invalid += 1
        return part

    def _subject(self, subject: bytes) -> _SubjectInfo:
        """Where a subject not seen before goes, and its part of the line. A subject that is
        not `internal.{shard}.{feed}.{type}.{symbol}` of this shard and feed goes to type
        `_invalid` (counted per message: such subjects are not cached)."""
        parts = subject.split(b".")
        if (
            len(parts) == 5
            and parts[0] == INTERNAL_PREFIX.encode()
            and parts[1] == self.shard.encode()
            and parts[2] == self.env.feed.encode()
            and _SAFE_TYPE.match(parts[3])
        ):
            try:
                symbol = decode_symbol(parts[4].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                pass
            else:
                msg_type = parts[3].decode()
                tail = b',"type":%b,"symbol":%b' % (
                    json.dumps(msg_type).encode(),
                    json.dumps(symbol, ensure_ascii=False).encode(),
                )
                info = _SubjectInfo(f"{self.env.feed}/{msg_type}", tail)
                if len(self._subjects) >= 65_536:
                    self._subjects.clear()  # bounded: types × the shard's symbols
                self._subjects[subject] = info
                return info
        self.stats.invalid += 1
        if self.stats.invalid <= 10:
            log.warning("archiving a message with an unexpected subject %r", subject[:200])
        text = json.dumps(subject.decode("utf-8", "replace"), ensure_ascii=False).encode()
        return _SubjectInfo(
            f"{self.env.feed}/{INVALID_TYPE}", b',"type":null,"symbol":null,"subject":%b' % text
        )

    # -- reports ------------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self._report_interval)
            await self._refresh_lag()
            try:
                await self._report_redis()
                self.redis_ok = self._redis is not None
            except (aioredis.RedisError, OSError) as exc:
                if self.redis_ok:
                    log.warning("redis report failed: %s", exc)
                self.redis_ok = False

    async def _refresh_lag(self) -> None:
        """The consumer's pending count from the server, when deliveries are not telling us."""
        if self._js is None or self.pull.received:
            return
        try:
            info = await self._js.consumer_info(self.stream, self.consumer, timeout=1.0)
        except Exception:  # NATS away or the consumer mid-resync: keep the last figure
            return
        self.stats.lag = int(info.num_pending or 0)

    async def _report_redis(self) -> None:
        if self._redis is not None:
            await report_redis(self._redis, self, self._procstats)

    def _health(self) -> tuple[bool, str]:
        detail = (
            f"shard={self.shard} consumer={self.consumer} nats={self.pull.connected} "
            f"redis={self.redis_ok} archived={self.stats.archived} lag={self.stats.lag} "
            f"open_files={self.writer.open_files}"
        )
        if self._failed is not None:
            return False, f"failed: {self._failed}; {detail}"
        return True, detail


def _ack_floor(info: ConsumerInfo) -> int:
    """The stream sequence up to which the consumer has everything acknowledged."""
    return info.ack_floor.stream_seq if info.ack_floor is not None else 0


def _ack_fields(reply: bytes) -> tuple[int, int]:
    """(stream sequence, delivery sequence) from a JetStream ack subject."""
    parts = reply.split(b".")
    if len(parts) == 9:
        return int(parts[5]), int(parts[6])
    return int(parts[7]), int(parts[8])
