"""Subjects: one builder, symbols encoded into a single safe NATS token, reversibly.

A NATS token may not contain `.`, `*`, `>` or whitespace; Kalshi tickers contain `.`
(`KXHIGHNY-24DEC05-B43.5`). The encoding must round-trip *any* ticker.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ssmd_infra.core.subjects import (
    SHARD_NAME,
    TOKEN_NAME,
    archiver_consumer,
    client_subject,
    consumer_ack_wildcard,
    consumer_api,
    decode_symbol,
    encode_symbol,
    inbox_wildcard,
    internal_subject,
    internal_wildcard,
    js_api_wildcard,
    name_problem,
    parse_client_subject,
    parse_internal_subject,
    role_inbox_prefix,
    stream_api,
    stream_list_api,
)

# What NATS accepts in one token, and more strictly what we emit: printable ASCII without
# the separators and wildcards.
SAFE_TOKEN = re.compile(r"[A-Za-z0-9_%-]+")  # used with fullmatch: no trailing newline

tickers = st.text(min_size=1) | st.text(alphabet=".*> \t\n-ABC%", min_size=1)


@given(tickers)
@example("KXHIGHNY-24DEC05-B43.5")
@example("a.b*c>d e")
@example("%41")
@example("%")
@example("BTC\n")
@example("0\n")
@example("é")
@example("🙂.🙂")
def test_any_symbol_round_trips_through_one_safe_token(symbol: str) -> None:
    token = encode_symbol(symbol)
    assert SAFE_TOKEN.fullmatch(token), token
    assert not any(c in token for c in ".*>") and not any(c.isspace() for c in token)
    assert decode_symbol(token) == symbol


@given(tickers, tickers)
def test_distinct_symbols_get_distinct_tokens(a: str, b: str) -> None:
    assert (encode_symbol(a) == encode_symbol(b)) == (a == b)


@given(tickers, st.sampled_from(["trade", "orderbook_delta", "ticker"]))
def test_subjects_have_a_fixed_number_of_tokens_and_parse_back(symbol: str, kind: str) -> None:
    internal = internal_subject("tier1", "kalshi", kind, symbol)
    client = client_subject("kalshi", kind, symbol)
    assert len(internal.split(".")) == 5
    assert len(client.split(".")) == 4
    assert parse_internal_subject(internal) == ("tier1", "kalshi", kind, symbol)
    assert parse_client_subject(client) == ("kalshi", kind, symbol)


def test_plain_tickers_are_left_as_they_are() -> None:
    assert encode_symbol("INXD-25-B4000") == "INXD-25-B4000"
    assert encode_symbol("BTC_USD") == "BTC_USD"


def test_a_dotted_kalshi_ticker_is_one_token() -> None:
    assert encode_symbol("KXHIGHNY-24DEC05-B43.5") == "KXHIGHNY-24DEC05-B43%2E5"
    assert (
        internal_subject("tier2", "kalshi", "trade", "KXHIGHNY-24DEC05-B43.5")
        == "internal.tier2.kalshi.trade.KXHIGHNY-24DEC05-B43%2E5"
    )
    assert client_subject("kalshi", "trade", "BTCUSD") == "md.kalshi.trade.BTCUSD"
    assert internal_wildcard("tier1") == "internal.tier1.>"


def test_an_empty_symbol_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_symbol("")


@pytest.mark.parametrize("token", ["a.b", "a b", "A\n", "%2", "%zz", "%41", "%2e", "%FF", "*", ">"])
def test_tokens_the_encoder_cannot_produce_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        decode_symbol(token)


@pytest.mark.parametrize(
    "subject", ["md.kalshi.trade", "internal.a.b.c", "x.kalshi.trade.A", "md.kalshi.trade.a.b"]
)
def test_malformed_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError):
        if subject.startswith("internal"):
            parse_internal_subject(subject)
        else:
            parse_client_subject(subject)


@pytest.mark.parametrize("name", ["tier1", "tier1a", "crypto-majors", "a", "x9"])
def test_good_shard_names(name: str) -> None:
    assert name_problem("shard", name, SHARD_NAME) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("tier.1", "contains '.'"),
        ("tier*", "contains '*'"),
        ("tier>", "contains '>'"),
        ("tier 1", "contains ' '"),
        ("tier1\n", "contains '\\n'"),
        ("Tier1", "lower-case"),
        ("-tier", "lower-case"),
        ("t" * 41, "at most 40"),
        ("", "non-empty"),
    ],
)
def test_bad_shard_names_say_why(name: str, words: str) -> None:
    why = name_problem("shard", name, SHARD_NAME)
    assert why is not None and words in why


def test_feed_names_may_use_underscores() -> None:
    assert name_problem("feed", "kalshi_v2", TOKEN_NAME) is None
    assert name_problem("shard", "kalshi_v2", SHARD_NAME) is not None


def test_jetstream_api_and_inbox_subjects() -> None:
    assert stream_api("INFO", "ssmd-internal-tier1") == "$JS.API.STREAM.INFO.ssmd-internal-tier1"
    assert stream_list_api("NAMES") == "$JS.API.STREAM.NAMES"
    assert consumer_api("CREATE", "ssmd-client") == "$JS.API.CONSUMER.CREATE.ssmd-client"
    assert (
        consumer_api("MSG.NEXT", "ssmd-internal-tier1", archiver_consumer("tier1"))
        == "$JS.API.CONSUMER.MSG.NEXT.ssmd-internal-tier1.archiver-tier1"
    )
    assert consumer_ack_wildcard("ssmd-client") == "$JS.ACK.ssmd-client.*.>"
    assert js_api_wildcard() == "$JS.API.>"
    assert role_inbox_prefix("connector-tier1") == "_INBOX_connector-tier1"
    assert inbox_wildcard("_INBOX_client") == "_INBOX_client.>"
