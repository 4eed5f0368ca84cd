"""`ssmd local up`: the whole pipeline on one machine (the README's main job)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import typer

from ssmd_infra.core.errors import SsmdError

local_app = typer.Typer(no_args_is_help=True, help="Run the pipeline locally, no cluster.")


@local_app.command("up")
def up(
    env: str = typer.Argument("kalshi-dev", help="environment name or YAML path"),
    data_dir: Path = typer.Option(Path("data/local"), "--data-dir", help="archive directory"),
    seconds: float | None = typer.Option(None, "--for", help="run this long, then stop cleanly"),
    as_json: bool = typer.Option(False, "--json", help="print the final summary as JSON"),
    nats_url: str | None = typer.Option(None, "--nats-url", help="use this NATS, don't start one"),
    nats_auth_dir: Path | None = typer.Option(
        None,
        "--nats-auth-dir",
        help="with --nats-url and nats.auth: nkeys: the seeds `ssmd nats auth ENV --out DIR` "
        "wrote for that server",
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="use this Redis, don't start one"
    ),
    rate: float = typer.Option(10.0, "--rate", help="simulator msg/s per market"),
    kalshi: str | None = typer.Option(
        None,
        "--kalshi",
        help="capture Kalshi itself instead of the simulator: demo or prod (official URLs)",
    ),
    kalshi_rest_url: str | None = typer.Option(
        None, "--kalshi-rest-url", envvar="KALSHI_REST_URL", help="Kalshi REST base URL"
    ),
    kalshi_ws_url: str | None = typer.Option(
        None, "--kalshi-ws-url", envvar="KALSHI_WS_URL", help="Kalshi WebSocket URL"
    ),
    kalshi_key_id: str | None = typer.Option(
        None, "--kalshi-key-id", envvar="KALSHI_API_KEY_ID", help="Kalshi API key id"
    ),
    kalshi_private_key: Path | None = typer.Option(
        None,
        "--kalshi-private-key",
        envvar="KALSHI_PRIVATE_KEY_PATH",
        help="PEM file of the Kalshi API key's RSA private key",
    ),
) -> None:
    """Start nats-server, redis-server, the exchange (the Kalshi simulator, or Kalshi with
    --kalshi / --kalshi-*-url), connectors and archivers, and supervise them.

    A process that dies is restarted with backoff. Shows a live table until Ctrl-C (or
    `--for SECONDS`), then stops everything it started in order (exchange, connectors,
    archivers, servers), within a bounded drain, and prints a per-shard summary. A second
    Ctrl-C skips the drain.
    """
    from ssmd_infra.local.exchange import choose_exchange  # aiohttp: only when running

    if seconds is not None and seconds <= 0:
        raise typer.BadParameter("must be positive", param_hint="--for")
    if rate < 0:
        raise typer.BadParameter("must not be negative", param_hint="--rate")
    exchange = choose_exchange(
        kalshi, kalshi_rest_url, kalshi_ws_url, kalshi_key_id, kalshi_private_key
    )
    from ssmd_infra.local.dashboard import print_summary
    from ssmd_infra.local.supervisor import LocalPipeline, PipelineInterrupted, run_local

    pipeline = LocalPipeline(
        env,
        data_dir,
        nats_url=nats_url,
        redis_url=redis_url,
        rate_per_market=rate,
        exchange=exchange,
        nats_auth_dir=nats_auth_dir,
    )
    try:
        summary = asyncio.run(run_local(pipeline, seconds, live=not as_json))
    except PipelineInterrupted as exc:
        pipeline.console.print(
            f"interrupted by {exc} during start-up: every process it had started is stopped"
        )
        raise typer.Exit(128 + exc.signum) from None
    except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C: no drain
        pipeline.console.print("stopped without draining: every process it started is stopped")
        raise typer.Exit(128 + signal.SIGINT) from None
    except OSError as exc:  # e.g. a log or state file that cannot be written
        raise SsmdError(f"local pipeline: {exc}") from None
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
