"""Kalshi request signing and the sans-I/O WebSocket protocol, without any socket."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from runtime.kalshi.auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    KalshiSigner,
    generate_key_pair,
    load_public_key,
    verify_headers,
)
from runtime.kalshi.protocol import (
    GAP_TYPE,
    Acknowledged,
    ErrorReply,
    Frame,
    KalshiProtocol,
    Malformed,
    Subscribed,
    Unknown,
    gap_record,
    message_id,
    new_epoch,
    parse_origin_id,
)
from ssmd_infra.core.errors import SsmdError

WS_PATH = "/trade-api/ws/v2"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_key_pair(tmp_path_factory.mktemp("keys"))


# -- signing ------------------------------------------------------------------------------


def test_signed_headers_verify_against_the_matching_public_key(keys: tuple[Path, Path]) -> None:
    private, public = keys
    signer = KalshiSigner.from_files("key-1", private)
    headers = signer.headers("GET", WS_PATH, now_ms=1_700_000_000_000)
    assert headers["KALSHI-ACCESS-KEY"] == "key-1"
    assert headers[TIMESTAMP_HEADER] == "1700000000000"
    assert verify_headers(
        load_public_key(public.read_bytes()),
        headers,
        "GET",
        WS_PATH,
        max_skew_s=5,
        now_ms=1_700_000_001_000,
    )


def test_signature_is_rsa_pss_sha256_over_timestamp_method_path(keys: tuple[Path, Path]) -> None:
    private, public = keys
    headers = KalshiSigner.from_files("k", private).headers("get", WS_PATH + "?x=1", now_ms=42)
    raw = base64.b64decode(headers[SIGNATURE_HEADER])
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    # the method is upper-cased and the query string is not signed
    load_public_key(public.read_bytes()).verify(
        raw, b"42GET" + WS_PATH.encode(), pss, hashes.SHA256()
    )


def test_a_different_key_a_changed_path_or_a_stale_timestamp_is_rejected(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    _, other_public = generate_key_pair(tmp_path)
    headers = KalshiSigner.from_files("k", private).headers("GET", WS_PATH, now_ms=10_000_000)
    right = load_public_key(public.read_bytes())
    assert not verify_headers(
        load_public_key(other_public.read_bytes()), headers, "GET", WS_PATH, 60, now_ms=10_000_000
    )
    assert not verify_headers(right, headers, "GET", "/trade-api/v2/markets", 60, now_ms=10_000_000)
    assert not verify_headers(right, headers, "GET", WS_PATH, 60, now_ms=10_000_000 + 61_000)
    assert not verify_headers(
        right, {**headers, SIGNATURE_HEADER: "!!"}, "GET", WS_PATH, 60, now_ms=10_000_000
    )
    assert not verify_headers(right, {}, "GET", WS_PATH, 60)


def test_unusable_key_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SsmdError, match=r"cannot read Kalshi private key .*missing\.pem"):
        KalshiSigner.from_files("k", tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SsmdError, match=r"junk\.pem is not an unencrypted PEM private key"):
        KalshiSigner.from_files("k", junk)
    from cryptography.hazmat.primitives import serialization

    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SsmdError, match=r"ec\.pem holds a non-RSA key .*Kalshi needs RSA"):
        KalshiSigner.from_files("k", ec_pem)


def test_private_key_file_is_owner_only(keys: tuple[Path, Path]) -> None:
    assert keys[0].stat().st_mode & 0o777 == 0o600


# -- protocol helpers ---------------------------------------------------------------------


def commands(proto: KalshiProtocol) -> list[dict[str, object]]:
    return [json.loads(c) for c in proto.data_to_send()]


def reply(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def ack_subscribes(
    proto: KalshiProtocol,
    cmds: list[dict[str, object]],
    first_sid: int = 1,
) -> int:
    """Answer every subscribe in `cmds` like Kalshi does: one `subscribed` per channel."""
    sid = first_sid
    for cmd in cmds:
        if cmd["cmd"] != "subscribe":
            continue
        params = cmd["params"]
        assert isinstance(params, dict)
        for channel in params["channels"]:
            event = proto.receive(
                reply(id=cmd["id"], type="subscribed", msg={"channel": channel, "sid": sid})
            )
            assert event == Subscribed(int(str(cmd["id"])), channel, sid)
            sid += 1
    return sid


def trade(
    sid: int, seq: int, ticker: str = "KXHIGHNY-24DEC05-B43.5", trade_id: str = "t-1"
) -> bytes:
    return (
        b'{"type":"trade","sid":%d,"seq":%d,"msg":{"trade_id":"%s","market_ticker":"%s",'
        b'"yes_price":36,"no_price":64,"count":3,"taker_side":"no","ts":1669149841}}'
        % (sid, seq, trade_id.encode(), ticker.encode())
    )


def tickers(n: int) -> list[str]:
    return [f"MKT-{i:04d}" for i in range(n)]


# -- commands -----------------------------------------------------------------------------


def test_subscribe_chunks_markets_into_groups_of_at_most_256() -> None:
    proto = KalshiProtocol(["trade", "ticker"])
    proto.set_markets(tickers(600))
    cmds = commands(proto)
    assert [c["cmd"] for c in cmds] == ["subscribe"] * 3
    sizes = [len(c["params"]["market_tickers"]) for c in cmds]  # type: ignore[index]
    assert sizes == [256, 256, 88]
    assert all(c["params"]["channels"] == ["trade", "ticker"] for c in cmds)  # type: ignore[index]
    assert len({c["id"] for c in cmds}) == 3
    subscribed = {t for c in cmds for t in c["params"]["market_tickers"]}  # type: ignore[index]
    assert subscribed == set(tickers(600))


def test_markets_count_as_subscribed_only_when_every_channel_is_acknowledged() -> None:
    proto = KalshiProtocol(["trade", "ticker"])
    proto.set_markets(["A", "B"])
    (cmd,) = commands(proto)
    proto.receive(reply(id=cmd["id"], type="subscribed", msg={"channel": "trade", "sid": 7}))
    assert proto.subscribed_count == 0
    proto.receive(reply(id=cmd["id"], type="subscribed", msg={"channel": "ticker", "sid": 8}))
    assert proto.subscribed == {"A", "B"}
    assert proto.sids == {7, 8}
    assert proto.pending_commands == 0


def test_changing_the_market_set_adds_to_groups_with_room_and_deletes_per_sid() -> None:
    proto = KalshiProtocol(["trade", "ticker"], max_tickers=4)
    proto.set_markets(["A", "B", "C"])
    ack_subscribes(proto, commands(proto))  # sids 1 (trade), 2 (ticker)
    proto.set_markets(["A", "C", "D", "E", "F"])
    cmds = commands(proto)
    assert [(c["cmd"], c["params"]) for c in cmds] == [
        ("update_subscription", {"sids": [1], "market_tickers": ["B"], "action": "delete_markets"}),
        ("update_subscription", {"sids": [2], "market_tickers": ["B"], "action": "delete_markets"}),
        (
            "update_subscription",
            {"sids": [1], "market_tickers": ["D", "E"], "action": "add_markets"},
        ),
        (
            "update_subscription",
            {"sids": [2], "market_tickers": ["D", "E"], "action": "add_markets"},
        ),
        ("subscribe", {"channels": ["trade", "ticker"], "market_tickers": ["F"]}),
    ]
    for c in cmds[:4]:
        assert proto.receive(reply(id=c["id"], type="ok", sid=c["params"]["sids"][0])) == (  # type: ignore[index]
            Acknowledged(int(str(c["id"])), "ok", c["params"]["sids"][0])
        )  # type: ignore[index]
    ack_subscribes(proto, cmds[4:], first_sid=3)
    assert proto.subscribed == {"A", "C", "D", "E", "F"}
    assert sorted(map(sorted, proto.groups())) == [["A", "C", "D", "E"], ["F"]]


def test_a_group_left_empty_is_unsubscribed_by_its_sids() -> None:
    proto = KalshiProtocol(["trade", "ticker"], max_tickers=2)
    proto.set_markets(["A", "B", "C"])
    ack_subscribes(proto, commands(proto))  # group A,B: sids 1,2; group C: sids 3,4
    proto.set_markets(["A", "B"])
    (cmd,) = commands(proto)
    assert cmd["cmd"] == "unsubscribe" and cmd["params"] == {"sids": [3, 4]}
    assert proto.sids == {1, 2}
    assert isinstance(proto.receive(reply(id=cmd["id"], type="unsubscribed", sid=3)), Acknowledged)


def test_changes_to_a_group_awaiting_its_acks_are_applied_when_they_arrive() -> None:
    proto = KalshiProtocol(["trade"])
    proto.set_markets(["A", "B"])
    (sub,) = commands(proto)
    proto.set_markets(["A"])  # B leaves before the subscribe is acknowledged
    assert commands(proto) == []
    proto.receive(reply(id=sub["id"], type="subscribed", msg={"channel": "trade", "sid": 5}))
    (cmd,) = commands(proto)
    assert cmd["params"] == {"sids": [5], "market_tickers": ["B"], "action": "delete_markets"}
    assert proto.subscribed == {"A"}


def test_reconnecting_forgets_server_ids_and_resubscribes_everything() -> None:
    proto = KalshiProtocol(["trade"], max_tickers=2)
    proto.set_markets(["A", "B", "C"])
    ack_subscribes(proto, commands(proto))
    proto.connection_made()
    assert proto.subscribed_count == 0 and proto.sids == frozenset()
    cmds = commands(proto)
    assert [c["params"]["market_tickers"] for c in cmds] == [["A", "B"], ["C"]]  # type: ignore[index]
    assert all(c["cmd"] == "subscribe" for c in cmds)


def test_error_reply_names_the_command_and_rolls_back_a_refused_subscribe() -> None:
    proto = KalshiProtocol(["trade"])
    proto.set_markets(["A"])
    (cmd,) = commands(proto)
    event = proto.receive(reply(id=cmd["id"], type="error", msg={"code": 6, "msg": "Already"}))
    assert event == ErrorReply(int(str(cmd["id"])), 6, "Already", "subscribe")
    assert proto.stats.errors == 1
    assert proto.groups() == [] and proto.pending_commands == 0
    proto.set_markets(["A"])  # the next change retries it
    assert [c["cmd"] for c in commands(proto)] == ["subscribe"]


def test_a_subscription_nothing_accounts_for_is_released() -> None:
    proto = KalshiProtocol(["trade", "ticker"])
    proto.set_markets(["A"])
    (cmd,) = commands(proto)
    proto.receive(reply(id=cmd["id"], type="error", msg={"code": 17, "msg": "no ticker channel"}))
    proto.receive(reply(id=cmd["id"], type="subscribed", msg={"channel": "trade", "sid": 9}))
    (release,) = commands(proto)
    assert release["cmd"] == "unsubscribe" and release["params"] == {"sids": [9]}


# -- frames -------------------------------------------------------------------------------


def test_data_frame_keeps_the_exact_bytes_and_extracts_type_and_ticker() -> None:
    proto = KalshiProtocol(["trade"])
    data = trade(1, 1)
    frame = proto.receive(data)
    assert frame == Frame(data, "trade", "KXHIGHNY-24DEC05-B43.5", "trade:t-1", proto.epoch, 1, 1)
    assert frame.raw is data
    assert proto.receive(data.decode()) == frame  # text frames work too
    assert proto.stats.frames == 2


def ticker(sid: int, seq: int | None, msg: bytes) -> bytes:
    seq_part = b"" if seq is None else b',"seq":%d' % seq
    return b'{"type":"ticker","sid":%d%b,"msg":%b}' % (sid, seq_part, msg)


TICKER_MSG = b'{"market_ticker":"FED-25DEC-T4.25","price":48,"volume":10,"ts":1}'


def test_byte_identical_payloads_under_different_seqs_are_distinct_messages() -> None:
    """A→B→A within one second: Kalshi's `ticker` repeats a payload byte for byte."""
    proto = KalshiProtocol(["ticker"])
    frames = [proto.receive(ticker(3, seq, TICKER_MSG)) for seq in (1, 2, 3)]
    assert all(isinstance(f, Frame) for f in frames)
    ids = [f.msg_id for f in frames if isinstance(f, Frame)]
    assert len(set(ids)) == 3
    assert ids == [message_id("ticker", proto.epoch, 3, seq) for seq in (1, 2, 3)]
    assert [parse_origin_id(i) for i in ids] == [(proto.epoch, 3, seq) for seq in (1, 2, 3)]


def test_a_trade_is_its_trade_id_on_every_connection_and_replica() -> None:
    first, second = KalshiProtocol(["trade"]), KalshiProtocol(["trade"])
    a = first.receive(trade(1, 4, trade_id="d91bc706"))
    b = second.receive(trade(9, 70, trade_id="d91bc706"))
    assert isinstance(a, Frame) and isinstance(b, Frame)
    assert a.msg_id == b.msg_id == "trade:d91bc706"
    assert parse_origin_id(a.msg_id) is None
    assert (a.epoch, a.sid, a.seq) != (b.epoch, b.sid, b.seq)  # where each copy came from


def test_other_frames_are_their_origin_so_replicas_and_reconnects_never_merge() -> None:
    first, second = KalshiProtocol(["ticker"]), KalshiProtocol(["ticker"])
    a = first.receive(ticker(1, 1, TICKER_MSG))
    b = second.receive(ticker(1, 1, TICKER_MSG))  # same sid and seq on another replica
    first.connection_made()  # a reconnect: sids and seqs start again
    c = first.receive(ticker(1, 1, TICKER_MSG))
    assert isinstance(a, Frame) and isinstance(b, Frame) and isinstance(c, Frame)
    assert len({a.epoch, b.epoch, c.epoch}) == 3
    assert len({a.msg_id, b.msg_id, c.msg_id}) == 3
    assert a.msg_id == f"{a.epoch}.1.1"


def test_frames_without_seq_are_numbered_per_connection() -> None:
    proto = KalshiProtocol(["ticker"])
    frames = [proto.receive(ticker(5, None, TICKER_MSG)) for _ in range(3)]
    ids = [f.msg_id for f in frames if isinstance(f, Frame)]
    assert ids == [f"{proto.epoch}.5.n{n}" for n in (1, 2, 3)]
    assert [parse_origin_id(i) for i in ids] == [(proto.epoch, 5, None)] * 3
    epoch = proto.epoch
    proto.connection_made()
    again = proto.receive(ticker(5, None, TICKER_MSG))
    assert isinstance(again, Frame) and again.msg_id == f"{proto.epoch}.5.n1"
    assert proto.epoch != epoch


def test_epochs_are_unique_and_safe_in_an_id() -> None:
    epochs = {new_epoch() for _ in range(10_000)}
    assert len(epochs) == 10_000
    assert all(e.isascii() and e.isalnum() and e == e.lower() for e in epochs)


def test_a_sequence_gap_becomes_a_record_of_the_missing_seqs() -> None:
    proto = KalshiProtocol(["trade", "ticker"])
    proto.set_markets(["FED-25DEC-T4.25"])
    ack_subscribes(proto, commands(proto))  # sids 1 and 2
    proto.receive(ticker(2, 1, TICKER_MSG))
    after = proto.receive(ticker(2, 5, TICKER_MSG))
    assert isinstance(after, Frame) and after.gap_from == 2
    record = gap_record(after)
    assert record is not None and record.msg_type == GAP_TYPE
    assert record.msg_id == f"gap:{proto.epoch}.2.2"
    assert json.loads(record.raw) == {
        "type": GAP_TYPE,
        "sid": 2,
        "msg": {
            "market_ticker": "FED-25DEC-T4.25",
            "epoch": proto.epoch,
            "sid": 2,
            "channel": "ticker",
            "from": 2,
            "to": 4,
        },
    }
    following = proto.receive(ticker(2, 6, TICKER_MSG))
    assert isinstance(following, Frame) and gap_record(following) is None


def test_sequence_gaps_are_counted_per_subscription() -> None:
    proto = KalshiProtocol(["trade", "ticker"])
    proto.set_markets(["M"])
    ack_subscribes(proto, commands(proto))  # sids 1 and 2
    for seq in (1, 2, 3):
        proto.receive(trade(1, seq, trade_id=f"a{seq}"))
    for seq in (1, 2):  # sid 2 runs its own sequence: no gap from interleaving
        proto.receive(trade(2, seq, trade_id=f"b{seq}"))
    assert proto.stats.gaps == 0
    proto.receive(trade(1, 7, trade_id="a7"))  # 4, 5, 6 missing
    proto.receive(trade(1, 8, trade_id="a8"))
    proto.receive(trade(2, 4, trade_id="b4"))  # 3 missing
    assert (proto.stats.gaps, proto.stats.gap_messages) == (2, 4)
    assert proto.stats.frames == 8


def test_a_new_subscription_expects_sequence_one() -> None:
    proto = KalshiProtocol(["trade"])
    proto.set_markets(["M"])
    ack_subscribes(proto, commands(proto))
    proto.receive(trade(1, 3))
    assert (proto.stats.gaps, proto.stats.gap_messages) == (1, 2)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"",
        b"[1,2]",
        b'{"sid":1,"msg":{"market_ticker":"A"}}',
        b'{"type":7,"msg":{"market_ticker":"A"}}',
        b'{"type":"trade","sid":1,"seq":1}',
        b'{"type":"trade","msg":"text"}',
        b'{"type":"trade","msg":{"market_ticker":5}}',
        b'{"type":"trade","msg":{"price":5}}',
        b'{"type":"trade","seq":"x","msg":{"market_ticker":"A"}}',
        b'{"type":"subscribed","id":1,"msg":{"channel":"trade"}}',
        b"\xff\xfe",
    ],
)
def test_malformed_frames_are_counted_and_skipped(data: bytes) -> None:
    proto = KalshiProtocol(["trade"])
    event = proto.receive(data)
    assert isinstance(event, Malformed) and event.reason
    assert (proto.stats.malformed, proto.stats.frames) == (1, 0)
    good = proto.receive(trade(1, 1))  # and the next frame is fine
    assert isinstance(good, Frame)


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        KalshiProtocol([])
    with pytest.raises(ValueError, match=r"max_tickers must be 1\.\.256"):
        KalshiProtocol(["trade"], max_tickers=257)


# -- order books and messages we do not capture ---------------------------------------------


def book(kind: str, sid: int, seq: int, ticker: str = "M") -> bytes:
    body = (
        b'{"market_ticker":"%s","yes_dollars_fp":[["0.4500","10.00"]],"no_dollars_fp":[]}'
        if kind == "orderbook_snapshot"
        else b'{"market_ticker":"%s","price_dollars":"0.4500","delta_fp":"-2.00","side":"yes"}'
    ) % ticker.encode()
    return b'{"type":"%s","sid":%d,"seq":%d,"msg":%s}' % (kind.encode(), sid, seq, body)


def test_a_gap_on_an_order_book_renews_that_subscription_for_a_fresh_snapshot() -> None:
    proto = KalshiProtocol(["trade", "orderbook_delta"])
    proto.set_markets(["M", "N"])
    ack_subscribes(proto, commands(proto))  # trade sid 1, orderbook_delta sid 2
    assert isinstance(proto.receive(book("orderbook_snapshot", 2, 1)), Frame)
    assert isinstance(proto.receive(book("orderbook_delta", 2, 2)), Frame)
    proto.receive(trade(1, 1))
    proto.receive(trade(1, 3, trade_id="t-3"))  # a trade gap is only counted
    assert not proto.has_commands
    frame = proto.receive(book("orderbook_delta", 2, 5))  # 3 and 4 missing: book is broken
    assert isinstance(frame, Frame)  # still forwarded: it is a real exchange message
    assert (proto.stats.gaps, proto.stats.resnapshots) == (2, 1)
    renew = commands(proto)
    assert [(c["cmd"], c["params"]) for c in renew] == [
        ("unsubscribe", {"sids": [2]}),
        ("subscribe", {"channels": ["orderbook_delta"], "market_tickers": ["M", "N"]}),
    ]
    assert proto.subscribed == frozenset()  # until the new book subscription is acknowledged
    proto.set_markets(["M"])  # a change meanwhile waits for the ack
    assert not proto.has_commands
    proto.receive(reply(id=renew[0]["id"], sid=2, type="unsubscribed"))
    proto.receive(
        reply(id=renew[1]["id"], type="subscribed", msg={"channel": "orderbook_delta", "sid": 3})
    )
    assert proto.sids == {1, 3}
    deferred = [c["params"] for c in commands(proto)]  # the waiting change, on the new sid
    assert deferred == [
        {"sids": [1], "market_tickers": ["N"], "action": "delete_markets"},
        {"sids": [3], "market_tickers": ["N"], "action": "delete_markets"},
    ]
    proto.receive(book("orderbook_snapshot", 3, 1))
    proto.receive(book("orderbook_delta", 3, 2))
    assert proto.stats.gaps == 2  # the new subscription numbers from 1
    proto.receive(book("orderbook_delta", 2, 6))  # in flight on the old sid: forwarded, no gap
    assert proto.stats.gaps == 2 and proto.stats.resnapshots == 1


def test_a_refused_book_renewal_drops_the_group_so_its_markets_are_subscribed_again() -> None:
    proto = KalshiProtocol(["trade", "orderbook_delta"])
    proto.set_markets(["M"])
    ack_subscribes(proto, commands(proto))
    proto.receive(book("orderbook_snapshot", 2, 1))
    proto.receive(book("orderbook_delta", 2, 3))
    renew = commands(proto)
    error = proto.receive(
        reply(id=renew[1]["id"], type="error", msg={"code": 9, "msg": "Authentication required"})
    )
    assert isinstance(error, ErrorReply) and error.command == "resnapshot"
    assert [c["params"] for c in commands(proto)] == [{"sids": [1]}]  # the trade sid let go
    proto.set_markets(["M"])
    assert [c["params"] for c in commands(proto)] == [
        {"channels": ["trade", "orderbook_delta"], "market_tickers": ["M"]}
    ]


def test_unknown_message_types_are_counted_skipped_and_logged_once_per_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proto = KalshiProtocol(["trade"])
    caplog.set_level("WARNING", logger="runtime.kalshi.protocol")
    for i in range(5):
        event = proto.receive(
            b'{"type":"ticker_v3","sid":1,"seq":%d,"msg":{"market_ticker":"M","x":1}}' % i
        )
        assert event == Unknown("ticker_v3")
    proto.receive(b'{"type":"market_lifecycle_v9","msg":{"market_ticker":"M"}}')
    assert proto.stats.unknown == 6 and proto.stats.frames == 0 and proto.stats.malformed == 0
    logged = [r.getMessage() for r in caplog.records if "unknown Kalshi message type" in r.message]
    assert len(logged) == 2 and "'ticker_v3'" in logged[0]


def test_unknown_fields_in_a_known_message_are_tolerated_and_kept_in_the_raw_frame() -> None:
    proto = KalshiProtocol(["trade"])
    raw = (
        b'{"type":"trade","sid":1,"seq":1,"new_envelope_field":[1],"msg":{"trade_id":"t",'
        b'"market_ticker":"M","yes_price_dollars":"0.5000","brand_new":{"a":[1,2]}}}'
    )
    frame = proto.receive(raw)
    assert isinstance(frame, Frame) and frame.raw == raw and frame.ticker == "M"
    assert proto.stats.malformed == 0
