"""NATS protocol benchmark, no sockets: `runtime/nats/protocol.Parser` against nats-py's own
parser on the same bytes, in the same run.

    .venv/bin/python bench/nats_protocol.py [--messages 200000] [--repeat 5]

Two kinds of socket reads, as the runtime gets them:
- acks: the connector's publisher reads plain JetStream PubAcks (`MSG {inbox}.{n} 1 size`,
  `{"stream":…,"seq":…}`), 40 per read (paced, 10k msg/s read every 4 ms) and 900 per read
  (backlogged);
- deliveries: the archiver reads stored Kalshi trade frames (`HMSG` with a `Nats-Msg-Id`
  header and a `$JS.ACK…` reply, 288-byte payload) in 64 KiB reads.

Baseline: `nats.protocol.parser.Parser` (nats-py 2.16), fed the same reads, dispatching
each message to a receiver that only keeps it (what nats-py does before any subscription
logic). Figures: CPU µs per message (`time.process_time`), best of `--repeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nats.protocol.parser import Parser as NatsPyParser  # noqa: E402

from runtime.nats.protocol import Parser  # noqa: E402

INBOX = b"_INBOX.5f0c1e2d3a4b5c6d."
FRAME = (
    b'{"type":"trade","sid":1,"seq":5,"msg":{"trade_id":"0b9c1e2d-3a4b-5c6d-7e8f-9a0b1c2d3e4f",'
    b'"market_ticker":"KXHIGHNY-24DEC05-B43.5","yes_price":36,"no_price":64,"yes_price_dollars":'
    b'"0.3600","no_price_dollars":"0.6400","count":5,"count_fp":"5.00","taker_side":"no",'
    b'"ts":1733400000}}'
)


def ack_reads(total: int, per_read: int) -> list[bytes]:
    reads = []
    for start in range(0, total, per_read):
        ops = []
        for n in range(start, min(start + per_read, total)):
            body = b'{"stream":"ssmd-internal-tier1","seq":%d}' % (n + 1)
            ops.append(b"MSG %s%d 1 %d\r\n%s\r\n" % (INBOX, n, len(body), body))
        reads.append(b"".join(ops))
    return reads


def delivery_reads(total: int) -> list[bytes]:
    ops = []
    for n in range(total):
        headers = b"NATS/1.0\r\nNats-Msg-Id: trade:%032x\r\n\r\n" % n
        reply = b"$JS.ACK.ssmd-internal-tier1.archiver-tier1.1.%d.%d.1733400000000000000.%d" % (
            n + 1,
            n + 1,
            total - n - 1,
        )
        ops.append(
            b"HMSG internal.tier1.kalshi.trade.KXHIGHNY-24DEC05-B43%%2E5 1 %s %d %d\r\n%s%s\r\n"
            % (reply, len(headers), len(headers) + len(FRAME), headers, FRAME)
        )
    blob = b"".join(ops)
    return [blob[i : i + 65536] for i in range(0, len(blob), 65536)]


class Keeper:
    """What nats-py's parser dispatches to: keeps each message, answers nothing."""

    def __init__(self) -> None:
        self.msgs: list[tuple[Any, ...]] = []

    async def _process_msg(self, *msg: Any) -> None:
        self.msgs.append(msg)

    async def _process_ping(self) -> None: ...

    async def _process_pong(self) -> None: ...

    async def _process_info(self, info: Any) -> None: ...

    async def _process_err(self, err: Any) -> None: ...


def ssmd(reads: list[bytes]) -> int:
    parser = Parser()
    return sum(len(parser.feed(data)) for data in reads)


def nats_py(reads: list[bytes]) -> int:
    keeper = Keeper()
    parser = NatsPyParser(keeper)

    async def run() -> None:
        for data in reads:
            await parser.parse(data)

    asyncio.run(run())
    return len(keeper.msgs)


def best(run: Callable[[list[bytes]], int], reads: list[bytes], total: int, repeat: int) -> float:
    figures = []
    for _ in range(repeat):
        start = time.process_time()
        parsed = run(reads)
        figures.append((time.process_time() - start) / total * 1e6)
        if parsed != total:
            raise SystemExit(f"{run.__name__} parsed {parsed} of {total} messages")
    return min(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    total = args.messages
    cases = [
        ("acks, 40 per read", ack_reads(total, 40)),
        ("acks, 900 per read", ack_reads(total, 900)),
        ("deliveries, 64 KiB reads", delivery_reads(total)),
    ]
    for name, reads in cases:
        ours = best(ssmd, reads, total, args.repeat)
        theirs = best(nats_py, reads, total, args.repeat)
        print(
            f"{name:26s} runtime/nats {ours:6.3f} µs/msg   nats-py {theirs:6.3f} µs/msg   "
            f"ratio {ours / theirs:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
