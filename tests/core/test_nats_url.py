"""The one NATS URL rule: what the stack, the supervisor and the pods' client accept."""

from __future__ import annotations

import pytest

from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_url import nats_url_problem, parse_nats_urls, redact_url


def test_urls_are_parsed_with_their_credentials_in_order() -> None:
    first, second, third = parse_nats_urls(
        "nats://u:p%40ss@10.0.0.1:4333, nats://tok@nats-b, tls://nats-c"
    )
    assert (first.host, first.port, first.user, first.password, first.tls) == (
        "10.0.0.1",
        4333,
        "u",
        "p@ss",
        False,
    )
    assert (second.host, second.port, second.token, second.user) == ("nats-b", 4222, "tok", None)
    assert (third.host, third.port, third.tls) == ("nats-c", 4222, True)
    assert str(third) == "tls://nats-c:4222"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "non-empty"),
        ("ws://nats:4222", "scheme must be one of nats://, tls://"),
        ("nats-host:4222", "scheme must be one of"),
        ("nats://:4222", "no host"),
        ("nats://nats:4222/x", "unexpected path"),
        ("nats://nats:0", "port 0"),
        ("nats://nats:99999", "Port out of range"),
        ("nats://a:4222, ,nats://b:4222", "an empty entry"),
    ],
)
def test_bad_urls_are_refused_saying_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_nats_urls(url)
    assert why in (nats_url_problem(url) or "")


def test_a_refusal_never_shows_the_password() -> None:
    problem = nats_url_problem("nats://admin:hunter2@nats:4222/path")
    assert problem is not None
    assert "hunter2" not in problem
    assert (
        redact_url("nats://admin:hunter2@nats:4222,nats://b:1") == "nats://***@nats:4222,nats://b:1"
    )
