"""`ssmd run connector ENV SHARD`: the process the Deployments and the local supervisor start
(their command lines come from `ssmd_infra.core.workload`)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import typer

from runtime.connector.service import Connector
from runtime.connector.settings import READ_INTERVAL, ConnectorSettings
from runtime.kalshi.auth import KalshiSigner
from runtime.kalshi.client import KalshiAuthError
from runtime.nats.credentials import role_credentials
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.nats_auth import connector_role
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE
from ssmd_infra.core.workload import SHARDS_FILE_VARIABLE


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
    settings = ConnectorSettings(
        nats_url=nats_url,
        kalshi_ws_url=kalshi_ws_url,
        kalshi_rest_url=kalshi_rest_url,
        redis_url=redis_url or None,
        metrics_port=metrics_port,
        member=member or None,
        read_interval=read_interval,
        shards_file=shards_file,
        nats_credentials=credentials,
    )

    async def main() -> None:  # built inside the loop: the publisher binds to it
        await run_connector(Connector(environment, shard, settings, signer=signer))

    try:
        import uvloop

        uvloop.run(main())
    except KalshiAuthError as exc:
        raise SsmdError(
            f"Kalshi refused the credentials (KALSHI_API_KEY_ID="
            f"{os.environ.get('KALSHI_API_KEY_ID', '')!r}): {exc}"
        ) from None
