"""The local pipeline's NATS credentials under `nats.auth: nkeys`: one seed per role in an
auth directory, the admin's for every call the supervisor makes, each child's for it alone.

- With its own nats-server, the supervisor writes the directory itself (`write_auth_dir`,
  under its work directory: a restart or a second run keeps the same users) and starts the
  server with the generated `authorization` block.
- With `--nats-url` (a server run by someone else) the server must enforce authorization
  (`require_authorization`), and the seeds come from `--nats-auth-dir DIR`, as written by
  `ssmd nats auth ENV --out DIR` for that server's configuration. Every role's seed is
  checked before anything starts.

Under `nats.auth: none` there are no credentials (`None` everywhere), as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssmd_infra.adapters.nats_auth import require_authorization, write_auth_dir
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_auth import ADMIN_ROLE, nats_roles
from ssmd_infra.core.nkey_seeds import RoleSeed, read_seed_file, seed_file_name


@dataclass(frozen=True)
class LocalCredentials:
    """An auth directory whose seeds cover every role of the running environment."""

    directory: Path
    admin: RoleSeed
    server_config: str | None  # the authorization to run our own nats-server with

    def seed_file(self, role: str) -> Path:
        """The seed file of `role` (what its process gets as `NATS_NKEY_SEED`)."""
        return self.directory / seed_file_name(role)


def own_server_credentials(env: Environment, directory: Path) -> LocalCredentials | None:
    """Bring `directory` to `env`'s roles (existing seeds kept, new ones added, revoked ones
    removed) and return them with the server configuration; None under `nats.auth: none`."""
    if env.nats.auth != "nkeys":
        return None
    changes = write_auth_dir(env, directory)
    return LocalCredentials(
        directory,
        read_seed_file(directory / seed_file_name(ADMIN_ROLE), ADMIN_ROLE),
        changes.config.read_text(encoding="ascii"),
    )


def read_credentials(env: Environment, directory: Path) -> LocalCredentials:
    """Every role's seed of `env` from `directory` (as `ssmd nats auth` writes it), checked:
    `ConfigError` naming each missing or bad file, nothing started."""
    problems: list[str] = []
    admin: RoleSeed | None = None
    for role in nats_roles(env):
        try:
            seed = read_seed_file(directory / seed_file_name(role), role)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if role == ADMIN_ROLE:
            admin = seed
    if problems or admin is None:
        raise ConfigError(
            f"--nats-auth-dir {directory} does not hold the seeds of environment {env.name} "
            f"(`ssmd nats auth {env.name} --out {directory}` writes them):\n  "
            + "\n  ".join(problems)
        )
    return LocalCredentials(directory, admin, None)


async def external_server_credentials(
    env: Environment, nats_url: str, directory: Path | None
) -> LocalCredentials | None:
    """The credentials for a server given by `--nats-url`: the server must refuse anonymous
    clients when `env` asks for `nats.auth: nkeys`, and `directory` must hold every seed."""
    if env.nats.auth != "nkeys":
        return None
    if directory is None:
        raise ConfigError(
            f"environment {env.name} has nats.auth: nkeys: with --nats-url, give the seeds "
            f"with --nats-auth-dir DIR (written by `ssmd nats auth {env.name} --out DIR`, "
            f"whose authorization.conf the server includes)"
        )
    await require_authorization(nats_url, env)
    return read_credentials(env, directory)


def admin_seed_of(auth_dir: str | Path | None) -> RoleSeed | None:
    """The admin seed of a running pipeline's auth directory (its state file records it);
    None when it runs without authorization."""
    if auth_dir is None:
        return None
    return read_seed_file(Path(auth_dir) / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)
