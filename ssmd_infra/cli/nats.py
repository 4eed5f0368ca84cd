"""`ssmd nats auth ENV --out DIR`: the NATS credentials of an environment, for operators who
run their own nats-server (the Pulumi program and `ssmd local up` make their own).

Writes one seed file per role (`DIR/{role}.nk`, mode 0600) and `DIR/authorization.conf` (the
nats-server `authorization` block to include). Re-running keeps the existing seeds, adds the
new roles' and removes the revoked roles', and prints which.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ssmd_infra.adapters.nats_auth import write_auth_dir
from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.nkey_seeds import seed_file_name

nats_app = typer.Typer(no_args_is_help=True, help="NATS credentials and permissions.")


@nats_app.command("auth")
def auth(
    env: str = typer.Argument(
        ..., help="environment name under exchanges/environments/ or a YAML path"
    ),
    out: Path = typer.Option(..., "--out", help="directory of the seeds and authorization.conf"),
) -> None:
    """Write the nats-server authorization and one NKEY seed per role into --out."""
    changes = write_auth_dir(load_environment(env), out)
    for title, roles in (
        ("added", changes.added),
        ("kept", changes.kept),
        ("removed (revoked)", changes.removed),
    ):
        if roles:
            typer.echo(f"{title}: {', '.join(seed_file_name(r) for r in roles)}")
    typer.echo(
        f"wrote {changes.config}: include it in the nats-server configuration; give each "
        f"process only its own role's seed file"
    )
