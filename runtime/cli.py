"""`ssmd run ...`: the runtime processes the Kubernetes workloads and the local runner start."""

from __future__ import annotations

import typer

run_app = typer.Typer(
    no_args_is_help=True, help="Run a runtime process (connector, archiver, simulator)."
)

from runtime.connector.command import connector_command  # noqa: E402

run_app.command("connector")(connector_command)

from runtime.archiver.command import archiver_command  # noqa: E402

run_app.command("archiver")(archiver_command)

from runtime.kalshi.simulator.command import simulator_command  # noqa: E402

run_app.command("simulator")(simulator_command)
