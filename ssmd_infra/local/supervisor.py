"""The local pipeline: the whole system on one machine, no cluster.

`ssmd local up [ENV]` is the second backend of the desired state (the Pulumi program is the
first): from the same environment, resolution and stream specs it starts real `nats-server`
and `redis-server` processes (unless URLs are given), the Kalshi simulator (unless Kalshi
credentials are set), creates the streams with the same code the Pulumi provider uses, then
one connector process per replica and one archiver process per shard, and shows a live table.

Shutdown is ordered so nothing is lost: the simulator stops generating, connectors drain and
exit, archivers catch up with their streams and exit, then the servers stop.

A day roll (SIGHUP to the `local up` process, sent by `ssmd shard apply --target local` or
`ssmd day roll`) re-reads the environment file, stops the connectors at the end of the "day",
reconciles the streams, and starts connectors and archivers with the new assignments; archivers
of removed shards are stopped once they have drained. The state file
`.ssmd/local/{env}.json` tells other commands where the pipeline is and which roll it is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core import local_state
from ssmd_infra.core.environment import Environment, environment_path, load_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.resolution import Layout, layout_of
from ssmd_infra.core.streams import stream_specs
from ssmd_infra.core.subjects import CLIENT_STREAM, internal_stream
from ssmd_infra.core.workload import Endpoints, archiver_workload, connector_workload
from ssmd_infra.local.servers import ServerProcess, free_port, start_nats, start_redis

SIMULATOR_KEY_ID = "ssmd-local-simulator"
DRAIN_TIMEOUT = 30.0


def state_file(env_name: str) -> Path:
    return local_state.state_path(env_name)


@dataclass
class Child:
    """A runtime process started by the pipeline."""

    kind: str  # connector | archiver | simulator
    shard: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@dataclass
class ShardFigures:
    shard: str
    symbols: int
    replicas: int
    msg_rate: float = 0.0
    published: int = 0  # messages in the shard's internal stream
    forwarded: int = 0  # connector messages_total summed over replicas
    drops: int = 0
    gaps: int = 0
    archived: int = 0


@dataclass
class LocalPipeline:
    env_ref: str
    data_dir: Path
    nats_url: str | None = None
    redis_url: str | None = None
    rate_per_market: float = 10.0
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    env: Environment = field(init=False)
    layout: Layout = field(init=False)
    servers: list[ServerProcess] = field(default_factory=list, init=False)
    children: list[Child] = field(default_factory=list, init=False)
    generation: int = field(default=0, init=False)
    # outcome of the last SIGHUP, read back by `ssmd shard apply|rollback --target local`
    roll_attempts: int = field(default=0, init=False)
    roll_error: str | None = field(default=None, init=False)
    roll_actions: list[str] = field(default_factory=list, init=False)
    kalshi_ws_url: str | None = field(default=None, init=False)
    kalshi_rest_url: str | None = field(default=None, init=False)
    simulator: Child | None = field(default=None, init=False)
    credentials: dict[str, str] = field(default_factory=dict, init=False)
    _stopped: bool = field(default=False, init=False)

    # -- start -------------------------------------------------------------------------------

    def _load(self) -> None:
        self.env_file = environment_path(self.env_ref)
        self.env = load_environment(self.env_file)
        self.env_text = Path(self.env_file).read_bytes()  # what a refused roll goes back to
        self.layout = layout_of(self.env)

    async def start(self) -> None:
        self._load()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = self.data_dir / ".local"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            server = start_nats(self.workdir / "nats")
            self.servers.append(server)
            self.nats_url = server.url
        if self.redis_url is None:
            server = start_redis(self.workdir / "redis")
            self.servers.append(server)
            self.redis_url = server.url
        self._start_exchange()
        await reconcile_streams(self.nats_url, stream_specs(self.env))
        self._start_shards(list(self.env.shards))
        self._write_state()

    def _start_exchange(self) -> None:
        key_id = os.environ.get("KALSHI_API_KEY_ID")
        key_path = os.environ.get("KALSHI_PRIVATE_KEY_PATH")
        if key_id and key_path:
            self.kalshi_ws_url = os.environ.get(
                "KALSHI_WS_URL", "wss://api.elections.kalshi.com/trade-api/ws/v2"
            )
            self.kalshi_rest_url = os.environ.get(
                "KALSHI_REST_URL", "https://api.elections.kalshi.com/trade-api/v2"
            )
            self.credentials = {"KALSHI_API_KEY_ID": key_id, "KALSHI_PRIVATE_KEY_PATH": key_path}
            self.console.print("[bold]Kalshi credentials set: connecting to Kalshi itself[/]")
            return
        key_dir = self.workdir / "simulator-keys"
        port = free_port()
        self.simulator = self._spawn(
            "simulator",
            "-",
            [
                "run",
                "simulator",
                str(self.env_file),
                "--port",
                str(port),
                "--rate",
                str(self.rate_per_market),
                "--key-dir",
                str(key_dir),
            ],
            metrics_port=port,
        )
        self.credentials = {
            "KALSHI_API_KEY_ID": SIMULATOR_KEY_ID,
            "KALSHI_PRIVATE_KEY_PATH": str(key_dir / "kalshi-private.pem"),
        }
        self.kalshi_ws_url = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
        self.kalshi_rest_url = f"http://127.0.0.1:{port}/trade-api/v2"
        _wait_http(f"http://127.0.0.1:{port}/_sim/stats", self.simulator)

    def _spawn(
        self,
        kind: str,
        shard: str,
        args: list[str],
        metrics_port: int,
        extra_env: dict[str, str] | None = None,
    ) -> Child:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        suffix = f"-{shard}" if shard != "-" else ""
        index = sum(1 for c in self.children if c.kind == kind and c.shard == shard)
        log = logs / f"{kind}{suffix}-{index}.log"
        env = {**os.environ, **(extra_env or {})}
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ssmd_infra", *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        child = Child(kind, shard, proc, metrics_port, log)
        self.children.append(child)
        return child

    def _start_shards(self, shards: list[str], env_file_override: Path | None = None) -> None:
        assert self.nats_url and self.redis_url and self.kalshi_ws_url and self.kalshi_rest_url
        env_file = str(env_file_override or self.env_file)
        endpoints = Endpoints(nats_url=self.nats_url, redis_url=self.redis_url)
        for name in shards:
            shard = self.env.shards[name]
            for _ in range(shard.replicas):
                port = free_port()
                spec = connector_workload(
                    env_file,
                    name,
                    endpoints,
                    metrics_port=port,
                    kalshi_ws_url=self.kalshi_ws_url,
                    kalshi_rest_url=self.kalshi_rest_url,
                )
                self._spawn("connector", name, spec.args, port, self.credentials)
            if not any(c.kind == "archiver" and c.shard == name and c.alive for c in self.children):
                port = free_port()
                spec = archiver_workload(
                    env_file, name, endpoints, metrics_port=port, data_dir=str(self.data_dir)
                )
                self._spawn("archiver", name, spec.args, port)

    def _write_state(self) -> None:
        assert self.nats_url and self.redis_url
        state = local_state.LocalState(
            pid=os.getpid(),
            env=self.env.name,
            env_file=str(Path(self.env_file).resolve()),
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            data_dir=str(self.data_dir.resolve()),
            generation=self.generation,
            rolled_at=time.time(),
            shards=list(self.env.shards),
            roll_attempts=self.roll_attempts,
            roll_error=self.roll_error,
            roll_actions=list(self.roll_actions),
        )
        local_state.write(state_file(self.env.name), state)

    # -- observe -----------------------------------------------------------------------------

    async def figures(self) -> dict[str, ShardFigures]:
        """Per-shard figures from the children's /metrics and the streams' state."""
        out = {
            name: ShardFigures(name, len(self.layout.symbols_of(name)), 0)
            for name in self.env.shards
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            scraped = await asyncio.gather(
                *(_scrape(http, c) for c in self.children if c.kind != "simulator" and c.alive)
            )
        for child, metrics in scraped:
            fig = out.get(child.shard)
            if fig is None:
                continue
            if child.kind == "connector":
                fig.replicas += 1
                fig.msg_rate += metrics.get("ssmd_connector_message_rate", 0.0)
                fig.forwarded += int(metrics.get("ssmd_connector_messages_total", 0.0))
                fig.drops += int(metrics.get("ssmd_connector_dropped_total", 0.0))
                fig.gaps += int(metrics.get("ssmd_connector_sequence_gaps_total", 0.0))
            elif child.kind == "archiver":
                fig.archived += int(metrics.get("ssmd_archiver_messages_total", 0.0))
        counts = await self.stream_counts()
        for name, fig in out.items():
            fig.published = counts.get(internal_stream(name), 0)
        return out

    async def stream_counts(self) -> dict[str, int]:
        assert self.nats_url
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            nc = await nats.connect(self.nats_url, connect_timeout=1, max_reconnect_attempts=0)
            try:
                js = nc.jetstream()
                for name in [*(internal_stream(s) for s in self.env.shards), CLIENT_STREAM]:
                    try:
                        info = await js.stream_info(name)
                    except NotFoundError:
                        continue
                    counts[name] = int(info.state.messages)
            finally:
                await nc.close()
        return counts

    def table(self, figures: dict[str, ShardFigures], client_count: int) -> Table:
        table = Table(title=f"ssmd local — {self.env.name} (roll {self.generation})")
        for col in (
            "SHARD",
            "SYMBOLS",
            "REPLICAS",
            "MSG/S",
            "PUBLISHED",
            "DROPS",
            "GAPS",
            "ARCHIVED",
        ):
            table.add_column(col, justify="left" if col == "SHARD" else "right")
        for fig in figures.values():
            table.add_row(
                fig.shard,
                str(fig.symbols),
                str(fig.replicas),
                f"{fig.msg_rate:,.0f}",
                f"{fig.published:,}",
                f"{fig.drops:,}",
                f"{fig.gaps:,}",
                f"{fig.archived:,}",
            )
        table.caption = f"{CLIENT_STREAM}: {client_count:,} messages on md.{self.env.feed}.>"
        return table

    def check_children(self) -> None:
        """A runtime process that died on its own is an error the operator must see."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None and code != 0 and not self._stopped:
                tail = _tail(child.log)
                raise SsmdError(
                    f"{child.kind} {child.shard} exited with code {code}; its log "
                    f"({child.log}) ends with:\n{tail}"
                )

    # -- day roll ----------------------------------------------------------------------------

    async def roll(self) -> None:
        """End the day, apply the environment file now on disk, start the next day.

        The outcome (`roll_attempts`, `roll_error`, `roll_actions`) goes to the state file for
        the command that sent the SIGHUP. A refused roll leaves yesterday's layout running.
        """
        self.roll_attempts += 1
        old_shards = set(self.env.shards)
        old_env, old_layout, old_text = self.env, self.layout, self.env_text
        try:
            self._load()
        except SsmdError as exc:
            self.env, self.layout, self.env_text = old_env, old_layout, old_text
            self.console.print(f"[bold red]day roll refused:[/] {exc}")
            self._roll_outcome(str(exc), [])
            return
        self.console.print(f"[bold]day roll {self.generation + 1}:[/] stopping connectors")
        # on SIGTERM each connector drains its buffer and waits for its acknowledgements
        await self._stop_kind("connector", drain=False)
        assert self.nats_url
        try:
            actions = await reconcile_streams(self.nats_url, stream_specs(self.env))
        except SsmdError as exc:  # refused before any change: restart yesterday's layout
            self.env, self.layout, self.env_text = old_env, old_layout, old_text
            previous = self.workdir / "environment-before-refused-roll.yaml"
            previous.write_bytes(old_text)
            self._start_shards(list(self.env.shards), previous)
            self.console.print(f"[bold red]day roll refused:[/] {exc}")
            self._roll_outcome(str(exc), [])
            return
        for action in actions:
            self.console.print(f"  streams: {action}")
        removed = old_shards - set(self.env.shards)
        if removed:
            await self._stop_archivers(removed)
        self._start_shards(list(self.env.shards))
        self.generation += 1
        self._roll_outcome(None, actions)

    def _roll_outcome(self, error: str | None, actions: list[str]) -> None:
        self.roll_error = error
        self.roll_actions = list(actions)
        self._write_state()

    # -- stop --------------------------------------------------------------------------------

    async def _stop_kind(self, kind: str, *, drain: bool) -> None:
        if drain and kind == "connector":
            await self._wait_connectors_drained()
        victims = [c for c in self.children if c.kind == kind and c.alive]
        for child in victims:
            child.terminate()
        for child in victims:
            await asyncio.to_thread(child.wait, DRAIN_TIMEOUT)
        self.children = [c for c in self.children if c not in victims]

    async def _wait_connectors_drained(self) -> None:
        """Until the internal streams stop growing (buffers flushed, publishes acknowledged)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        last: dict[str, int] | None = None
        while time.monotonic() < deadline:
            counts = await self.stream_counts()
            if counts == last:
                return
            last = counts
            await asyncio.sleep(1.0)

    async def _stop_archivers(self, shards: set[str] | None = None) -> None:
        """Stop archivers once their consumers have nothing pending."""
        assert self.nats_url
        targets = [
            c
            for c in self.children
            if c.kind == "archiver" and c.alive and (shards is None or c.shard in shards)
        ]
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with contextlib.suppress(Exception):
            nc = await nats.connect(self.nats_url, connect_timeout=1, max_reconnect_attempts=0)
            try:
                js = nc.jetstream()
                by_shard = {c.shard: c for c in targets}
                pending = set(by_shard)
                while pending and time.monotonic() < deadline:
                    for shard in sorted(pending):
                        try:
                            info = await js.consumer_info(
                                internal_stream(shard), f"archiver-{shard}"
                            )
                        except NotFoundError:  # still starting: wait; dead: nothing to drain
                            if not by_shard[shard].alive:
                                pending.discard(shard)
                            continue
                        if info.num_pending == 0 and info.num_ack_pending == 0:
                            pending.discard(shard)
                    if pending:
                        await asyncio.sleep(0.5)
            finally:
                await nc.close()
        for child in targets:
            child.terminate()
        for child in targets:
            await asyncio.to_thread(child.wait, DRAIN_TIMEOUT)
        self.children = [c for c in self.children if c not in targets]
        await self._finalize_archives(sorted({c.shard for c in targets if c.proc.returncode}))

    async def _finalize_archives(self, shards: list[str]) -> None:
        """An archiver that did not exit cleanly (killed after DRAIN_TIMEOUT) left its open
        files as `.part`: finish them as its next start would, since a shard removed at a roll
        never starts again. Only for stopped shards: no archiver of theirs is running."""
        for shard in shards:
            recovery = [
                "run",
                "archiver",
                self.env_ref,
                shard,
                "--data-dir",
                str(self.data_dir),
                "--recover-only",
            ]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ssmd_infra",
                *recovery,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await proc.communicate()
            text = output.decode(errors="replace").strip().splitlines()
            last = text[-1] if text else ""
            if proc.returncode:
                self.console.print(
                    f"archiver {shard}: its open files stay .part: {last}", markup=False
                )
                continue
            self.console.print(
                f"archiver {shard} did not stop cleanly: {last}",
                markup=False,
            )

    async def quiesce_exchange(self) -> None:
        """Stop the simulator generating, so the rest can drain to a fixed total."""
        if self.simulator is not None and self.simulator.alive:
            url = f"http://127.0.0.1:{self.simulator.metrics_port}/_sim/rate?per_market=0"
            with contextlib.suppress(Exception):
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                    await (await http.post(url)).read()

    async def simulator_stats(self) -> dict[str, Any]:
        if self.simulator is None or not self.simulator.alive:
            return {}
        url = f"http://127.0.0.1:{self.simulator.metrics_port}/_sim/stats"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                response = await http.get(url)
                data: dict[str, Any] = await response.json()
                return data
        except Exception:  # the summary says "unknown" rather than failing the shutdown
            return {}

    async def stop(self) -> dict[str, Any]:
        """Ordered shutdown; returns the per-shard summary."""
        self._stopped = True
        await self.quiesce_exchange()
        await self._wait_connectors_drained()
        figures = await self.figures()
        await self._stop_kind("connector", drain=False)
        await self._stop_archivers()
        sim = await self.simulator_stats()
        counts = await self.stream_counts()
        for child in self.children:
            child.terminate()
        for child in self.children:
            await asyncio.to_thread(child.wait, 10.0)
        self.children.clear()
        for server in reversed(self.servers):
            server.stop()
        with contextlib.suppress(FileNotFoundError):
            state_file(self.env.name).unlink()
        archived = archive_counts(self.data_dir, self.env.feed)
        return {
            "env": self.env.name,
            "data_dir": str(self.data_dir),
            "rolls": self.generation,
            "client_stream_messages": counts.get(CLIENT_STREAM, 0),
            "simulator": sim,
            "shards": [
                {
                    "shard": f.shard,
                    "symbols": f.symbols,
                    "published": f.published,
                    "forwarded": f.forwarded,
                    "drops": f.drops,
                    "gaps": f.gaps,
                    "archived_lines": archived.get(f.shard, 0),
                }
                for f in figures.values()
            ],
        }


def archive_counts(data_dir: Path, feed: str) -> dict[str, int]:
    """Lines in the final archive files per shard: proves the archive is readable."""
    import gzip

    counts: dict[str, int] = {}
    root = data_dir / feed
    if not root.is_dir():
        return counts
    for path in root.glob("*/*/*/*.jsonl.gz"):
        shard = path.parent.parent.name
        with gzip.open(path, "rb") as handle:
            counts[shard] = counts.get(shard, 0) + sum(1 for _ in handle)
    return counts


async def _scrape(http: aiohttp.ClientSession, child: Child) -> tuple[Child, dict[str, float]]:
    totals: dict[str, float] = {}
    try:
        async with http.get(f"http://127.0.0.1:{child.metrics_port}/metrics") as response:
            text = await response.text()
    except (TimeoutError, aiohttp.ClientError):
        return child, totals
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return child, totals


def _wait_http(url: str, child: Child, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive:
            raise SsmdError(
                f"{child.kind} exited during start-up; log {child.log}:\n{_tail(child.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SsmdError(f"{child.kind} did not answer on {url} within {timeout:.0f}s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, roll: asyncio.Event
) -> Iterator[None]:
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, roll.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def run_local(
    pipeline: LocalPipeline, duration: float | None, *, live: bool, refresh: float = 1.0
) -> dict[str, Any]:
    """Start, show the live table until `duration` or a signal, stop; returns the summary."""
    loop = asyncio.get_running_loop()
    stop, roll = asyncio.Event(), asyncio.Event()
    try:
        await pipeline.start()
        deadline = None if duration is None else time.monotonic() + duration
        with (
            _signals(loop, stop, roll),
            Live(console=pipeline.console, auto_refresh=False, transient=False) as view,
        ):
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if roll.is_set():
                    roll.clear()
                    await pipeline.roll()
                pipeline.check_children()
                if live:
                    figures = await pipeline.figures()
                    counts = await pipeline.stream_counts()
                    view.update(pipeline.table(figures, counts.get(CLIENT_STREAM, 0)), refresh=True)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh)
    except BaseException:
        pipeline._stopped = True
        for child in pipeline.children:
            child.terminate()
        for child in pipeline.children:
            child.wait(10.0)
        for server in pipeline.servers:
            server.stop()
        raise
    return await pipeline.stop()
