"""`ssmd run simulator ENV`: a simulated Kalshi exchange for local mode and benchmarks.

Markets are the environment's manual symbols, their attributes giving category, series
and event, plus optional synthetic markets. Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from pathlib import Path

import typer

from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.errors import SsmdError

from ..auth import generate_key_pair
from .exchange import KalshiSimulator


async def _serve(simulator: KalshiSimulator, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await simulator.start()
    print(
        f"kalshi simulator: {len(simulator.markets)} markets, "
        f"{simulator.rate_per_market:g} msg/s per subscribed market, seed {seed}",
        flush=True,
    )
    print(f"ws_url: {simulator.ws_url}", flush=True)
    print(f"rest_url: {simulator.rest_url}", flush=True)
    print(f"control: http://{simulator.host}:{simulator.port}/_sim/stats", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()
        print("kalshi simulator stopped", flush=True)


def simulator_command(
    env: str = typer.Argument(..., help="environment name or YAML path"),
    port: int = typer.Option(0, "--port", help="listen port (0: any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="listen address"),
    rate: float = typer.Option(10.0, "--rate", help="messages per second per subscribed market"),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="PEM public key; signatures are checked against it"
    ),
    key_dir: Path | None = typer.Option(
        None,
        "--key-dir",
        help="generate a fresh key pair here (kalshi-private.pem for the clients, mode 0600) "
        "and check signatures against its public half; instead of --public-key",
    ),
    synthetic: int = typer.Option(0, "--synthetic", help="extra synthetic markets"),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="random seed for generated data (default: a fresh one per run, so that trade "
        "ids never repeat those of an earlier run within the streams' dedup window)",
    ),
) -> None:
    """Serve a simulated Kalshi WebSocket v2 + REST API for ENV's symbols."""
    environment = load_environment(env)
    pem: bytes | None = None
    if public_key is not None and key_dir is not None:
        raise SsmdError("give --public-key or --key-dir, not both")
    if key_dir is not None:
        try:
            _, public_key = generate_key_pair(key_dir)
        except OSError as exc:
            raise SsmdError(f"cannot write a key pair into --key-dir {key_dir}: {exc}") from None
    if public_key is not None:
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            raise SsmdError(f"cannot read --public-key {public_key}: {exc.strerror}") from None
    if seed is None:
        seed = secrets.randbits(63)
    simulator = KalshiSimulator(
        environment.symbols,
        rate_per_market=rate,
        public_key_pem=pem,
        host=host,
        port=port,
        seed=seed,
        synthetic_markets=synthetic,
    )
    asyncio.run(_serve(simulator, seed))
