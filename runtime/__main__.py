"""`python -m runtime connector|archiver|simulator ...`: the image's entry point.

Only the runtime's own commands: no operator CLI, no Pulumi, so a pod starts what it runs and
nothing else. A user error (bad environment file, bad option) is one line on stderr and exit 1.
"""

from __future__ import annotations

import sys

from ssmd_infra.core.errors import SsmdError


def main() -> None:
    from runtime.cli import run_app

    try:
        run_app(prog_name="python -m runtime")
    except SsmdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
