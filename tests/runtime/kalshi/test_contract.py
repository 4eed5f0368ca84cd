"""Kalshi's own clients accept the simulator: the contract test.

The official SDK `kalshi-python-sync` (generated from Kalshi's OpenAPI document) lists every
market page by page, the events with nested markets, a series and the error answers, all
parsed by its models, with signed requests; `pykalshi`, an independent client, reads the
WebSocket `trade` and `ticker` channels over a signed connection. Both run from
`.venv-contract/` (Python >= 3.13, built by scripts/setup.sh) against a live simulator here.

Without that virtualenv the test is skipped and says why; under `CI=true` it fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runtime.kalshi.auth import generate_key_pair
from runtime.kalshi.simulator import KalshiSimulator

REPO = Path(__file__).resolve().parents[3]
CONTRACT_PYTHON = REPO / ".venv-contract" / "bin" / "python"
CLIENTS = Path(__file__).resolve().parent / "contract" / "kalshi_clients.py"
TICKER = "KXHIGHNY-24DEC05-B43.5"
CLOSED = "KXHIGHNY-24DEC05-B44.5"  # a closed market of the same event
SYNTHETIC = 2500  # three pages of 1000 with the named market
# Facts of the v2 contract that Kalshi's SDK 3.34.0 holds the simulator to.
SDK_VERSION = "3.34.0"


def _contract_python() -> Path:
    if CONTRACT_PYTHON.exists():
        return CONTRACT_PYTHON
    reason = (
        f"{CONTRACT_PYTHON.relative_to(REPO)} is missing: Kalshi's SDK needs Python >= 3.13 "
        "and scripts/setup.sh builds that virtualenv only when it finds one "
        "(python3.13, pyenv, or SSMD_CONTRACT_PYTHON)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Kalshi SDK contract test must run under CI: {reason}")
    pytest.skip(reason)


async def _run_clients(python: Path, sim: KalshiSimulator, key: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(CLIENTS),
        sim.rest_url,
        sim.ws_url,
        "contract-key",
        str(key),
        TICKER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"Kalshi's clients failed:\n{err.decode()[-4000:]}"
    report: dict[str, Any] = json.loads(out)
    return report


async def test_kalshis_sdk_and_pykalshi_accept_the_simulator(tmp_path: Path) -> None:
    python = _contract_python()
    private, public = generate_key_pair(tmp_path)
    sim = KalshiSimulator(
        {TICKER: {"category": "climate"}, CLOSED: {"category": "climate", "status": "closed"}},
        synthetic_markets=SYNTHETIC,
        public_key_pem=public.read_bytes(),
        rate_per_market=50.0,
    )
    await sim.start()
    try:
        report = await _run_clients(python, sim, private)
    finally:
        await sim.stop()

    assert report["versions"]["kalshi-python-sync"] == SDK_VERSION
    # every market, page by page through the cursor, each parsed by the SDK's Market model
    markets = report["markets"]
    assert markets["page_sizes"] == [1000, 1000, SYNTHETIC + 1 - 2000]
    assert sorted(markets["tickers"]) == sorted(set(sim.markets) - {CLOSED})
    assert report["one_market"] == TICKER and report["filtered"] == [TICKER]
    assert report["closed"] == [CLOSED]
    assert report["one_event"] == [TICKER, CLOSED]
    # events with nested markets: every market once, in far fewer requests than markets
    events = report["events"]
    assert sorted(events["nested_tickers"]) == sorted(sim.markets)  # an open event's closed one too
    assert events["events"] == len({m.event_ticker for m in sim.markets.values()})
    series = report["series"]
    assert series["ticker"] == "KXHIGHNY" and series["category"] == "climate"
    # error answers in Kalshi's shape, parsed by the SDK's ErrorResponse model
    errors = report["errors"]
    assert errors["limit"]["status"] == errors["status"]["status"] == 400
    assert errors["limit"]["error"]["details"] == "limit"
    assert errors["status"]["error"]["details"] == "status"
    assert errors["market"]["status"] == errors["series"]["status"] == 404
    assert errors["market"]["error"]["code"] == "not_found"
    # every REST request was signed by the SDK and verified here
    assert sim.rest.verified == sim.rest_requests and sim.auth_failures == 0
    # pykalshi parsed the WebSocket channels into its own message models
    kinds = report["feed"]["kinds"]
    assert len(kinds["trade"]) >= 20 and set(kinds["trade"]) == {"TradeMessage"}
    assert len(kinds["ticker"]) >= 20 and set(kinds["ticker"]) == {"TickerMessage"}
    trade = report["feed"]["samples"]["trade"]
    assert trade["market_ticker"] == TICKER and trade["count_fp"].endswith(".00")
    ticker = report["feed"]["samples"]["ticker"]
    assert {"yes_bid_dollars", "yes_ask_dollars", "volume_fp", "open_interest_fp"} <= set(ticker)
