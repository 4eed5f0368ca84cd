"""NATS authorization as deployed: the directory of seeds + server configuration that
`ssmd nats auth` and the local supervisor write, and the check that a server enforces it.

The roles and permissions are computed in `ssmd_infra.core.nats_auth`; the seeds are made and
read by `ssmd_infra.core.nkey_seeds`. This module does the I/O around them:

- `write_auth_dir(env, out)`: one seed file per role (`{role}.nk`, mode 0600) and the
  nats-server `authorization.conf` listing their public keys. Re-running keeps every existing
  seed (the users stay the same), adds the seeds of new roles (a shard split) and removes the
  seeds of revoked roles (a shard removal), and says which. Everything is checked before
  anything is written: a damaged seed file stops it with nothing changed. Files whose names
  are not role names (`{role}.nk`) are left alone.
- `require_authorization(nats_url, env)`: connects anonymously and expects to be refused; a
  server that lets anyone in while the environment asks for `nats.auth: nkeys` is an error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.nats_auth import is_role_name, nats_roles, render_authorization
from ssmd_infra.core.nats_url import parse_nats_urls, redact_url
from ssmd_infra.core.nkey_seeds import (
    SEED_SUFFIX,
    generate_user_seed,
    read_seed_file,
    seed_file_name,
    user_public_key,
)

AUTHORIZATION_FILE = "authorization.conf"
# the Kubernetes Secret the Pulumi program puts AUTHORIZATION_FILE in, for the NATS release
AUTHORIZATION_SECRET = "ssmd-nats-authorization"
CHECK_TIMEOUT = 3.0


@dataclass(frozen=True)
class AuthDirChanges:
    """What `write_auth_dir` did: role names whose seeds were kept, added and removed."""

    directory: Path
    config: Path
    kept: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]


def _write_private(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically (temporary file in the same directory, then rename),
    created with `mode` from the start: a seed is never readable by others, not even briefly."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_auth_dir(env: Environment, out: Path) -> AuthDirChanges:
    """Bring `out` to `env`'s roles: seeds kept, added, removed; `authorization.conf` written."""
    if env.nats.auth != "nkeys":
        raise ConfigError(
            f"environment {env.name} has nats.auth: {env.nats.auth}: it uses no NATS "
            f"credentials (set nats.auth: nkeys to generate them)"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    roles = nats_roles(env)
    existing: dict[str, Path] = {}
    if out.is_dir():
        for path in out.glob(f"*{SEED_SUFFIX}"):
            role = path.name.removesuffix(SEED_SUFFIX)
            if is_role_name(role):
                existing[role] = path
    # read every seed that stays before writing anything: a damaged one stops here
    seeds = {
        role: read_seed_file(path, role).seed for role, path in existing.items() if role in roles
    }
    added = tuple(role for role in roles if role not in seeds)
    for role in added:
        seeds[role] = generate_user_seed()
    removed = tuple(sorted(role for role in existing if role not in roles))
    config_text = render_authorization(
        env, {role: user_public_key(seed) for role, seed in seeds.items()}
    )
    config = out / AUTHORIZATION_FILE
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for role in added:
            _write_private(out / seed_file_name(role), seeds[role] + "\n", 0o600)
        for role in seeds:
            (out / seed_file_name(role)).chmod(0o600)
        _write_private(config, config_text, 0o644)
        for role in removed:  # revoked only once the configuration no longer lists them
            existing[role].unlink()
    except OSError as exc:
        # seeds already added stay valid (a re-run keeps them); the configuration is
        # replaced whole or not at all
        raise SsmdError(f"cannot write NATS credentials in {out}: {exc}") from None
    kept = tuple(role for role in roles if role not in added)
    return AuthDirChanges(out, config, kept=kept, added=added, removed=removed)


def is_authorization_refusal(exc: BaseException) -> bool:
    """Whether nats-py's `connect()` failed because the server refused the credentials (or
    their absence): nats-py raises a plain `nats.errors.Error` with the server's text."""
    return isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and "Authorization Violation" in str(exc)
    )


async def require_anonymous_refused(nats_url: str, reason: str, env_name: str = "ENV") -> None:
    """`SsmdError` when the server at `nats_url` accepts an anonymous connection although
    `reason` (e.g. "environment X asks for nats.auth: nkeys") says it must enforce the
    roles' permissions; a server that cannot be reached is an error too."""
    # anonymous for real: credentials a URL may carry are left out
    servers = [str(address) for address in parse_nats_urls(nats_url)]
    shown = redact_url(nats_url)
    try:
        nc = await nats.connect(
            servers=servers,
            connect_timeout=CHECK_TIMEOUT,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            name="ssmd-authorization-check",
        )
    except Exception as exc:
        if is_authorization_refusal(exc):
            return  # refused: the server requires credentials
        raise SsmdError(
            f"cannot check the authorization of NATS at {shown}: {type(exc).__name__}: {exc}"
        ) from None
    await nc.close()
    raise SsmdError(
        f"NATS at {shown} accepts connections without credentials, but {reason}. Start "
        f"nats-server with the generated authorization (`ssmd nats auth {env_name} --out DIR`, or the "
        f"program's {AUTHORIZATION_SECRET} Secret in the NATS Helm release: README), or set "
        f"nats.auth: none in the environment for a shared development server"
    )


async def require_authorization(nats_url: str, env: Environment) -> None:
    """`SsmdError` when `env` asks for `nats.auth: nkeys` but the server at `nats_url` accepts
    an anonymous connection (it would enforce none of the roles' permissions)."""
    if env.nats.auth != "nkeys":
        return
    await require_anonymous_refused(
        nats_url, f"environment {env.name} asks for nats.auth: nkeys", env.name
    )
