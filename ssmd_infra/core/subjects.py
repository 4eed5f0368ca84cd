"""NATS subjects and names: the one place that formats them.

Kalshi tickers contain `.` (strikes such as `KXHIGHNY-24DEC05-B43.5`), which NATS reads as
a token separator. Symbols are therefore encoded into a single token: `[A-Za-z0-9_-]`
pass through, every other byte of the UTF-8 form becomes `%XX` (upper-case hex). The
encoding is a bijection between non-empty strings and well-formed tokens, so a subscriber
can decode any symbol from a subject. Shard, feed and message type names are not encoded:
they are validated to be safe tokens (and Kubernetes names) when the environment loads.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9_-]+\Z")
_ENCODED = re.compile(r"^(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+\Z")
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Shard names become Kubernetes object names (`ssmd-connector-{shard}`) and stream names.
SHARD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?\Z")
TOKEN_NAME = re.compile(r"^[a-z0-9]([-_a-z0-9]{0,38}[a-z0-9])?\Z")

INTERNAL_PREFIX = "internal"
CLIENT_PREFIX = "md"
CLIENT_STREAM = "ssmd-client"


def encode_symbol(symbol: str) -> str:
    """One NATS token for `symbol`; reversible with `decode_symbol`."""
    if not symbol:
        raise ValueError("empty symbol")
    if _SAFE.match(symbol):
        return symbol
    out = []
    for byte in symbol.encode("utf-8"):
        out.append(chr(byte) if byte in _SAFE_BYTES else f"%{byte:02X}")
    return "".join(out)


def decode_symbol(token: str) -> str:
    """Inverse of `encode_symbol`; `ValueError` for a token it could not have produced."""
    if _SAFE.match(token):
        return token
    if not _ENCODED.match(token):
        raise ValueError(f"not an encoded symbol token: {token!r}")
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            byte = int(token[i + 1 : i + 3], 16)
            if byte in _SAFE_BYTES:
                raise ValueError(f"not an encoded symbol token (over-escaped): {token!r}")
            raw.append(byte)
            i += 3
        else:
            raw.append(ord(token[i]))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"not an encoded symbol token (bad UTF-8): {token!r}") from None


def name_problem(kind: str, name: str, pattern: re.Pattern[str] = SHARD_NAME) -> str | None:
    """Why `name` cannot be a shard/feed/type name, or None when it can."""
    if not isinstance(name, str) or not name:
        return f"{kind} name must be a non-empty string"
    if pattern.match(name):
        return None
    bad = sorted({c for c in name if c in ".*>" or c.isspace()})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return (
            f"{kind} name {name!r} contains {shown}: NATS subject tokens may not "
            f"contain '.', '*', '>' or whitespace"
        )
    return (
        f"{kind} name {name!r} must be lower-case letters, digits and '-', start and end "
        f"with a letter or digit, at most 40 characters (it names NATS streams and "
        f"Kubernetes objects)"
    )


def internal_subject(shard: str, feed: str, msg_type: str, symbol: str) -> str:
    """`internal.{shard}.{feed}.{type}.{symbol}`: where a shard's connector publishes."""
    return f"{INTERNAL_PREFIX}.{shard}.{feed}.{msg_type}.{encode_symbol(symbol)}"


def client_subject(feed: str, msg_type: str, symbol: str) -> str:
    """`md.{feed}.{type}.{symbol}`: the merged, client-facing subject."""
    return f"{CLIENT_PREFIX}.{feed}.{msg_type}.{encode_symbol(symbol)}"


def internal_wildcard(shard: str) -> str:
    """Every subject of one shard: `internal.{shard}.>`."""
    return f"{INTERNAL_PREFIX}.{shard}.>"


def internal_feed_wildcard(shard: str, feed: str) -> str:
    """`internal.{shard}.{feed}.>`: the source side of the client transform."""
    return f"{INTERNAL_PREFIX}.{shard}.{feed}.>"


def client_feed_wildcard(feed: str) -> str:
    """`md.{feed}.>`: the client subject space of one feed."""
    return f"{CLIENT_PREFIX}.{feed}.>"


def internal_stream(shard: str) -> str:
    """`ssmd-internal-{shard}`: the JetStream stream holding one shard's subjects."""
    return f"ssmd-internal-{shard}"


def parse_internal_subject(subject: str) -> tuple[str, str, str, str]:
    """(shard, feed, type, symbol) of an internal subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != INTERNAL_PREFIX:
        raise ValueError(f"not an internal subject: {subject!r}")
    return parts[1], parts[2], parts[3], decode_symbol(parts[4])


def parse_client_subject(subject: str) -> tuple[str, str, str]:
    """(feed, type, symbol) of a client subject."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != CLIENT_PREFIX:
        raise ValueError(f"not a client subject: {subject!r}")
    return parts[1], parts[2], decode_symbol(parts[3])


# JetStream API and the per-role inboxes (the NATS permissions of `ssmd_infra.core.nats_auth`
# are written with these, and so are the clients' requests)

JS_API_PREFIX = "$JS.API"
JS_ACK_PREFIX = "$JS.ACK"
INBOX_PREFIX = "_INBOX"


def archiver_consumer(shard: str) -> str:
    """`archiver-{shard}`: the archiver's durable consumer on `ssmd-internal-{shard}`."""
    return f"archiver-{shard}"


def js_api_wildcard() -> str:
    """`$JS.API.>`: every JetStream API request (stream management)."""
    return f"{JS_API_PREFIX}.>"


def stream_api(operation: str, stream: str) -> str:
    """`$JS.API.STREAM.{operation}.{stream}`: e.g. INFO, CREATE, UPDATE, DELETE, PURGE."""
    return f"{JS_API_PREFIX}.STREAM.{operation}.{stream}"


def stream_list_api(operation: str) -> str:
    """`$JS.API.STREAM.{operation}`: the stream listings (NAMES, LIST)."""
    return f"{JS_API_PREFIX}.STREAM.{operation}"


def consumer_api(operation: str, stream: str, consumer: str | None = None) -> str:
    """`$JS.API.CONSUMER.{operation}.{stream}[.{consumer}]`.

    `operation` is the server's name: CREATE (ephemeral without a consumer; named with one),
    DURABLE.CREATE (the legacy durable create nats-py uses), INFO, DELETE, MSG.NEXT. The
    consumer may be `*` (any one) or `>` (any, with the optional filter-subject tokens a named
    CREATE may carry) in a permission.
    """
    subject = f"{JS_API_PREFIX}.CONSUMER.{operation}.{stream}"
    return subject if consumer is None else f"{subject}.{consumer}"


def consumer_ack_wildcard(stream: str, consumer: str = "*") -> str:
    """`$JS.ACK.{stream}.{consumer}.>`: the reply subjects of a consumer's deliveries (acks)."""
    return f"{JS_ACK_PREFIX}.{stream}.{consumer}.>"


def role_inbox_prefix(role: str) -> str:
    """`_INBOX_{role}`: the one token under which a role's clients receive replies.

    Every NATS client takes it as its inbox prefix (nats-py `inbox_prefix=`; the raw clients
    build `{prefix}.{id}` themselves), so a role subscribes to `{prefix}.>` and to nobody
    else's replies. The role name is a safe token (letters, digits, '-')."""
    return f"{INBOX_PREFIX}_{role}"


def inbox_wildcard(prefix: str) -> str:
    """`{prefix}.>`: every reply subject under an inbox prefix."""
    return f"{prefix}.>"
