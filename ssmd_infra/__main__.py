"""`python -m ssmd_infra` is the `ssmd` command."""

from ssmd_infra.cli.main import main

main()
