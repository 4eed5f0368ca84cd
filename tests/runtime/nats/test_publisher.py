"""Acknowledged publishing into JetStream against a real nats-server: what is acknowledged
is stored, exactly once per `Nats-Msg-Id`, the window bounds what is outstanding, refusals
are retried then counted, and a server restart loses nothing that was in the window."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.local.servers import start_nats


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc: Client = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


async def make_stream(js: JetStreamContext) -> tuple[str, str]:
    """A fresh stream with its own subject prefix: (stream name, subject prefix)."""
    tag = uuid.uuid4().hex[:10]
    await js.add_stream(name=f"pub-{tag}", subjects=[f"pub{tag}.>"], duplicate_window=120.0)
    return f"pub-{tag}", f"pub{tag}"


async def publish_all(pub: JetStreamPublisher, items: list[tuple[bytes, bytes, bytes]]) -> None:
    for subject, payload, msg_id in items:
        while pub.room <= 0:
            await pub.wait_for_room()
        pub.publish(subject, payload, msg_id)


async def stored(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def test_acknowledged_messages_are_stored_with_their_subject_and_msg_id(
    nats_url: str, js: JetStreamContext
) -> None:
    stream, prefix = await make_stream(js)
    pub = JetStreamPublisher(nats_url)
    await pub.start()
    assert await pub.wait_connected(5)
    pub.publish(f"{prefix}.trade.KXHIGHNY-24DEC05-B43%2E5".encode(), b'{"type":"trade"}', b"t-1")
    pub.publish(f"{prefix}.ticker.BTCUSD".encode(), b'{"type":"ticker"}', b"k-1")
    assert await pub.drain(5)
    await pub.close()
    assert pub.stats.acked == 2 and pub.stats.failures == 0
    first = await js.get_msg(stream, 1)
    second = await js.get_msg(stream, 2)
    assert first.subject == f"{prefix}.trade.KXHIGHNY-24DEC05-B43%2E5"
    assert first.data == b'{"type":"trade"}'
    assert first.headers is not None and first.headers["Nats-Msg-Id"] == "t-1"
    assert second.subject == f"{prefix}.ticker.BTCUSD"
    assert second.headers is not None and second.headers["Nats-Msg-Id"] == "k-1"


async def test_a_repeated_msg_id_is_stored_once_and_acknowledged_as_a_duplicate(
    nats_url: str, js: JetStreamContext
) -> None:
    stream, prefix = await make_stream(js)
    pub = JetStreamPublisher(nats_url)
    await pub.start()
    for _ in range(3):
        pub.publish(f"{prefix}.trade.X".encode(), b"same", b"dup-1")
    assert await pub.drain(5)
    await pub.close()
    assert await stored(js, stream) == 1
    assert pub.stats.acked == 3
    assert pub.stats.duplicates == 2


async def test_under_load_every_published_message_is_stored_and_the_window_holds(
    nats_url: str, js: JetStreamContext
) -> None:
    stream, prefix = await make_stream(js)
    pub = JetStreamPublisher(nats_url, max_inflight=512)
    await pub.start()
    assert await pub.wait_connected(5)
    total = 50_000
    payload = b"x" * 288
    subjects = [f"{prefix}.trade.S{i}".encode() for i in range(20)]
    peak = 0
    for i in range(total):
        while pub.room <= 0:
            await pub.wait_for_room()
        pub.publish(subjects[i % 20], payload, b"m%d" % i)
        peak = max(peak, pub.inflight)
    assert await pub.drain(30)
    await pub.close()
    assert peak <= 512
    assert pub.stats.submitted == pub.stats.acked == total
    assert pub.stats.given_up == 0
    assert await stored(js, stream) == total


async def test_a_subject_no_stream_stores_is_retried_then_given_up_and_counted(
    nats_url: str,
) -> None:
    pub = JetStreamPublisher(nats_url, ack_timeout=0.2, max_attempts=2)
    await pub.start()
    assert await pub.wait_connected(5)
    pub.publish(f"nostream{uuid.uuid4().hex}.x".encode(), b"lost", b"n-1")
    assert await pub.drain(5)
    await pub.close()
    assert pub.stats.acked == 0
    assert pub.stats.failures >= 2  # the refusal, then the retry's refusal
    assert pub.stats.given_up == 1
    assert pub.last_error is not None and "503" in pub.last_error


@pytest.mark.servers
async def test_a_nats_restart_loses_nothing_that_was_in_the_window(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="restart", subjects=["restart.>"], duplicate_window=120.0)
        await nc.close()
        pub = JetStreamPublisher(server.url, max_inflight=300, reconnect_wait=0.05)
        await pub.start()
        assert await pub.wait_connected(5)
        await publish_all(pub, [(b"restart.a", b"before", b"b%d" % i) for i in range(100)])
        assert await pub.drain(5)
        server.kill()
        while pub.connected:
            await asyncio.sleep(0.01)
        # while NATS is away the window fills and then refuses more: memory stays bounded
        for i in range(300):
            pub.publish(b"restart.a", b"during", b"d%d" % i)
        assert pub.room == 0 and pub.inflight == 300
        server.restart()
        assert await pub.drain(15)
        await pub.close()
        assert pub.stats.reconnects == 1
        assert pub.stats.acked == 400 and pub.stats.given_up == 0
        nc = await nats.connect(server.url)
        assert int((await nc.jetstream().stream_info("restart")).state.messages) == 400
        await nc.close()
    finally:
        server.stop()


def test_the_publisher_works_on_uvloop_as_the_connector_runs_it(nats_url: str) -> None:
    import uvloop

    async def main() -> tuple[int, int]:
        nc: Client = await nats.connect(nats_url)
        js = nc.jetstream()
        stream, prefix = await make_stream(js)
        pub = JetStreamPublisher(nats_url)
        await pub.start()
        await publish_all(pub, [(f"{prefix}.t.X".encode(), b"p", b"u%d" % i) for i in range(500)])
        assert await pub.drain(10)
        await pub.close()
        count = await stored(js, stream)
        await nc.close()
        return pub.stats.acked, count

    assert uvloop.run(main()) == (500, 500)


async def test_a_message_over_the_servers_max_payload_is_refused_without_losing_the_connection(
    nats_url: str, js: JetStreamContext
) -> None:
    stream, prefix = await make_stream(js)
    pub = JetStreamPublisher(nats_url)
    await pub.start()
    assert await pub.wait_connected(5)
    pub.publish(f"{prefix}.big".encode(), b"x" * (1 << 20), b"big-1")
    pub.publish(f"{prefix}.small".encode(), b"ok", b"small-1")
    assert await pub.drain(5)
    await pub.close()
    assert pub.stats.given_up == 1 and pub.stats.acked == 1 and pub.stats.reconnects == 0
    assert await stored(js, stream) == 1
