"""`python -m ssmd_infra` is the `ssmd` command."""

from ssmd_infra.cli import main

main()
