"""The environment model: what a valid file means, and how every kind of bad file is refused.

Every refusal names the file, the line and the key path, and lists *all* problems at once.
"""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from ssmd_infra.core.environment import (
    Environment,
    attribute_text,
    environment_path,
    load_environment,
    parse_environment,
)
from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.quantity import canonical_quantity, parse_duration, parse_quantity

REPO = Path(__file__).resolve().parents[2]
FILE = "env.yaml"

VALID = textwrap.dedent(
    """\
    name: test
    feed: kalshi
    symbols:
      BTCUSD: {tier: 1, category: crypto}
      INXD-25-B4000: {tier: 2, category: financials}
    shards:
      tier1:
        selector:
          tier: 1
        replicas: 2
        resources:
          cpu: "500m"
          memory: "512Mi"
      tier2:
        selector: {tier: 2}
        replicas: 1
    """
)


def parse(text: str | bytes) -> Environment:
    return parse_environment(text, FILE)


def problems(text: str | bytes) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.problems


def only_problem(text: str | bytes) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def edit(old: str, new: str, base: str = VALID) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


# -- the repository's environments ------------------------------------------------------------


@pytest.mark.parametrize("name", ["kalshi-prod", "kalshi-dev"])
def test_the_shipped_environments_load(name: str) -> None:
    env = load_environment(REPO / "exchanges" / "environments" / f"{name}.yaml")
    assert env.name == name
    assert env.feed == "kalshi"


def test_kalshi_prod_keeps_the_seed_shape() -> None:
    env = load_environment(REPO / "exchanges" / "environments" / "kalshi-prod.yaml")
    assert {"BTCUSD", "ETHUSD", "SOLUSD", "AVAXUSD", "MATICUSD", "INXD-25-B4000"} <= set(
        env.symbols
    )
    assert "KXHIGHNY-24DEC05-B43.5" in env.symbols  # a dotted Kalshi ticker
    tier1, tier2 = env.shards["tier1"], env.shards["tier2"]
    assert (tier1.replicas, tier1.resources.requests.cpu, tier1.resources.requests.memory) == (
        2,
        "500m",
        "512Mi",
    )
    assert (tier2.replicas, tier2.resources.limits.cpu, tier2.resources.limits.memory) == (
        1,
        "250m",
        "256Mi",
    )


# -- defaults and forms -----------------------------------------------------------------------


def test_everything_optional_has_a_default() -> None:
    env = parse(VALID)
    shard = env.shards["tier2"]
    assert shard.name == "tier2"
    assert shard.min_replicas == 1
    assert shard.autoscaling.cpu_utilization == 70
    assert shard.autoscaling.message_rate == 10000
    assert shard.buffer.capacity > 0
    assert shard.buffer.drop_policy == "drop_oldest"
    assert shard.resources.requests.cpu == "250m"
    assert shard.resources.requests.memory == "256Mi"
    assert env.schema_ == "trade:v1"
    assert env.assignments == {}
    assert env.secmaster.source == "manual"
    assert env.streams.internal.max_age == 72 * 3600
    assert env.streams.internal.duplicate_window == 120
    assert env.streams.client.max_bytes_int == 10 * 2**30
    assert env.archiver.rotation == 3600


def test_short_resources_set_requests_equal_to_limits() -> None:
    shard = parse(VALID).shards["tier1"]
    assert shard.resources.requests == shard.resources.limits
    assert shard.resources.requests.cpu_cores == Decimal("0.5")
    assert shard.resources.requests.memory_bytes == 512 * 2**20


def test_long_resources_may_set_requests_and_limits_apart() -> None:
    text = edit(
        'cpu: "500m"\n      memory: "512Mi"',
        "requests: {cpu: 250m, memory: 256Mi}\n      limits: {cpu: 1, memory: 1Gi}",
    )
    shard = parse(text).shards["tier1"]
    assert shard.resources.requests.cpu == "250m"
    assert shard.resources.limits.memory_bytes == 2**30


def test_limits_below_requests_are_refused() -> None:
    text = edit(
        'cpu: "500m"\n      memory: "512Mi"',
        "requests: {cpu: 1, memory: 256Mi}\n      limits: {cpu: 500m, memory: 256Mi}",
    )
    p = only_problem(text)
    assert p.path == "shards.tier1.resources"
    assert "below requests.cpu" in p.message


def test_optional_sections_are_read() -> None:
    text = VALID + textwrap.dedent(
        """\
        secmaster: {source: kalshi, refresh_interval: 5m, defaults: {tier: 2}}
        streams:
          internal: {max_age: 24h, max_bytes: 1Gi, duplicate_window: 90s, replicas: 3}
        archiver: {rotation: 10m}
        """
    )
    env = parse(text)
    assert env.secmaster.refresh_interval == 300
    assert env.secmaster.defaults == {"tier": "2"}
    assert env.streams.internal.max_age == 24 * 3600
    assert env.streams.internal.replicas == 3
    assert env.streams.internal.duplicate_window == 90
    assert env.archiver.rotation == 600


def test_attribute_values_are_compared_as_written() -> None:
    """`1` and "1" are the same attribute value; so are `true` and "true"."""
    assert attribute_text(1) == attribute_text("1") == "1"
    assert attribute_text(True) == "true"
    assert attribute_text(1.5) == "1.5"
    env = parse(edit("BTCUSD: {tier: 1,", 'BTCUSD: {tier: "1",'))
    assert env.symbols["BTCUSD"]["tier"] == "1"
    assert env.shards["tier1"].selector["tier"] == "1"


# -- quantities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("0.5", Decimal("0.5")),
        (2, Decimal(2)),
        (0.25, Decimal("0.25")),
        ("512Mi", Decimal(512 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("1e9", Decimal(10**9)),
        ("128k", Decimal(128000)),
    ],
)
def test_quantities_parse(text: object, value: Decimal) -> None:
    assert parse_quantity(text) == value
    assert canonical_quantity(text) == str(text)


@pytest.mark.parametrize("text", ["512Mb", "-1", "abc", "", "1.2.3", "5 Gi", "1GB", True, None])
def test_malformed_quantities_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_a_mega_bit_typo_suggests_the_binary_unit() -> None:
    with pytest.raises(ValueError, match=r"did you mean '512Mi'"):
        parse_quantity("512Mb")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("2m", 120), ("72h", 259200), ("7d", 604800), (30, 30)]
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 minutes", "-5s", "0s", "h", True, [1]])
def test_malformed_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ('memory: "512Mb"', "memory"),
        ("memory: -1", "memory"),
        ('memory: "abc"', "memory"),
        ("cpu: abc", "cpu"),
    ],
)
def test_a_malformed_quantity_names_its_key_and_line(bad: str, key: str) -> None:
    text = edit('memory: "512Mi"', bad) if key == "memory" else edit('cpu: "500m"', bad)
    p = only_problem(text)  # said once, not once for requests and once for limits
    assert p.file == FILE
    assert p.path == f"shards.tier1.resources.{key}"
    assert p.line == (13 if key == "memory" else 12)
    assert "malformed quantity" in p.message


# -- bad inputs: each refused with file, line and key path -------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "line", "words"),
    [
        (VALID + "colour: blue\n", "colour", 17, "unknown key 'colour'"),
        (
            edit("    replicas: 1\n", "    replicas: 1\n    autoscale: {cpu: 50}\n"),
            "shards.tier2.autoscale",
            17,
            "unknown key 'autoscale'",
        ),
        (
            edit("    replicas: 1\n", "    replicas: 1\n    autoscaling: {cpu: 50}\n"),
            "shards.tier2.autoscaling.cpu",
            17,
            "unknown key 'cpu'",
        ),
        (
            VALID + "streams:\n  internal:\n    max_agee: 1h\n",
            "streams.internal.max_agee",
            19,
            "unknown key 'max_agee'",
        ),
        (
            VALID + "secmaster:\n  sourec: kalshi\n",
            "secmaster.sourec",
            18,
            "unknown key 'sourec'",
        ),
    ],
)
def test_an_unknown_key_at_any_level_is_refused(
    text: str, path: str, line: int, words: str
) -> None:
    p = only_problem(text)
    assert (p.file, p.path, p.line) == (FILE, path, line)
    assert words in p.message
    assert str(p).startswith(f"{FILE}:{line}:")


def test_unknown_resource_key_is_refused() -> None:
    p = only_problem(edit('memory: "512Mi"', 'memory: "512Mi"\n      gpu: 1'))
    assert p.path == "shards.tier1.resources"
    assert "gpu" in p.message


def test_a_duplicate_yaml_key_is_an_error_not_last_one_wins() -> None:
    p = only_problem(edit("    replicas: 1\n", "    replicas: 1\n    replicas: 3\n"))
    assert p.path == "shards.tier2.replicas"
    assert p.line == 17
    assert "duplicate key 'replicas'" in p.message
    assert "first defined on line 16" in p.message


def test_a_duplicate_top_level_key_is_refused() -> None:
    p = only_problem(VALID + "feed: polymarket\n")
    assert p.path == "feed"
    assert "duplicate key" in p.message


def test_a_duplicate_shard_is_refused() -> None:
    p = only_problem(VALID + "  tier1:\n    selector: {tier: 3}\n    replicas: 1\n")
    assert p.path == "shards.tier1"
    assert p.line == 17
    assert "duplicate key 'tier1' (first defined on line 7)" in p.message


@pytest.mark.parametrize("shards", ["shards: {}\n", "shards:\n", "shards: []\n"])
def test_empty_shards_are_refused(shards: str) -> None:
    text = VALID.split("shards:")[0] + shards
    p = only_problem(text)
    assert p.path == "shards"
    assert p.line == 6
    assert "no shards defined" in p.message


def test_missing_shards_are_refused() -> None:
    p = only_problem(VALID.split("shards:")[0])
    assert "required key 'shards' is missing" in p.message
    assert p.file == FILE and p.line == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0", "must be at least 1"),
        ("-1", "must be at least 1"),
        ("true", "expected a whole number"),
        ('"2"', "expected a whole number"),
        ("1.5", "expected a whole number"),
        ("two", "expected a whole number"),
    ],
)
def test_replicas_must_be_a_positive_whole_number(value: str, words: str) -> None:
    p = only_problem(edit("    replicas: 1\n", f"    replicas: {value}\n"))
    assert (p.path, p.line) == ("shards.tier2.replicas", 16)
    assert words in p.message


def test_min_replicas_above_replicas_is_refused() -> None:
    p = only_problem(edit("    replicas: 1\n", "    replicas: 1\n    min_replicas: 2\n"))
    assert p.path == "shards.tier2"
    assert "min_replicas 2 is greater than replicas 1" in p.message


@pytest.mark.parametrize("bad", ["tier.2", "tier*", "tier>", "tier 2", "tier\t2"])
def test_a_shard_name_that_is_not_a_safe_nats_token_is_refused(bad: str) -> None:
    p = only_problem(edit("  tier2:\n", f"  {bad!r}:\n".replace("'", '"').replace("\t", "\\t")))
    assert p.path == f"shards.{bad}"
    assert p.line == 14
    assert "NATS subject tokens may not contain" in p.message


def test_a_shard_name_must_also_be_a_kubernetes_name() -> None:
    p = only_problem(edit("  tier2:\n", "  Tier_2:\n"))
    assert "lower-case letters" in p.message


@pytest.mark.parametrize("bad", ["kal.shi", "kal*", "kal>", "kal shi"])
def test_a_feed_name_that_is_not_a_safe_nats_token_is_refused(bad: str) -> None:
    p = only_problem(edit("feed: kalshi", f'feed: "{bad}"'))
    assert (p.path, p.line) == ("feed", 2)
    assert "NATS subject tokens may not contain" in p.message


def test_an_environment_name_that_cannot_prefix_redis_keys_is_refused() -> None:
    p = only_problem(edit("name: test", 'name: "prod:a b"'))
    assert p.path == "name"


def test_a_pin_to_a_missing_shard_is_refused() -> None:
    p = only_problem(VALID + "assignments:\n  BTCUSD: tier9\n")
    assert (p.path, p.line) == ("assignments.BTCUSD", 18)
    assert "shard 'tier9', which does not exist (shards: tier1, tier2)" in p.message


@pytest.mark.parametrize(
    ("selector", "words"),
    [
        ("{tier: []}", "empty list"),
        ("{}", "empty selector"),
        ("", "expected a mapping"),
        ("{tier: {a: 1}}", "expected a string, a number or a list of them, got a mapping"),
        ("{tier: }", "got nothing (null)"),
        ("{tier: [1, {a: 1}]}", "expected a string or number, got a mapping"),
    ],
)
def test_a_selector_that_cannot_match_sensibly_is_refused(selector: str, words: str) -> None:
    p = only_problem(edit("selector: {tier: 2}", f"selector: {selector}".rstrip()))
    assert p.path is not None and p.path.startswith("shards.tier2.selector")
    assert p.line == 15
    assert words in p.message


def test_a_shard_renamed_inside_its_body_is_refused() -> None:
    p = only_problem(edit("    replicas: 1\n", "    replicas: 1\n    name: other\n"))
    assert p.path == "shards.tier2.name"


def test_a_symbol_attribute_must_be_a_scalar() -> None:
    p = only_problem(edit("INXD-25-B4000: {tier: 2,", "INXD-25-B4000: {tier: [2],"))
    assert p.path == "symbols.INXD-25-B4000.tier"
    assert p.line == 5


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_refused(text: str) -> None:
    p = only_problem(text)
    assert (p.file, p.line) == (FILE, 1)
    assert "expected a mapping" in p.message


def test_a_yaml_syntax_error_names_line_and_column() -> None:
    p = only_problem(edit("    replicas: 1\n", "    replicas: [1\n"))
    assert p.file == FILE
    assert p.line == 17 and p.column == 1
    assert p.message.startswith("YAML syntax error")


def test_a_tab_indent_is_a_syntax_error() -> None:
    p = only_problem(edit("  tier2:\n", "\ttier2:\n"))
    assert (p.line, p.column) == (14, 1)


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", b""])
def test_an_empty_file_is_refused(text: str | bytes) -> None:
    p = only_problem(text)
    assert p.file == FILE
    assert "empty file" in p.message


@pytest.mark.parametrize("data", [b"\x00\x01\x02\x03", b"name: x\x00\n", b"\xff\xfe\xfa"])
def test_a_binary_file_is_refused(data: bytes) -> None:
    p = only_problem(data)
    assert p.file == FILE
    assert "binary" in p.message or "not UTF-8" in p.message


def test_yaml_anchors_and_merge_keys_are_not_a_way_around_strictness() -> None:
    text = edit("  tier2:\n", "  base: &b {selector: {tier: 3}, replicas: 1}\n  tier2:\n")
    text = text.replace("    replicas: 1\n", "    <<: *b\n    replicas: 1\n")
    assert any("merge keys" in p.message for p in problems(text))


def test_every_problem_is_listed_in_one_run() -> None:
    text = VALID.replace('memory: "512Mi"', 'memory: "512Mb"').replace("  tier2:", "  tier.2:")
    text += "colour: blue\nassignments: {BTCUSD: nowhere}\n"
    found = problems(text)
    paths = {p.path for p in found}
    assert {"shards.tier1.resources.memory", "shards.tier.2", "colour", "assignments.BTCUSD"} <= (
        paths
    )
    rendered = str(ConfigError(found))
    assert rendered.startswith(f"{len(found)} problems:")


# -- finding environments ----------------------------------------------------------------------


def test_env_is_a_name_under_the_environments_directory_or_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alpha.yaml").write_text(VALID)
    (tmp_path / "beta.yaml").write_text(VALID)
    monkeypatch.setenv("SSMD_ENV_DIR", str(tmp_path))
    assert environment_path("alpha") == tmp_path / "alpha.yaml"
    assert load_environment("beta").name == "test"
    assert load_environment(str(tmp_path / "alpha.yaml")).file == str(tmp_path / "alpha.yaml")


def test_an_unknown_environment_name_lists_the_available_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alpha.yaml").write_text(VALID)
    (tmp_path / "beta.yaml").write_text(VALID)
    monkeypatch.setenv("SSMD_ENV_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown environment 'gamma'.*alpha, beta"):
        load_environment("gamma")


def test_a_missing_environment_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_environment(str(tmp_path / "nope.yaml"))


def test_errors_carry_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(VALID + "colour: blue\n")
    with pytest.raises(ConfigError) as caught:
        load_environment(path)
    assert str(caught.value) == f"{path}:17:1: colour: unknown key 'colour'"


def test_republish_of_the_shard_streams_is_opt_in() -> None:
    assert parse(VALID).streams.internal.republish is False
    env = parse(VALID + "streams:\n  internal:\n    republish: true\n")
    assert env.streams.internal.republish is True
    assert env.streams.internal.max_age == 72 * 3600  # the other limits keep their defaults


@pytest.mark.parametrize("value", ['"true"', "1", "null", "on-demand"])
def test_republish_must_be_a_boolean(value: str) -> None:
    p = only_problem(VALID + f"streams:\n  internal:\n    republish: {value}\n")
    assert (p.path, p.line) == ("streams.internal.republish", 19)
    assert "should be a valid boolean" in p.message


def test_republish_is_not_a_client_stream_key() -> None:
    p = only_problem(VALID + "streams:\n  client:\n    republish: true\n")
    assert (p.path, p.line) == ("streams.client.republish", 19)
    assert "unknown key 'republish'" in p.message


# -- captured channels ------------------------------------------------------------------------


def test_a_shard_captures_trade_and_ticker_unless_it_lists_its_channels() -> None:
    env = parse(
        edit(
            "  tier2:\n    selector: {tier: 2}\n",
            "  tier2:\n    channels: [trade, ticker, orderbook_delta]\n    selector: {tier: 2}\n",
        )
    )
    assert env.shard("tier1").channels == ["trade", "ticker"]
    assert env.shard("tier2").channels == ["trade", "ticker", "orderbook_delta"]


@pytest.mark.parametrize(
    ("channels", "index", "says"),
    [
        ("[trade, orderbook]", "[1]", "'orderbook_delta'"),
        ("[fill]", "[0]", "'trade', 'ticker' or 'orderbook_delta'"),
        ("[trade, trade]", "", "listed twice: trade"),
        ("[]", "", "at least 1"),
    ],
)
def test_an_unknown_or_repeated_channel_is_refused_with_file_line_and_key(
    channels: str, index: str, says: str
) -> None:
    problem = only_problem(
        edit(
            "  tier2:\n    selector: {tier: 2}\n",
            f"  tier2:\n    selector: {{tier: 2}}\n    channels: {channels}\n",
        )
    )
    assert problem.file == FILE and problem.line == 16
    assert problem.path == f"shards.tier2.channels{index}" and says in problem.message
