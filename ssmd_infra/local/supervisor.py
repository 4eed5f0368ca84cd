"""The local pipeline: the whole system on one machine, no cluster, supervised.

`ssmd local up [ENV]` is the second backend of the desired state (the Pulumi program is the
first): from the same environment, resolution and stream specs it starts real `nats-server`
and `redis-server` processes (unless URLs are given), the exchange (the Kalshi simulator,
unless a real exchange is named: `ssmd_infra.local.exchange`), creates the streams with the
same code the Pulumi provider uses, then one connector process per replica and one archiver
process per shard.

It then supervises them as Kubernetes would: a process that dies on its own is restarted
with backoff (`ssmd_infra.local.restarts`), nats-server on the same port and store. Every
call it makes to a child or a server has a timeout, so the run never hangs: `--for N` ends
after N seconds plus a bounded drain.

Stopping is ordered so that nothing is lost, and bounded so that it ends against a live
exchange too: the simulator stops generating (a real exchange cannot: the connectors stop
reading instead), connectors publish what they hold and wait for its acknowledgements,
archivers write what their streams hold, then the servers stop. Ctrl-C or SIGTERM at any
moment, start-up included, ends in the same `finally`, which kills the process group of
every process it started; a second Ctrl-C skips the drain.

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
import sys
import time
from collections import deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.live import Live

from ssmd_infra.adapters.files import write_local_state
from ssmd_infra.adapters.jetstream import REQUEST_TIMEOUT, connect, reconcile_streams
from ssmd_infra.adapters.redis_reports import check_redis_url
from ssmd_infra.core import local_state
from ssmd_infra.core.environment import Environment, environment_path, load_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.nats_auth import archiver_role, connector_role, nats_roles
from ssmd_infra.core.nats_url import nats_url_problem
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE, RoleSeed, read_seed_file
from ssmd_infra.core.resolution import Layout, layout_of
from ssmd_infra.core.streams import stream_specs
from ssmd_infra.core.subjects import CLIENT_STREAM, archiver_consumer, internal_stream
from ssmd_infra.core.workload import (
    RUNTIME_MODULE,
    Endpoints,
    archiver_workload,
    connector_workload,
)
from ssmd_infra.local import processes
from ssmd_infra.local.children import Child, ChildSpec
from ssmd_infra.local.credentials import (
    LocalCredentials,
    external_server_credentials,
    own_server_credentials,
    read_credentials,
)
from ssmd_infra.local.dashboard import live_view
from ssmd_infra.local.exchange import KalshiExchange, Simulator, probe_exchange
from ssmd_infra.local.figures import (
    ShardFigures,
    archive_counts,
    scrape_children,
    shard_figures,
    stream_counts,
)
from ssmd_infra.local.lock import DataDirLock
from ssmd_infra.local.restarts import Supervision
from ssmd_infra.local.servers import (
    ServerProcess,
    free_port,
    launch_nats,
    launch_redis,
    reload_nats_config,
)

DRAIN_TIMEOUT = 30.0  # the whole ordered stop, servers excepted
SETTLE_TIMEOUT = 10.0  # of it: until the streams hold what the paused simulator sent
SETTLE_INTERVAL = 0.5
STOP_TIMEOUT = 10.0  # SIGTERM → SIGKILL for one process
OBSERVE_TIMEOUT = 2.0  # one refresh of the figures
FINAL_READ_TIMEOUT = 5.0  # the summary's reads: patient, a loaded machine answers late
TICK = 1.0
EVENTS_SHOWN = 6  # the supervisor's latest events under the live table


def state_file(env_name: str) -> Path:
    return local_state.state_path(env_name)


class PipelineInterrupted(Exception):
    """Ctrl-C or SIGTERM before the pipeline was up; everything started is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RollRecord:
    """The day rolls so far, read back by `ssmd shard apply|rollback --target local`."""

    generation: int = 0
    attempts: int = 0
    error: str | None = None
    actions: list[str] = field(default_factory=list)


def _loaded(env_file: str | Path) -> tuple[Environment, Layout, bytes]:
    env = load_environment(env_file)
    return env, layout_of(env), Path(env_file).read_bytes()


class LocalPipeline:
    """Start, supervise, roll and stop the local pipeline's processes."""

    def __init__(
        self,
        env_ref: str,
        data_dir: Path,
        *,
        nats_url: str | None = None,
        redis_url: str | None = None,
        rate_per_market: float = 10.0,
        exchange: KalshiExchange | None = None,
        console: Console | None = None,
        nats_auth_dir: Path | None = None,
    ) -> None:
        self.env_ref = env_ref
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.redis_url = redis_url
        self.rate_per_market = rate_per_market
        self.exchange = exchange  # a real exchange, or the simulator's once it is up
        self.console = console or Console(stderr=True, highlight=False)
        self.env_file = environment_path(env_ref)
        # what a refused roll goes back to
        self.env, self.layout, self.env_text = _loaded(self.env_file)
        self.workdir = data_dir / ".local"
        # `nats.auth: nkeys`: the seeds (`ssmd_infra.local.credentials`); with our own server
        # under the work directory, with --nats-url those of --nats-auth-dir
        self.nats_auth_dir = nats_auth_dir
        self.credentials: LocalCredentials | None = None
        self.nats_server: ServerProcess | None = None
        self.lock = DataDirLock(data_dir)
        self.servers: list[ServerProcess] = []
        self.children: list[Child] = []
        self.supervision = Supervision()
        self.simulator: Simulator | None = None
        self.rolls = RollRecord()
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self.retired_restarts: dict[str, int] = {}  # per kind, of children stopped on purpose
        self.stream_messages: dict[str, int] = {}  # per stream, as last read
        self.client_count: int | None = None

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the URLs, lock the data dir, check the exchange, start servers, exchange,
        shards. Each
        process is registered the moment it exists, so an interruption at any await here
        leaves nothing behind (`kill_everything`)."""
        if self.nats_url is not None and (problem := nats_url_problem(self.nats_url)):
            raise SsmdError(f"--nats-url: {problem}")
        if self.nats_url is None and self.nats_auth_dir is not None:
            raise SsmdError(
                "--nats-auth-dir is for a NATS given with --nats-url; the pipeline's own "
                "nats-server gets its credentials under the data directory"
            )
        if self.nats_url is not None:  # before anything starts: refused, nothing to undo
            self.credentials = await external_server_credentials(
                self.env, self.nats_url, self.nats_auth_dir
            )
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        self.lock.acquire()
        if self.exchange is not None:
            await probe_exchange(self.exchange)
            self.console.print(f"[bold]exchange:[/] {self.exchange.ws_url}")
        if self.nats_url is None:
            self.credentials = own_server_credentials(self.env, self.workdir / "nats-auth")
            config = self.credentials.server_config if self.credentials else None
            # a restart runs the same command line, hence the same authorization
            nats_server = self._own(launch_nats(self.workdir / "nats", extra_config=config))
            await nats_server.ready()
            self.nats_server = nats_server
            self.nats_url = nats_server.url
        if self.redis_url is None:
            redis_server = self._own(launch_redis(self.workdir / "redis"))
            await redis_server.ready()
            self.redis_url = redis_server.url
        if self.exchange is None:
            await self._start_simulator()
        await reconcile_streams(self.nats_url, stream_specs(self.env), seed=self._admin)
        self._start_shards(list(self.env.shards))
        self._write_state()

    @property
    def _admin(self) -> RoleSeed | None:
        """The seed of every NATS call the supervisor makes (None without authorization)."""
        return self.credentials.admin if self.credentials is not None else None

    def _seed_file(self, role: str) -> str | None:
        """The seed file a child of `role` gets, and no other (None without authorization)."""
        return str(self.credentials.seed_file(role)) if self.credentials is not None else None

    def _own(self, server: ServerProcess) -> ServerProcess:
        self.servers.append(server)
        self.supervision.watch(server)
        return server

    def _spawn(self, spec: ChildSpec) -> Child:
        suffix = f"-{spec.shard}" if spec.shard != "-" else ""
        index = sum(1 for c in self.children if c.kind == spec.kind and c.shard == spec.shard)
        log = self.workdir / "logs" / f"{spec.kind}{suffix}-{index}.log"
        # a child gets only the seed its spec names: none inherited from this process
        inherited = {k: v for k, v in os.environ.items() if k != NKEY_SEED_VARIABLE}
        child = Child(spec, log, inherited)
        self.children.append(child)
        self.supervision.watch(child)
        return child

    async def _start_simulator(self) -> None:
        port = free_port()
        key_dir = self.workdir / "simulator-keys"
        common = ("simulator", str(self.env_file), "--port", str(port))
        rate = ("--rate", str(self.rate_per_market))
        spec = ChildSpec(
            "simulator",
            "-",
            (*common, *rate, "--key-dir", str(key_dir)),
            port,
            # a restart keeps the key pair the connectors sign with (and the port)
            restart_args=(*common, *rate, "--public-key", str(key_dir / "kalshi-public.pem")),
        )
        self.simulator = Simulator(self._spawn(spec), port, key_dir)
        await self.simulator.ready()
        self.exchange = self.simulator.exchange

    def _start_shards(self, shards: list[str], env_file_override: Path | None = None) -> None:
        assert self.nats_url and self.redis_url and self.exchange
        env_file = str(env_file_override or self.env_file)
        endpoints = Endpoints(nats_url=self.nats_url, redis_url=self.redis_url)
        credentials = self.exchange.credentials()
        for name in shards:
            shard = self.env.shards[name]
            for _ in range(shard.replicas):
                port = free_port()
                spec = connector_workload(
                    env_file,
                    name,
                    endpoints,
                    metrics_port=port,
                    kalshi_ws_url=self.exchange.ws_url,
                    kalshi_rest_url=self.exchange.rest_url,
                    nkey_seed_file=self._seed_file(connector_role(name)),
                )
                env = tuple({**spec.env, **credentials}.items())
                self._spawn(ChildSpec("connector", name, tuple(spec.args), port, env))
            if not self._of("archiver", {name}):
                port = free_port()
                spec = archiver_workload(
                    env_file,
                    name,
                    endpoints,
                    metrics_port=port,
                    data_dir=str(self.data_dir),
                    nkey_seed_file=self._seed_file(archiver_role(name)),
                )
                self._spawn(
                    ChildSpec("archiver", name, tuple(spec.args), port, tuple(spec.env.items()))
                )

    def _of(self, kind: str, shards: set[str] | None = None) -> list[Child]:
        return [
            c for c in self.children if c.kind == kind and (shards is None or c.shard in shards)
        ]

    def _write_state(self) -> None:
        assert self.nats_url and self.redis_url
        state = local_state.LocalState(
            pid=os.getpid(),
            env=self.env.name,
            env_file=str(Path(self.env_file).resolve()),
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            data_dir=str(self.data_dir.resolve()),
            nats_auth_dir=str(self.credentials.directory.resolve()) if self.credentials else None,
            generation=self.rolls.generation,
            rolled_at=time.time(),
            shards=list(self.env.shards),
            roll_attempts=self.rolls.attempts,
            roll_error=self.rolls.error,
            roll_actions=list(self.rolls.actions),
            exchange=local_state.ExchangeState(
                rest_url=self.exchange.rest_url, ws_url=self.exchange.ws_url
            )
            if self.exchange
            else None,
            children=[
                local_state.ChildState(
                    kind=c.kind,
                    shard=c.shard,
                    pid=c.proc.pid,
                    pids=list(c.pids),
                    metrics_port=c.metrics_port,
                    restarts=c.restarts.count,
                    last_exit=c.restarts.last_exit,
                    log=str(c.log.resolve()),
                )
                for c in self.children
            ],
            servers=[
                local_state.ServerState(
                    name=s.name,
                    pid=s.proc.pid,
                    pids=list(s.pids),
                    port=s.port,
                    restarts=s.restarts.count,
                    last_exit=s.restarts.last_exit,
                )
                for s in self.servers
            ],
        )
        write_local_state(state_file(self.env.name), state)

    # -- supervise and observe ---------------------------------------------------------------

    def supervise(self) -> None:
        """Restart what died on its own; tell the operator."""
        events = self.supervision.check()
        for event in events:
            self.events.append(event)
            self.console.print(f"[yellow]{event}[/]")
        if events:
            self._write_state()

    async def observe(self) -> dict[str, ShardFigures]:
        """Refresh the figures: /metrics of the children, the simulator's counts, the
        streams. Bounded: what does not answer in time keeps its last value."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._scrape(), OBSERVE_TIMEOUT)
        return self.figures()

    async def _scrape(self) -> None:
        assert self.nats_url
        names = [*(internal_stream(s) for s in self.env.shards), CLIENT_STREAM]
        counts, *_ = await asyncio.gather(
            stream_counts(self.nats_url, names, seed=self._admin),
            scrape_children(self.children),
            self.simulator.stats() if self.simulator and self.simulator.child.alive else _none(),
        )
        if counts:
            self.stream_messages = counts
            self.client_count = counts.get(CLIENT_STREAM)

    def figures(self) -> dict[str, ShardFigures]:
        return shard_figures(self.env.shards, self.layout, self.children, self.stream_messages)

    def process_restarts(self) -> dict[str, int]:
        """Restarts per kind of process, servers and simulator included."""
        out: dict[str, int] = {s.name: s.restarts.count for s in self.servers}
        if self.simulator is not None:
            out["simulator"] = 0
        out.update({"connector": 0, "archiver": 0})
        for kind, count in self.retired_restarts.items():
            out[kind] = out.get(kind, 0) + count
        for child in self.children:
            out[child.kind] = out.get(child.kind, 0) + child.restarts.count
        return out

    # -- day roll ----------------------------------------------------------------------------

    async def roll(self) -> None:
        """End the day, apply the environment file now on disk, start the next day.

        The outcome goes to the state file for the command that sent the SIGHUP. A refused
        roll leaves yesterday's layout running.
        """
        self.rolls.attempts += 1
        old_shards = set(self.env.shards)
        old = self.env, self.layout, self.env_text
        try:
            self.env, self.layout, self.env_text = _loaded(self.env_file)
        except SsmdError as exc:
            self.console.print(f"[bold red]day roll refused:[/] {exc}")
            self._roll_outcome(str(exc), [])
            return
        self.console.print(f"[bold]day roll {self.rolls.generation + 1}:[/] stopping connectors")
        # on SIGTERM each connector drains its buffer and waits for its acknowledgements
        await self._stop_children(self._of("connector"), DRAIN_TIMEOUT)
        assert self.nats_url
        try:
            self._check_roll_credentials()
            actions = await reconcile_streams(
                self.nats_url, stream_specs(self.env), seed=self._admin
            )
        except SsmdError as exc:  # refused before any change: restart yesterday's layout
            self.env, self.layout, self.env_text = old
            previous = self.workdir / "environment-before-refused-roll.yaml"
            previous.write_bytes(self.env_text)
            self._start_shards(list(self.env.shards), previous)
            self.console.print(f"[bold red]day roll refused:[/] {exc}")
            self._roll_outcome(str(exc), [])
            return
        for action in actions:
            self.console.print(f"  streams: {action}")
        removed = old_shards - set(self.env.shards)
        if removed:
            await self._stop_archivers(removed)
        try:
            await self._roll_own_credentials(old[0])
        except SsmdError as exc:  # the new shards' processes will be refused: say why
            self.console.print(f"[bold red]day roll: NATS credentials:[/] {exc}")
            self._start_shards(list(self.env.shards))
            self._roll_outcome(f"NATS credentials: {exc}", actions)
            return
        self._start_shards(list(self.env.shards))
        self.rolls.generation += 1
        self._roll_outcome(None, actions)

    def _check_roll_credentials(self) -> None:
        """Before the roll changes anything: the new environment keeps the authorization
        mode, and with an external server its auth directory holds every new role's seed
        (the operator ran `ssmd nats auth` and reloaded that server before the roll)."""
        if (self.credentials is not None) != (self.env.nats.auth == "nkeys"):
            raise SsmdError(
                f"environment {self.env.name} now has nats.auth: {self.env.nats.auth}; restart "
                f"`ssmd local up` to switch a running pipeline's NATS authorization"
            )
        if self.credentials is not None and self.nats_server is None:
            self.credentials = read_credentials(self.env, self.credentials.directory)

    async def _roll_own_credentials(self, old: Environment) -> None:
        """Our own server, once the removed shards' processes are stopped: the auth
        directory is brought to the new roles (new shards' seeds added, removed shards'
        revoked) and the server reloads the new authorization."""
        if self.credentials is None or self.nats_server is None:
            return
        credentials = own_server_credentials(self.env, self.credentials.directory)
        assert credentials is not None and credentials.server_config is not None
        known = set(nats_roles(old))
        reload_nats_config(self.nats_server, credentials.server_config)
        self.credentials = credentials
        added = [role for role in nats_roles(self.env) if role not in known]
        if added:
            await self._await_reload(read_seed_file(credentials.seed_file(added[0]), added[0]))

    async def _await_reload(self, newcomer: RoleSeed) -> None:
        """Until the reloaded server accepts a role it did not know before (bounded): the
        new shards' processes start only once their users exist."""
        assert self.nats_url
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                async with connect(self.nats_url, timeout=1.0, seed=newcomer):
                    return
            except SsmdError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    def _roll_outcome(self, error: str | None, actions: list[str]) -> None:
        self.rolls.error = error
        self.rolls.actions = list(actions)
        self._write_state()

    # -- stop --------------------------------------------------------------------------------

    async def _stop_children(self, victims: list[Child], timeout: float) -> list[Child]:
        """SIGTERM them together, SIGKILL what is left after `timeout`; no restarts."""
        self.supervision.forget(victims)
        await asyncio.gather(*(child.stop(timeout) for child in victims))
        self.children = [c for c in self.children if c not in victims]
        for child in victims:
            count = self.retired_restarts.get(child.kind, 0) + child.restarts.count
            self.retired_restarts[child.kind] = count
        return victims

    async def _settle(self, timeout: float) -> None:
        """Until the internal streams stop growing: the paused simulator's last frames are
        published and acknowledged (only used with the simulator, which can be paused)."""
        assert self.nats_url
        names = [internal_stream(s) for s in self.env.shards]
        deadline = time.monotonic() + timeout
        last: dict[str, int] | None = None
        while time.monotonic() < deadline:
            self.supervise()  # the servers stay supervised while draining
            counts = await stream_counts(self.nats_url, names, seed=self._admin)
            if counts and counts == last:
                return
            last = counts
            await asyncio.sleep(SETTLE_INTERVAL)

    async def _stop_archivers(self, shards: set[str] | None = None, timeout: float = 0.0) -> None:
        """Stop archivers once their consumers have nothing pending (within `timeout`,
        default `DRAIN_TIMEOUT`), then finish the files of any that had to be killed."""
        assert self.nats_url
        targets = [c for c in self._of("archiver", shards) if c.alive]
        deadline = time.monotonic() + (timeout or DRAIN_TIMEOUT)
        pending = {c.shard: c for c in targets}
        while pending and time.monotonic() < deadline:
            self.supervise()
            with contextlib.suppress(SsmdError, OSError, TimeoutError):
                async with connect(self.nats_url, timeout=1.0, seed=self._admin) as nc:
                    js = nc.jetstream(timeout=REQUEST_TIMEOUT)
                    for shard in sorted(pending):
                        try:
                            info = await js.consumer_info(
                                internal_stream(shard), archiver_consumer(shard)
                            )
                        except (NotFoundError, nats.errors.Error, TimeoutError):
                            # not there yet (starting) or a NATS hiccup: ask again
                            if not pending[shard].alive:  # dead: nothing will drain it
                                del pending[shard]
                            continue
                        if info.num_pending == 0 and info.num_ack_pending == 0:
                            del pending[shard]
            if pending:
                await asyncio.sleep(0.5)
        stopped = await self._stop_children(targets, STOP_TIMEOUT)
        await self._finalize_archives(sorted({c.shard for c in stopped if c.proc.returncode}))

    async def _finalize_archives(self, shards: list[str]) -> None:
        """An archiver that did not exit cleanly (killed after its timeout) left its open
        files as `.part`: finish them as its next start would, since the run (or, at a roll,
        the shard) is over. Only for stopped shards: no archiver of theirs is running."""
        for shard in shards:
            recovery = [
                "archiver",
                str(self.env_file),
                shard,
                "--data-dir",
                str(self.data_dir),
                "--recover-only",
            ]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                RUNTIME_MODULE,
                *recovery,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                output, _ = await asyncio.wait_for(proc.communicate(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                output = b"(recovery did not finish in time)"
            text = output.decode(errors="replace").strip().splitlines()
            last = text[-1] if text else ""
            if proc.returncode:
                self.console.print(
                    f"archiver {shard}: its open files stay .part: {last}", markup=False
                )
                continue
            self.console.print(f"archiver {shard} did not stop cleanly: {last}", markup=False)

    async def stop(self) -> dict[str, Any]:
        """Ordered, bounded shutdown; returns the per-shard summary."""
        started = time.monotonic()

        def left() -> float:
            return max(1.0, DRAIN_TIMEOUT - (time.monotonic() - started))

        self.supervision.forget(self.children)  # from now on only the servers come back
        if self.simulator is not None:
            self.console.print("stopping: the simulator pauses, the streams settle")
            await self.simulator.pause()
            await self._settle(min(SETTLE_TIMEOUT, left()))
        figures = await self.observe()  # the connectors' counters, before they go
        self.console.print("stopping: connectors publish what they hold")
        await self._stop_children(self._of("connector"), min(STOP_TIMEOUT, left()))
        assert self.nats_url
        published = await stream_counts(
            self.nats_url,
            [internal_stream(s) for s in self.env.shards],
            FINAL_READ_TIMEOUT,
            seed=self._admin,
        )
        for name, fig in figures.items():  # what the stopped connectors had published in all
            fig.published = published.get(internal_stream(name), fig.published)
        self.console.print("stopping: archivers write what their streams hold")
        await self._stop_archivers(None, left())
        sim = None
        if self.simulator is not None:
            await self.simulator.stats()
            await self._stop_children([self.simulator.child], STOP_TIMEOUT)
            sim = self.simulator.totals()
        counts = await stream_counts(
            self.nats_url, [CLIENT_STREAM], FINAL_READ_TIMEOUT, seed=self._admin
        )
        restarts = self.process_restarts()
        self.console.print("stopping: servers")
        await self._stop_servers()
        archived = archive_counts(self.data_dir, self.env.feed)
        return {
            "env": self.env.name,
            "data_dir": str(self.data_dir),
            "rolls": self.rolls.generation,
            "client_stream_messages": counts.get(CLIENT_STREAM, 0),
            "simulator": sim,
            "process_restarts": restarts,
            "shards": [
                {
                    "shard": f.shard,
                    "symbols": f.symbols,
                    "published": f.published,
                    "forwarded": f.forwarded,
                    "drops": f.drops,
                    "gaps": f.gaps,
                    "duplicates": f.duplicates,
                    "reconnects": f.reconnects,
                    "nats_reconnects": f.nats_reconnects,
                    "restarts": f.restarts,
                    "archived_lines": archived.get(f.shard, 0),
                }
                for f in figures.values()
            ],
        }

    async def _stop_servers(self) -> None:
        self.supervision.forget(self.servers)
        for server in reversed(self.servers):
            await server.stop_gracefully(STOP_TIMEOUT)

    def kill_everything(self) -> None:
        """The last word, in `finally`: no process this pipeline started survives it, whatever
        happened before (an error, a signal during start-up, a second Ctrl-C)."""
        self.supervision.forget([*self.children, *self.servers])
        processes.stop_all_blocking(
            [c.proc for c in self.children] + [s.proc for s in self.servers], STOP_TIMEOUT
        )
        self.children.clear()
        with contextlib.suppress(OSError):
            state_file(self.env.name).unlink(missing_ok=True)
        self.lock.release()


async def _none() -> None:
    return None


@contextlib.contextmanager
def _signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, roll: asyncio.Event
) -> Iterator[list[int]]:
    """SIGINT/SIGTERM set `stop` (a second one cancels the running task: no more draining),
    SIGHUP sets `roll`. Yields the stop signals received."""
    received: list[int] = []
    main = asyncio.current_task()

    def on_stop(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            stop.set()
        elif main is not None:
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, roll.set)
    try:
        yield received
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _unless_stopped(step: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `step`; False (and `step` cancelled) when `stop` is set first."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        return False
    task.result()  # its error, if any
    return True


async def run_local(
    pipeline: LocalPipeline, duration: float | None, *, live: bool, refresh: float = TICK
) -> dict[str, Any]:
    """Start, supervise and show the live table until `duration` or a signal, stop; returns
    the summary. `PipelineInterrupted` when a signal came before the pipeline was up."""
    loop = asyncio.get_running_loop()
    stop, roll = asyncio.Event(), asyncio.Event()
    with _signals(loop, stop, roll) as received:  # also while cleaning up
        try:
            if not await _unless_stopped(pipeline.start(), stop):
                raise PipelineInterrupted(received[0])
            deadline = None if duration is None else loop.time() + duration
            view = (
                Live(console=pipeline.console, auto_refresh=False, transient=False)
                if live
                else None
            )
            with view or contextlib.nullcontext():
                while not stop.is_set():
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if roll.is_set():
                        roll.clear()
                        await pipeline.roll()
                    pipeline.supervise()
                    figures = await pipeline.observe()
                    if view is not None:
                        view.update(
                            live_view(
                                pipeline.env.name,
                                pipeline.rolls.generation,
                                figures,
                                pipeline.client_count,
                                pipeline.env.feed,
                                pipeline.process_restarts(),
                                pipeline.events,
                            ),
                            refresh=True,
                        )
                    wait = refresh if deadline is None else min(refresh, deadline - loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(0.0, wait))
            if view is not None:
                pipeline.console.print()  # the table stays; what follows goes under it
            return await pipeline.stop()
        finally:
            pipeline.kill_everything()
