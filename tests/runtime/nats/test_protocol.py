"""The sans-I/O NATS protocol: what the parser makes of server bytes however they are cut,
what it refuses, and the exact bytes the serializers write."""

from __future__ import annotations

import json

import pytest

from runtime.nats.protocol import (
    MSG_ID_HEADER_OVERHEAD,
    OK_OP,
    PING_OP,
    PONG_OP,
    Control,
    Err,
    Info,
    Msg,
    Parser,
    ProtocolError,
    connect,
    header_block,
    hpub,
    hpub_msg_id_template,
    pub,
    status_of,
    sub,
    unsub,
)

INFO = {"server_id": "N1", "version": "2.15.1", "headers": True, "max_payload": 1048576}
ACK = b'{"stream":"ssmd-internal-tier1","seq":42}'
HEADERS = b"NATS/1.0\r\nNats-Msg-Id: trade:abc\r\n\r\n"
PAYLOAD = b'{"type":"trade","msg":{"ticker":"KXHIGHNY-24DEC05-B43.5"}}'
# a payload holding what looks like operations: only the declared size decides where it ends
TRICKY = b"MSG fake 1 3\r\nabc\r\nPING\r\n"

STREAM = (
    b"INFO " + json.dumps(INFO).encode() + b"\r\n"
    b"PING\r\n"
    b"MSG _INBOX.ab.7 1 %d\r\n%s\r\n"
    % (len(ACK), ACK)
    + b"HMSG internal.tier1.kalshi.trade.BTC 1 $JS.ACK.s.c.1.5.5.1700000000.0 %d %d\r\n%s%s\r\n"
    % (len(HEADERS), len(HEADERS) + len(PAYLOAD), HEADERS, PAYLOAD)
    + b"+OK\r\n"
    + b"MSG empty.payload 2 0\r\n\r\n"
    + b"HMSG _INBOX.ab.8 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    + b"MSG tricky 3 reply.to %d\r\n%s\r\n" % (len(TRICKY), TRICKY)
    + b"-ERR 'Permissions Violation for Publish to \"internal.tier2.x\"'\r\n"
    + b"PONG\r\n"
)

EXPECTED_MSGS: list[Msg] = [
    (b"_INBOX.ab.7", b"1", None, b"", ACK),
    (
        b"internal.tier1.kalshi.trade.BTC",
        b"1",
        b"$JS.ACK.s.c.1.5.5.1700000000.0",
        HEADERS,
        PAYLOAD,
    ),
    (b"empty.payload", b"2", None, b"", b""),
    (b"_INBOX.ab.8", b"1", None, b"NATS/1.0 503\r\n\r\n", b""),
    (b"tricky", b"3", b"reply.to", b"", TRICKY),
]
EXPECTED_CONTROLS: list[Control] = [
    Info(INFO),
    PING_OP,
    OK_OP,
    Err('Permissions Violation for Publish to "internal.tier2.x"'),
    PONG_OP,
]


def parse_in_pieces(pieces: list[bytes]) -> tuple[list[Msg], list[Control]]:
    parser = Parser()
    msgs: list[Msg] = []
    for piece in pieces:
        msgs.extend(parser.feed(piece))
    return msgs, parser.take_controls()


def test_a_stream_of_every_operation_parses_into_messages_and_controls_in_order() -> None:
    assert parse_in_pieces([STREAM]) == (EXPECTED_MSGS, EXPECTED_CONTROLS)


def test_the_stream_cut_in_two_at_every_byte_boundary_parses_the_same() -> None:
    for cut in range(1, len(STREAM)):
        assert parse_in_pieces([STREAM[:cut], STREAM[cut:]]) == (
            EXPECTED_MSGS,
            EXPECTED_CONTROLS,
        ), f"cut at byte {cut}"


def test_the_stream_fed_one_byte_at_a_time_parses_the_same() -> None:
    pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert parse_in_pieces(pieces) == (EXPECTED_MSGS, EXPECTED_CONTROLS)


def test_a_large_payload_arriving_in_many_reads_is_one_message() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, CR and LF included
    data = b"MSG big 1 %d\r\n%s\r\nPING\r\n" % (len(payload), payload)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    assert parse_in_pieces(pieces) == ([(b"big", b"1", None, b"", payload)], [PING_OP])


def test_messages_are_returned_by_the_read_that_completes_them() -> None:
    parser = Parser()
    first = b"MSG a 1 5\r\nhello\r\nMSG b 1 5\r\nwor"
    assert parser.feed(first) == [(b"a", b"1", None, b"", b"hello")]
    assert parser.feed(b"ld\r\n") == [(b"b", b"1", None, b"", b"world")]
    assert parser.feed(b"") == []


def test_a_status_reply_is_told_apart_from_an_ordinary_header_block() -> None:
    assert status_of(b"NATS/1.0 503\r\n\r\n") == (503, "")
    assert status_of(b"NATS/1.0 404 No Messages\r\n\r\n") == (404, "No Messages")
    assert status_of(b"NATS/1.0 409 Consumer Deleted\r\n\r\n") == (409, "Consumer Deleted")
    assert status_of(HEADERS) is None


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"MSG only-a-subject\r\n", "malformed MSG line"),
        (b"MSG a 1 notanumber\r\nx\r\n", "malformed MSG line"),
        (b"HMSG a 1 5\r\n", "malformed HMSG line"),
        (b"HMSG a 1 20 10\r\n", "header size 20 exceeds its total 10"),
        (b"INFO {not json}\r\n", "malformed INFO"),
        (b"INFO [1,2]\r\n", "malformed INFO"),
        (b"BOGUS\r\n", "unknown operation"),
        (b"HELLO\r\n", "malformed HMSG line"),
        (b"\r\n", "unknown operation"),
    ],
)
def test_what_is_not_the_protocol_is_a_protocol_error(data: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        Parser().feed(data)


def test_a_control_line_without_end_is_bounded() -> None:
    parser = Parser(max_control_line=100)
    parser.feed(b"INFO {" + b"x" * 50)  # still possible
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        parser.feed(b"x" * 60)


def test_a_message_larger_than_the_bound_is_refused_before_it_is_buffered() -> None:
    parser = Parser(max_message=1000)
    with pytest.raises(ProtocolError, match="1001 bytes exceeds 1000"):
        parser.feed(b"MSG a 1 1001\r\n" + b"x" * 10)


# -- serializers ------------------------------------------------------------------------------


def test_connect_carries_the_given_credentials_and_asks_for_headers() -> None:
    line = connect(name="ssmd-connector-tier1", user="alice", password="p@ss w0rd")
    assert line.startswith(b"CONNECT ") and line.endswith(b"\r\n")
    options = json.loads(line[8:])
    assert options["user"] == "alice" and options["pass"] == "p@ss w0rd"
    assert options["headers"] is True and options["no_responders"] is True
    assert options["verbose"] is False and options["name"] == "ssmd-connector-tier1"
    assert "auth_token" not in options and "nkey" not in options
    options = json.loads(connect(name="n", token="t0k", tls_required=True)[8:])
    assert options["auth_token"] == "t0k" and options["tls_required"] is True
    assert "user" not in options
    options = json.loads(connect(name="n", nkey="UABC", signature="c2ln")[8:])
    assert (options["nkey"], options["sig"]) == ("UABC", "c2ln")


def test_pub_sub_unsub_are_written_exactly() -> None:
    assert pub(b"a.b", b"hello") == b"PUB a.b 5\r\nhello\r\n"
    assert pub(b"a.b", b"", b"_INBOX.x.1") == b"PUB a.b _INBOX.x.1 0\r\n\r\n"
    assert sub(b"_INBOX.x.*", 1) == b"SUB _INBOX.x.* 1\r\n"
    assert sub(b"work", 2, b"q") == b"SUB work q 2\r\n"
    assert unsub(1) == b"UNSUB 1\r\n"
    assert unsub(3, 10) == b"UNSUB 3 10\r\n"


def test_hpub_and_the_publishers_template_write_the_same_bytes() -> None:
    block = header_block({"Nats-Msg-Id": "trade:abc"})
    assert block == HEADERS
    expected = hpub(b"internal.t.kalshi.trade.X", block, PAYLOAD, b"_INBOX.ab.12")
    assert expected == (
        b"HPUB internal.t.kalshi.trade.X _INBOX.ab.12 %d %d\r\n%s%s\r\n"
        % (len(block), len(block) + len(PAYLOAD), block, PAYLOAD)
    )
    msg_id = b"trade:abc"
    hdr_len = len(msg_id) + MSG_ID_HEADER_OVERHEAD
    assert hdr_len == len(block)
    template = hpub_msg_id_template(b"_INBOX.ab.")
    filled = template % (
        b"internal.t.kalshi.trade.X",
        12,
        hdr_len,
        hdr_len + len(PAYLOAD),
        msg_id,
        PAYLOAD,
    )
    assert filled == expected


@pytest.mark.parametrize("subject", [b"", b"has space", b"tab\there", b"line\r\nPUB x 0"])
def test_a_subject_that_would_break_the_protocol_is_refused(subject: bytes) -> None:
    with pytest.raises(ValueError, match="invalid NATS subject"):
        pub(subject, b"x")
    with pytest.raises(ValueError, match="invalid NATS subject"):
        sub(subject, 1)


def test_a_header_that_would_break_the_block_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid NATS header"):
        header_block({"Nats-Msg-Id": "a\r\nInjected: 1"})


def ack(n: int, reply: bytes | None = None, payload: bytes | None = None) -> tuple[bytes, Msg]:
    """A PubAck-like MSG on `_INBOX.ab.{n}`: its bytes and the message it must parse to."""
    body = payload if payload is not None else b'{"stream":"s","seq":%d}' % n
    subject = b"_INBOX.ab.%d" % n
    head = b"MSG %s 1 %s%d\r\n" % (subject, reply + b" " if reply else b"", len(body))
    return head + body + b"\r\n", (subject, b"1", reply, b"", body)


def run_of(*acks: tuple[bytes, Msg]) -> tuple[bytes, list[Msg]]:
    return b"".join(a[0] for a in acks), [a[1] for a in acks]


@pytest.mark.parametrize(
    "shape",
    [
        "plain acks",
        "acks with replies",
        "replies mixed in",
        "a payload holding CRLF",
        "a payload ending in CR",
        "a payload starting with LF",
        "a control line after the run",
    ],
)
def test_a_run_of_messages_parses_exactly_whatever_its_shape_and_cuts(shape: str) -> None:
    acks = [ack(n) for n in range(6)]
    if shape == "acks with replies":
        acks = [ack(n, b"r.%d" % n) for n in range(6)]
    elif shape == "replies mixed in":
        acks[2] = ack(2, b"r.2")
    elif shape == "a payload holding CRLF":
        acks[3] = ack(3, payload=b"two\r\nlines MSG x 1 2\r\n")
    elif shape == "a payload ending in CR":
        acks[3] = ack(3, payload=b"ends in CR\r")
    elif shape == "a payload starting with LF":
        acks[0] = ack(0, payload=b"\nstarts with LF")
    data, expected = run_of(*acks)
    controls: list[Control] = []
    if shape == "a control line after the run":
        data += b"PONG\r\n" + acks[0][0]
        expected.append(acks[0][1])
        controls = [PONG_OP]
    assert parse_in_pieces([data]) == (expected, controls)
    for cut in range(1, len(data)):
        assert parse_in_pieces([data[:cut], data[cut:]]) == (expected, controls), f"cut {cut}"
