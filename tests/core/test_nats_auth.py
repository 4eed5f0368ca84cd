"""The NATS roles of an environment and their permissions, as pure data, and the nats-server
`authorization` block rendered from them (the server-side proof is
tests/adapters/test_nats_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmd_infra.core.environment import load_environment, parse_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_auth import (
    Role,
    is_role_name,
    nats_roles,
    render_authorization,
    role_seed,
)
from ssmd_infra.core.nkey_seeds import generate_user_seed, user_public_key


def test_kalshi_prod_has_exactly_these_roles_and_permissions() -> None:
    roles = nats_roles(load_environment("kalshi-prod"))
    assert roles == {
        "admin": Role(
            name="admin",
            kind="admin",
            shard=None,
            purpose="stream management (pulumi up, ssmd local up)",
            inbox_prefix="_INBOX_admin",
            publish=("$JS.API.>",),
            subscribe=("_INBOX_admin.>",),
        ),
        "client": Role(
            name="client",
            kind="client",
            shard=None,
            purpose="reads md.kalshi.> and consumes ssmd-client",
            inbox_prefix="_INBOX_client",
            publish=(
                "$JS.API.STREAM.INFO.ssmd-client",
                "$JS.API.CONSUMER.CREATE.ssmd-client",
                "$JS.API.CONSUMER.CREATE.ssmd-client.>",
                "$JS.API.CONSUMER.DURABLE.CREATE.ssmd-client.*",
                "$JS.API.CONSUMER.INFO.ssmd-client.*",
                "$JS.API.CONSUMER.MSG.NEXT.ssmd-client.*",
                "$JS.ACK.ssmd-client.*.>",
            ),
            subscribe=("md.kalshi.>", "_INBOX_client.>"),
        ),
        **{
            f"connector-{shard}": Role(
                name=f"connector-{shard}",
                kind="connector",
                shard=shard,
                purpose=f"publishes shard {shard}'s subjects into ssmd-internal-{shard}",
                inbox_prefix=f"_INBOX_connector-{shard}",
                publish=(f"internal.{shard}.>", f"$JS.API.STREAM.INFO.ssmd-internal-{shard}"),
                subscribe=(f"_INBOX_connector-{shard}.>",),
            )
            for shard in ("tier1", "tier2")
        },
        **{
            f"archiver-{shard}": Role(
                name=f"archiver-{shard}",
                kind="archiver",
                shard=shard,
                purpose=f"consumes ssmd-internal-{shard} through its durable consumer "
                f"archiver-{shard}",
                inbox_prefix=f"_INBOX_archiver-{shard}",
                publish=(
                    f"$JS.API.STREAM.INFO.ssmd-internal-{shard}",
                    f"$JS.API.CONSUMER.CREATE.ssmd-internal-{shard}.archiver-{shard}",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.ssmd-internal-{shard}.archiver-{shard}",
                    f"$JS.API.CONSUMER.INFO.ssmd-internal-{shard}.archiver-{shard}",
                    f"$JS.API.CONSUMER.DELETE.ssmd-internal-{shard}.archiver-{shard}",
                    f"$JS.API.CONSUMER.MSG.NEXT.ssmd-internal-{shard}.archiver-{shard}",
                    f"$JS.ACK.ssmd-internal-{shard}.archiver-{shard}.>",
                ),
                subscribe=(f"_INBOX_archiver-{shard}.>",),
            )
            for shard in ("tier1", "tier2")
        },
    }


def test_roles_follow_the_shards_in_name_order() -> None:
    text = """
name: split
feed: kalshi
shards:
  zeta: {selector: {tier: 2}, replicas: 1}
  alpha: {selector: {tier: 1}, replicas: 1}
"""
    assert list(nats_roles(parse_environment(text, "split.yaml"))) == [
        "admin",
        "client",
        "connector-alpha",
        "archiver-alpha",
        "connector-zeta",
        "archiver-zeta",
    ]


def keys_for(roles: list[str]) -> dict[str, str]:
    return {role: user_public_key(generate_user_seed()) for role in roles}


def test_the_authorization_block_lists_each_role_by_its_public_key() -> None:
    env = load_environment("kalshi-prod")
    keys = keys_for(list(nats_roles(env)))
    text = render_authorization(env, keys)
    assert text.count("nkey: ") == 6
    tier2 = text.index("# connector-tier2:")
    assert text[tier2:].splitlines()[1:7] == [
        "    {",
        f'      nkey: "{keys["connector-tier2"]}"',
        "      permissions: {",
        '        publish: {allow: ["internal.tier2.>", "$JS.API.STREAM.INFO.ssmd-internal-tier2"]}',
        '        subscribe: {allow: ["_INBOX_connector-tier2.>"]}',
        "      }",
    ]
    assert text.startswith("# NATS authorization of ssmd environment kalshi-prod")


def test_the_authorization_block_refuses_missing_unknown_invalid_and_shared_keys() -> None:
    env = load_environment("kalshi-prod")
    keys = keys_for(list(nats_roles(env)))
    del keys["archiver-tier2"]
    keys["connector-tier3"] = user_public_key(generate_user_seed())
    keys["client"] = "UNOTAKEY"
    keys["connector-tier1"] = keys["admin"]
    with pytest.raises(ConfigError) as raised:
        render_authorization(env, keys)
    assert [p.message for p in raised.value.problems] == [
        "role 'client': public NKEY 'UNOTAKEY' is invalid: a user public key has 56 "
        "characters, this has 8",
        "role 'archiver-tier2' has no public NKEY",
        "public NKEY given for 'connector-tier3', which is not a role of kalshi-prod",
        "roles admin, connector-tier1 share one public NKEY",
    ]


def test_nats_auth_is_nkeys_unless_the_environment_says_none() -> None:
    base = "name: e\nfeed: kalshi\nshards:\n  a: {selector: {tier: 1}, replicas: 1}\n"
    assert parse_environment(base, "e.yaml").nats.auth == "nkeys"
    assert parse_environment(base + "nats: {auth: none}\n", "e.yaml").nats.auth == "none"
    with pytest.raises(ConfigError) as raised:
        parse_environment(base + "nats:\n  auth: password\n  tls: true\n", "e.yaml")
    assert sorted(str(p) for p in raised.value.problems) == [
        "e.yaml:6:3: nats.auth: Input should be 'nkeys' or 'none' (got 'password')",
        "e.yaml:7:3: nats.tls: unknown key 'tls'",
    ]


def test_role_names_are_admin_client_and_the_shard_roles() -> None:
    assert all(is_role_name(n) for n in ("admin", "client", "connector-tier1", "archiver-t-2"))
    assert not any(
        is_role_name(n) for n in ("ops-team", "connector-", "archiver-Tier1", "connector-a.b")
    )


BASE = "name: e\nfeed: kalshi\nshards:\n  a: {selector: {tier: 1}, replicas: 1}\n"


def test_a_process_gets_its_role_seed_from_the_option_or_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = parse_environment(BASE, "e.yaml")
    seed = generate_user_seed()
    (tmp_path / "connector-a.nk").write_text(seed + "\n")
    monkeypatch.delenv("NATS_NKEY_SEED", raising=False)
    given = role_seed(env, "connector-a", tmp_path / "connector-a.nk")
    assert given is not None
    assert given.nats_py_options() == {
        "nkeys_seed_str": seed,
        "inbox_prefix": "_INBOX_connector-a",
    }
    monkeypatch.setenv("NATS_NKEY_SEED", str(tmp_path / "connector-a.nk"))
    from_variable = role_seed(env, "connector-a")
    assert from_variable is not None and from_variable.public_key == given.public_key
    with pytest.raises(ConfigError, match="is the seed of role 'connector-a', not of 'archiver-a'"):
        role_seed(env, "archiver-a")


def test_without_a_seed_file_only_an_environment_without_nats_auth_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NATS_NKEY_SEED", raising=False)
    with pytest.raises(ConfigError) as raised:
        role_seed(parse_environment(BASE, "e.yaml"), "archiver-a")
    assert str(raised.value) == (
        "environment e has nats.auth: nkeys: archiver-a needs its seed file "
        "(--nats-nkey-seed PATH or $NATS_NKEY_SEED; `ssmd nats auth` writes it)"
    )
    assert role_seed(parse_environment(BASE + "nats: {auth: none}\n", "e.yaml"), "client") is None
    with pytest.raises(ConfigError, match="'connector-b' is not a NATS role of environment e"):
        role_seed(parse_environment(BASE, "e.yaml"), "connector-b")
