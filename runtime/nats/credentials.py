"""Who a runtime process is on NATS: its role's checked seed file and inbox prefix, and the
metric that counts what the server refused it.

Every NATS client of a process runs as the process's role (`connector-{shard}`,
`archiver-{shard}`: `ssmd_infra.core.nats_auth`): the raw clients (`runtime/nats/connection.py`
signs the server's nonce with the seed file) and nats-py (`nkeys_seed_str`, `inbox_prefix`). Replies reach a
role only under its own inbox prefix (`_INBOX_{role}`), so every client takes it here; with
the default `_INBOX` every PubAck and pull reply would be dropped by the server.

The seed is checked once, at start-up, by the core's rule (`role_seed`: missing, malformed,
another role's → `ConfigError`, exit 1), before anything connects.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from runtime.nats.connection import MAX_LOGGED_DENIALS
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.nats_auth import role_seed
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE, RoleSeed
from ssmd_infra.core.subjects import INBOX_PREFIX, role_inbox_prefix

PERMISSION_ERRORS_METRIC = "ssmd_nats_permission_errors"  # exported as ..._total
_NATS_PY_DENIAL = "permissions violation"


@dataclass(frozen=True)
class NatsCredentials:
    """The role a process connects as: `seed_file` for the raw clients (None: anonymous),
    `inbox_prefix` for every client's reply subjects."""

    role: str
    seed: RoleSeed | None
    seed_file: Path | None
    inbox_prefix: str

    @property
    def nkeys_seed_str(self) -> str | None:
        """nats-py `connect(nkeys_seed_str=...)` (with `inbox_prefix=self.inbox_prefix`)."""
        return self.seed.seed if self.seed is not None else None


def role_credentials(env: Environment, role: str, path: Path | None = None) -> NatsCredentials:
    """`role`'s credentials from `path` (`--nats-nkey-seed`), else `$NATS_NKEY_SEED`.

    `ConfigError` when the environment asks for `nats.auth: nkeys` and no seed is given, and
    when the file is missing, malformed or another role's. Under `nats.auth: none` without a
    seed the process connects anonymously with the default inbox prefix."""
    given = path if path is not None else os.environ.get(NKEY_SEED_VARIABLE) or None
    seed = role_seed(env, role, given)
    if seed is None:
        return NatsCredentials(role, None, None, INBOX_PREFIX)
    assert given is not None  # role_seed returns a seed only from a file
    return NatsCredentials(role, seed, Path(given), role_inbox_prefix(role))


def permission_errors_metric(shard: str, role: str, count: int) -> CounterMetricFamily:
    """`ssmd_nats_permission_errors_total{shard, role}`: requests the NATS server refused for
    lack of permission (each one is logged once per subject by the connection)."""
    family = CounterMetricFamily(
        PERMISSION_ERRORS_METRIC,
        "NATS operations refused by the server for lack of permission (Permissions "
        "Violation), by shard and role",
        labels=["shard", "role"],
    )
    family.add_metric([shard, role], count)
    return family


class NatsPyDenials:
    """Permission violations reported to a nats-py connection's `error_cb` (nats-py passes
    the server's `-ERR` lower-cased: 'nats: permissions violation for publish to "…"'),
    counted and logged once per distinct message, as `runtime/nats/connection.py` does for the
    raw clients. The set of logged messages is bounded (`MAX_LOGGED_DENIALS`)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.count = 0
        self._log = logger
        self._what = what
        self._logged: set[str] = set()

    def note(self, exc: BaseException) -> bool:
        """Count `exc` when it is a permission violation; True then (the connection stays up)."""
        text = str(exc)
        if _NATS_PY_DENIAL not in text:
            return False
        self.count += 1
        if text not in self._logged and len(self._logged) < MAX_LOGGED_DENIALS:
            self._logged.add(text)
            self._log.error(
                "NATS denied the %s: %s (this role's permissions; counted in "
                "ssmd_nats_permission_errors_total, logged once per subject)",
                self._what,
                text.removeprefix("nats: "),
            )
        return True
