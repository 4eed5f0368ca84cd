"""Who may do what on NATS: the roles of an environment and their exact permissions, as data.

The sharding model already names every boundary (`internal.{shard}.>`,
`ssmd-internal-{shard}`, `md.{feed}.>`); this module turns them into nats-server
permissions, one user (one NKEY) per role, so that a bug or a compromised pod of one shard
cannot write into another shard's capture, and a reader cannot purge the archive's source:

- `connector-{shard}`: publishes its shard's subjects `internal.{shard}.>` (acknowledged:
  the PubAck comes back on its inbox) and may read its stream's info
  (`$JS.API.STREAM.INFO.ssmd-internal-{shard}`).
- `archiver-{shard}`: its own durable consumer `archiver-{shard}` on its shard's stream,
  nothing else: read the stream's info (the archiver checks that its stream exists), create
  the consumer (named or legacy durable create), read its info, pull (`MSG.NEXT`), ack
  (`$JS.ACK.ssmd-internal-{shard}.archiver-{shard}.>`) and delete it (the archiver's
  resync recreates it from its ack floor: `runtime/archiver/service.py`). It cannot delete or purge
  the stream, nor touch another consumer.
- `client`: read-only: subscribes to `md.{feed}.>` (live readers of the republished
  subjects), creates ephemeral or durable consumers on `ssmd-client` and consumes them
  (info, pull, ack). It publishes nothing else: no data subject, no stream or consumer
  deletion, no flow-control reply (push consumers with `flow_control` are not granted: use
  pull consumers, or plain push ones). Clients name the stream (`stream="ssmd-client"`): looking a stream up
  by subject (`$JS.API.STREAM.NAMES`) is not granted.
- `admin`: stream management, every JetStream API request (`$JS.API.>`); used only by
  `pulumi up` (the stream provider) and `ssmd local up`.

Every role receives replies only under its own inbox prefix `_INBOX_{role}`: each role's
clients must be configured with `Role.inbox_prefix` (nats-py `inbox_prefix=`), or the
server drops the replies (a subscription permission violation).

Permissions are allow lists for both directions: nats-server denies whatever a list does not
name (a missing list would allow everything, so both are always given). Enforcement is
server-side; clients pay nothing per message.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.nkey_seeds import (
    NKEY_SEED_VARIABLE,
    RoleSeed,
    public_key_problem,
    read_seed_file,
)
from ssmd_infra.core.subjects import (
    CLIENT_STREAM,
    SHARD_NAME,
    archiver_consumer,
    client_feed_wildcard,
    consumer_ack_wildcard,
    consumer_api,
    inbox_wildcard,
    internal_stream,
    internal_wildcard,
    js_api_wildcard,
    role_inbox_prefix,
    stream_api,
)

RoleKind = Literal["connector", "archiver", "client", "admin"]
CLIENT_ROLE = "client"
ADMIN_ROLE = "admin"


def connector_role(shard: str) -> str:
    """`connector-{shard}`: the role every connector replica of `shard` runs as."""
    return f"connector-{shard}"


def archiver_role(shard: str) -> str:
    """`archiver-{shard}`: the role of `shard`'s archiver."""
    return f"archiver-{shard}"


_SHARD_ROLE = re.compile(r"^(connector|archiver)-(?P<shard>.+)\Z")


def is_role_name(name: str) -> bool:
    """Whether `name` is the name of an ssmd role of some environment (`admin`, `client`,
    `connector-{shard}`, `archiver-{shard}` with a valid shard name)."""
    if name in (ADMIN_ROLE, CLIENT_ROLE):
        return True
    match = _SHARD_ROLE.match(name)
    return bool(match and SHARD_NAME.match(match["shard"]))


@dataclass(frozen=True)
class Role:
    """One NATS user: its name, what it is for, and exactly what it may publish and
    subscribe to. `inbox_prefix` is what its clients must use for replies."""

    name: str
    kind: RoleKind
    shard: str | None
    purpose: str
    inbox_prefix: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _role(
    name: str,
    kind: RoleKind,
    shard: str | None,
    purpose: str,
    publish: tuple[str, ...],
    subscribe: tuple[str, ...] = (),
) -> Role:
    inbox = role_inbox_prefix(name)
    return Role(
        name=name,
        kind=kind,
        shard=shard,
        purpose=purpose,
        inbox_prefix=inbox,
        publish=publish,
        subscribe=(*subscribe, inbox_wildcard(inbox)),
    )


def _connector(shard: str) -> Role:
    stream = internal_stream(shard)
    return _role(
        connector_role(shard),
        "connector",
        shard,
        f"publishes shard {shard}'s subjects into {stream}",
        publish=(internal_wildcard(shard), stream_api("INFO", stream)),
    )


def _archiver(shard: str) -> Role:
    stream = internal_stream(shard)
    consumer = archiver_consumer(shard)
    return _role(
        archiver_role(shard),
        "archiver",
        shard,
        f"consumes {stream} through its durable consumer {consumer}",
        publish=(
            stream_api("INFO", stream),
            consumer_api("CREATE", stream, consumer),
            consumer_api("DURABLE.CREATE", stream, consumer),
            consumer_api("INFO", stream, consumer),
            consumer_api("DELETE", stream, consumer),
            consumer_api("MSG.NEXT", stream, consumer),
            consumer_ack_wildcard(stream, consumer),
        ),
    )


def _client(feed: str) -> Role:
    return _role(
        CLIENT_ROLE,
        "client",
        None,
        f"reads {client_feed_wildcard(feed)} and consumes {CLIENT_STREAM}",
        publish=(
            stream_api("INFO", CLIENT_STREAM),
            consumer_api("CREATE", CLIENT_STREAM),  # ephemeral
            consumer_api("CREATE", CLIENT_STREAM, ">"),  # named, optionally with a filter
            consumer_api("DURABLE.CREATE", CLIENT_STREAM, "*"),
            consumer_api("INFO", CLIENT_STREAM, "*"),
            consumer_api("MSG.NEXT", CLIENT_STREAM, "*"),
            consumer_ack_wildcard(CLIENT_STREAM),
        ),
        subscribe=(client_feed_wildcard(feed),),
    )


def _admin() -> Role:
    return _role(
        ADMIN_ROLE,
        "admin",
        None,
        "stream management (pulumi up, ssmd local up)",
        publish=(js_api_wildcard(),),
    )


def nats_roles(env: Environment) -> dict[str, Role]:
    """Every role of `env` by name: admin, client, then each shard's connector and archiver
    (shards sorted by name, so the rendered configuration does not depend on YAML order)."""
    roles = [_admin(), _client(env.feed)]
    for shard in sorted(env.shards):
        roles.extend((_connector(shard), _archiver(shard)))
    return {role.name: role for role in roles}


def role_seed(env: Environment, role: str, path: str | Path | None = None) -> RoleSeed | None:
    """The checked seed `role` connects with: from `path` (`--nats-nkey-seed`), else from
    `$NATS_NKEY_SEED`; None when the environment uses no NATS authentication and none is given.

    `ConfigError` when `role` is not one of the environment's roles, when the environment
    asks for `nats.auth: nkeys` and no seed file is given, and for any problem of the file
    (`read_seed_file`: missing, malformed, another role's)."""
    roles = nats_roles(env)
    if role not in roles:
        raise ConfigError(
            f"{role!r} is not a NATS role of environment {env.name} (roles: {', '.join(roles)})"
        )
    given = path if path is not None else os.environ.get(NKEY_SEED_VARIABLE) or None
    if given is None:
        if env.nats.auth == "nkeys":
            raise ConfigError(
                f"environment {env.name} has nats.auth: nkeys: {role} needs its seed file "
                f"(--nats-nkey-seed PATH or ${NKEY_SEED_VARIABLE}; `ssmd nats auth` writes it)"
            )
        return None
    return read_seed_file(given, role)


def _quoted(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def render_authorization(env: Environment, public_keys: Mapping[str, str]) -> str:
    """The nats-server `authorization { users = [...] }` block for `env`'s roles, each user
    given by the public NKEY in `public_keys` (role name → `U…`).

    Every role must have a valid, distinct key and every key a role; otherwise
    `ConfigError` names each offending role and nothing is rendered."""
    roles = nats_roles(env)
    problems: list[Problem] = []
    for name in roles:
        key = public_keys.get(name)
        if key is None:
            problems.append(Problem(f"role {name!r} has no public NKEY"))
            continue
        why = public_key_problem(key)
        if why:
            problems.append(Problem(f"role {name!r}: public NKEY {key!r} is invalid: {why}"))
    for name in sorted(set(public_keys) - set(roles)):
        problems.append(
            Problem(f"public NKEY given for {name!r}, which is not a role of {env.name}")
        )
    owners: dict[str, list[str]] = {}
    for name, key in public_keys.items():
        owners.setdefault(key, []).append(name)
    for names in owners.values():
        if len(names) > 1:
            problems.append(Problem(f"roles {', '.join(sorted(names))} share one public NKEY"))
    ConfigError.collect(problems)
    lines = [
        f"# NATS authorization of ssmd environment {env.name}: one user per role, by public",
        "# NKEY; generated (ssmd_infra/core/nats_auth.py), do not edit: `ssmd nats auth`.",
        "authorization {",
        "  users = [",
    ]
    for role in roles.values():
        lines += [
            f"    # {role.name}: {role.purpose}",
            "    {",
            f"      nkey: {json.dumps(public_keys[role.name])}",
            "      permissions: {",
            f"        publish: {{allow: {_quoted(role.publish)}}}",
            f"        subscribe: {{allow: {_quoted(role.subscribe)}}}",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
