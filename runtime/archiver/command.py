"""`ssmd run archiver ENV SHARD`: the process the StatefulSets and the local supervisor start
(their command lines come from `ssmd_infra.core.workload`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import typer

from runtime.archiver.recovery import finalize_shard
from runtime.archiver.service import Archiver
from runtime.nats.credentials import role_credentials
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.nats_auth import archiver_role
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE
from ssmd_infra.core.subjects import internal_stream

log = logging.getLogger("ssmd.archiver")


async def run_archiver(archiver: Archiver, early_signals: Sequence[int] = ()) -> None:
    """Run with SIGTERM/SIGINT wired to a clean stop (finish the batch, fsync, rename, exit 0).
    `early_signals`: those received before the loop could take them (see `archiver_command`),
    read once the loop's handlers are in place, so none falls between the two."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, archiver.stop)
    if early_signals:
        log.info("stop requested during start-up (signal %d)", early_signals[0])
        archiver.stop()
    try:
        await archiver.run()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # the stop is under way: nothing more to do


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def archiver_command(
    env: str = typer.Argument(..., help="Environment name or path to its YAML file."),
    shard: str = typer.Argument(..., help="The shard whose stream this archiver drains."),
    data_dir: Path = typer.Option(
        Path("data/archive"), "--data-dir", envvar="SSMD_DATA_DIR", help="Archive root."
    ),
    nats_url: str = typer.Option("nats://127.0.0.1:4222", "--nats-url", envvar="NATS_URL"),
    redis_url: str | None = typer.Option(
        None, "--redis-url", envvar="REDIS_URL", help="Reports; optional."
    ),
    metrics_port: int = typer.Option(
        9101, "--metrics-port", envvar="SSMD_METRICS_PORT", help="/metrics and /healthz."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Messages per fetch (default: the environment's archiver.batch_size).",
    ),
    rotation: float | None = typer.Option(
        None, "--rotation", help="Seconds before a file is closed (default: archiver.rotation)."
    ),
    log_level: str = typer.Option("INFO", "--log-level"),
    recover_only: bool = typer.Option(
        False,
        "--recover-only",
        help="Only finish what earlier archivers of SHARD left under --data-dir (.part files "
        "and manifests), without NATS, then exit. Never while an archiver of SHARD runs.",
    ),
    nats_nkey_seed: Path | None = typer.Option(
        None,
        "--nats-nkey-seed",
        envvar=NKEY_SEED_VARIABLE,
        help="The seed file of role archiver-SHARD (required under nats.auth: nkeys).",
    ),
) -> None:
    """Drain one shard's stream into gzip JSONL files (at least once, fsync before ack)."""
    # from the first moment: a SIGTERM during start-up is a clean stop, not a death by signal
    early_signals: list[int] = []
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: early_signals.append(signum))
    from ssmd_infra.core.environment import load_environment

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    if batch_size is not None and not 1 <= batch_size <= 100_000:
        raise ConfigError(f"--batch-size {batch_size}: use 1 to 100000")
    if rotation is not None and rotation <= 0:
        raise ConfigError(f"--rotation {rotation}: must be positive")
    if not 0 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port {metrics_port}: not a port")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("archiver of shard %s starting (pid %d)", shard, os.getpid())
    environment = load_environment(env)
    environment.shard(shard)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsmdError(f"cannot create --data-dir {data_dir}: {exc.strerror}") from None
    if recover_only:
        report = finalize_shard(data_dir, shard, internal_stream(shard))
        print(
            f"archiver {shard}: {report.parts} open file(s) finalised "
            f"({report.lines} lines accounted for)",
            flush=True,
        )
        return
    credentials = role_credentials(environment, archiver_role(shard), nats_nkey_seed)

    async def main() -> None:  # built inside the loop: the pull client binds to it
        archiver = Archiver(
            environment,
            shard,
            nats_url=nats_url,
            data_dir=data_dir,
            redis_url=redis_url or None,
            metrics_port=metrics_port,
            batch_size=batch_size,
            rotation=rotation,
            nats_credentials=credentials,
        )
        await run_archiver(archiver, early_signals)

    import uvloop

    uvloop.run(main())
