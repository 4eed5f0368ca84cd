"""The runtime's NATS connection against real nats-servers configured with TLS, passwords,
NKEYs and permissions: the publisher gets its messages stored through each of them, and
every way of being refused is a clear error that names the server and never a secret."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nkeys
import pytest
from tls_certs import TlsFiles, make_tls_files
from waiting import eventually

from runtime.nats.connection import NatsRefused
from runtime.nats.consumer import PullClient
from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.local.servers import ServerProcess, start_nats

pytestmark = pytest.mark.servers

PASSWORD = "s3cret-pw"


def tls_block(tls: TlsFiles) -> str:
    return f'tls {{\n  cert_file: "{tls.cert}"\n  key_file: "{tls.key}"\n}}\n'


def users_block(*users: str) -> str:
    return "authorization {\n  users = [\n" + "".join(f"    {u}\n" for u in users) + "  ]\n}\n"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_server(tmp_path: Path, tls: TlsFiles) -> Iterator[ServerProcess]:
    """TLS required, and a user with a password."""
    config = tls_block(tls) + users_block(f'{{user: alice, password: "{PASSWORD}"}}')
    server = start_nats(tmp_path / "nats-tls", extra_config=config)
    yield server
    server.stop()


async def stored_over(server_url: str, stream: str, **options: object) -> int:
    """How many messages `stream` holds, read with nats-py (an independent client)."""
    nc = await nats.connect(server_url, **options)  # type: ignore[arg-type]
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def add_stream(server_url: str, subjects: str, **options: object) -> str:
    nc = await nats.connect(server_url, **options)  # type: ignore[arg-type]
    try:
        name = f"conn-{uuid.uuid4().hex[:8]}"
        await nc.jetstream().add_stream(name=name, subjects=[subjects], duplicate_window=60.0)
        return name
    finally:
        await nc.close()


async def publish_and_drain(pub: JetStreamPublisher, subject: bytes, count: int) -> None:
    await pub.start()
    try:
        assert await pub.wait_connected(10)
        for i in range(count):
            while pub.room <= 0:
                await pub.wait_for_room()
            pub.publish(subject, b'{"n":%d}' % i, b"id-%d" % i)
        assert await pub.drain(10)
    finally:
        await pub.close()


async def test_the_publisher_publishes_over_tls_with_user_and_password(
    tls_server: ServerProcess, tls: TlsFiles
) -> None:
    url = f"tls://alice:{PASSWORD}@127.0.0.1:{tls_server.port}"
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    stream = await add_stream(url, "secure.>", tls=client_tls)
    pub = JetStreamPublisher(url, tls_ca_file=tls.ca, name="test-tls")
    await publish_and_drain(pub, b"secure.trade.X", 500)
    assert pub.stats.acked == 500 and pub.stats.given_up == 0 and pub.stats.failures == 0
    assert await stored_over(url, stream, tls=client_tls) == 500


async def test_a_nats_url_is_upgraded_to_tls_when_the_server_requires_it(
    tls_server: ServerProcess, tls: TlsFiles
) -> None:
    tls_url = f"tls://alice:{PASSWORD}@127.0.0.1:{tls_server.port}"
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    stream = await add_stream(tls_url, "upgraded.>", tls=client_tls)
    plain_url = f"nats://alice:{PASSWORD}@127.0.0.1:{tls_server.port}"
    pub = JetStreamPublisher(plain_url, tls=client_tls, name="test-tls-upgrade")
    await publish_and_drain(pub, b"upgraded.x", 50)
    assert pub.stats.acked == 50
    assert await stored_over(tls_url, stream, tls=client_tls) == 50


async def test_the_pull_consumer_reads_over_tls_with_user_and_password(
    tls_server: ServerProcess, tls: TlsFiles
) -> None:
    url = f"tls://alice:{PASSWORD}@127.0.0.1:{tls_server.port}"
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    stream = await add_stream(url, "pulled.>", tls=client_tls)
    await publish_and_drain(JetStreamPublisher(url, tls_ca_file=tls.ca), b"pulled.a", 20)
    nc = await nats.connect(url, tls=client_tls)
    await nc.jetstream().add_consumer(stream, durable_name="reader", ack_policy="all")
    await nc.close()
    pull = PullClient(url, stream, "reader", tls_ca_file=tls.ca)
    await pull.start()
    try:
        assert await pull.wait_connected(10)
        assert pull.request(batch=100, max_bytes=1 << 20, expires=1.0)
        await eventually(lambda: len(pull.received) == 20, "20 deliveries over TLS")
        deliveries = pull.take()
        assert [payload for _s, _r, _h, payload in deliveries] == [
            b'{"n":%d}' % i for i in range(20)
        ]
        assert all(h.startswith(b"NATS/1.0\r\nNats-Msg-Id: id-") for _s, _r, h, _p in deliveries)
        assert pull.ack(deliveries[-1][1])
        assert await pull.flush()
    finally:
        await pull.close()
    nc = await nats.connect(url, tls=client_tls)
    info = await nc.jetstream().consumer_info(stream, "reader")
    await nc.close()
    assert info.ack_floor.stream_seq == 20


async def test_a_wrong_password_is_a_refusal_naming_the_server_not_the_password(
    tls_server: ServerProcess, tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"tls://alice:wrong-{PASSWORD}@127.0.0.1:{tls_server.port}"
    pub = JetStreamPublisher(url, tls_ca_file=tls.ca, reconnect_wait=0.05)
    await pub.start()
    try:
        with pytest.raises(NatsRefused) as refused:
            await pub.wait_connected(10)
    finally:
        await pub.close()
    message = str(refused.value)
    assert message.startswith(f"tls://127.0.0.1:{tls_server.port}: ")
    assert "refused the credentials (user 'alice' with a password)" in message
    assert "Authorization Violation" in message
    assert PASSWORD not in message and PASSWORD not in caplog.text
    assert pub.last_error == message and not pub.connected


async def test_a_tls_url_against_a_server_without_tls_is_refused(nats_url: str) -> None:
    url = nats_url.replace("nats://", "tls://")
    pub = JetStreamPublisher(url, reconnect_wait=0.05)
    await pub.start()
    try:
        with pytest.raises(NatsRefused, match=r"asks for TLS .* does not offer TLS"):
            await pub.wait_connected(10)
    finally:
        await pub.close()
    assert str(pub.last_error).startswith(url + ": ")


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_server: ServerProcess, tmp_path: Path
) -> None:
    stranger = make_tls_files(tmp_path / "other-ca", ca_name="somebody else")
    url = f"tls://alice:{PASSWORD}@127.0.0.1:{tls_server.port}"
    pub = JetStreamPublisher(url, tls_ca_file=stranger.ca, reconnect_wait=0.05)
    await pub.start()
    try:
        with pytest.raises(NatsRefused, match=r"TLS handshake failed: .*CERTIFICATE_VERIFY_FAILED"):
            await pub.wait_connected(10)
    finally:
        await pub.close()


def user_seed(path: Path) -> str:
    """Write a fresh NKEY user seed to `path`; its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed + b"\n")
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


async def test_the_publisher_authenticates_with_an_nkey_seed_and_a_stranger_is_refused(
    tmp_path: Path,
) -> None:
    seed_file = tmp_path / "connector.nk"
    public = user_seed(seed_file)
    admin_seed = tmp_path / "admin.nk"
    admin_public = user_seed(admin_seed)
    config = users_block(f"{{nkey: {public}}}", f"{{nkey: {admin_public}}}")
    server = start_nats(tmp_path / "nats-nkey", extra_config=config)
    try:
        admin_options = {"nkeys_seed": str(admin_seed)}
        stream = await add_stream(server.url, "signed.>", **admin_options)
        pub = JetStreamPublisher(server.url, nkey_seed_file=seed_file)
        await publish_and_drain(pub, b"signed.x", 100)
        assert pub.stats.acked == 100
        assert await stored_over(server.url, stream, **admin_options) == 100

        stranger_file = tmp_path / "stranger.nk"
        stranger = user_seed(stranger_file)
        refused = JetStreamPublisher(server.url, nkey_seed_file=stranger_file)
        await refused.start()
        try:
            with pytest.raises(NatsRefused, match=f"refused the credentials \\(NKEY {stranger}\\)"):
                await refused.wait_connected(10)
        finally:
            await refused.close()
    finally:
        server.stop()


def test_a_missing_or_bad_nkey_seed_file_is_a_configuration_error(tmp_path: Path) -> None:
    async def build(path: Path) -> None:
        JetStreamPublisher("nats://127.0.0.1:4222", nkey_seed_file=path)

    missing = tmp_path / "missing.nk"
    with pytest.raises(ConfigError, match=re.escape(f"NKEY seed file {missing}: cannot read it")):
        asyncio.run(build(missing))
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("SUTHISISNOTASEED\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"NKEY seed file {garbage}: not a valid NKEY user seed")
    ):
        asyncio.run(build(garbage))
    empty = tmp_path / "empty.nk"
    empty.write_text("# no seed here\n")
    with pytest.raises(ConfigError, match=r"expected exactly one user seed .* found 0"):
        asyncio.run(build(empty))


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    async def build() -> None:
        JetStreamPublisher("tls://127.0.0.1:4222", tls_ca_file=tmp_path / "nope.pem")

    with pytest.raises(ConfigError, match=r"NATS TLS CA file .*nope.pem"):
        asyncio.run(build())


async def test_a_permissions_violation_is_counted_and_logged_once_per_subject_and_the_connection_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = users_block(
        '{user: admin, password: "adm"}',
        '{user: limited, password: "lim", permissions: {publish: {allow: ["allowed.>"]}}}',
    )
    server = start_nats(tmp_path / "nats-perms", extra_config=config)
    try:
        admin = f"nats://admin:adm@127.0.0.1:{server.port}"
        stream = await add_stream(admin, "allowed.>")
        await add_stream(admin, "denied.>")
        url = f"nats://limited:lim@127.0.0.1:{server.port}"
        pub = JetStreamPublisher(url, ack_timeout=0.3, max_attempts=2)
        await pub.start()
        assert await pub.wait_connected(10)
        with caplog.at_level(logging.ERROR, logger="ssmd.nats"):
            for i in range(3):
                pub.publish(b"denied.x", b"no", b"d-%d" % i)
            pub.publish(b"denied.y", b"no", b"e-1")
            pub.publish(b"allowed.x", b"yes", b"a-1")
            assert await pub.drain(10)
        await pub.close()
        stats = pub.connection.stats
        # 3 + 1 messages, each sent twice (max_attempts), all denied; the connection stayed
        assert stats.permission_violations == 8
        assert stats.connects == 1 and pub.stats.reconnects == 0
        assert pub.stats.acked == 1 and pub.stats.given_up == 4
        denials = [r.getMessage() for r in caplog.records if "denied Publish" in r.getMessage()]
        assert len(denials) == 2
        assert any("to denied.x" in d for d in denials) and any("to denied.y" in d for d in denials)
        assert await stored_over(admin, stream) == 1
    finally:
        server.stop()


async def test_a_server_that_stops_answering_is_left_and_rejoined_without_loss(
    tmp_path: Path,
) -> None:
    server = start_nats(tmp_path / "nats-frozen")
    try:
        stream = await add_stream(server.url, "frozen.>")
        pub = JetStreamPublisher(server.url, ping_interval=0.2, reconnect_wait=0.05)
        await pub.start()
        assert await pub.wait_connected(10)
        for i in range(50):
            pub.publish(b"frozen.a", b"before", b"b-%d" % i)
        assert await pub.drain(10)
        os.kill(server.proc.pid, signal.SIGSTOP)  # alive, but silent: only pings can tell
        try:
            await eventually(lambda: not pub.connected, "the unanswered pings drop it")
            for i in range(50):
                pub.publish(b"frozen.a", b"during", b"d-%d" % i)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await pub.drain(20)
        await pub.close()
        assert pub.stats.reconnects >= 1
        assert pub.stats.acked == 100 and pub.stats.given_up == 0
        assert await stored_over(server.url, stream) == 100
    finally:
        server.stop()


async def test_a_token_in_the_url_authenticates(tmp_path: Path) -> None:
    server = start_nats(
        tmp_path / "nats-token", extra_config='authorization {\n  token: "t0k3n"\n}\n'
    )
    try:
        url = f"nats://t0k3n@127.0.0.1:{server.port}"
        stream = await add_stream(url, "tokened.>")
        pub = JetStreamPublisher(url)
        await publish_and_drain(pub, b"tokened.x", 30)
        assert pub.stats.acked == 30
        assert await stored_over(url, stream) == 30
    finally:
        server.stop()


async def test_the_servers_of_a_list_are_tried_in_turn(nats_url: str) -> None:
    from ssmd_infra.local.servers import free_port

    stream = await add_stream(nats_url, "listed.>")
    down = f"nats://127.0.0.1:{free_port()}"
    pub = JetStreamPublisher(f"{down},{nats_url}", reconnect_wait=0.05)
    await publish_and_drain(pub, b"listed.x", 30)
    assert str(pub.connection.last_error).startswith(down + ": ")  # tried first, refused
    assert pub.stats.acked == 30
    assert await stored_over(nats_url, stream) == 30
