"""Running the `ssmd` command in-process, as its console script does, for CLI tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ssmd_infra.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str


Ssmd = Callable[..., Result]


def in_process(capsys: pytest.CaptureFixture[str]) -> Ssmd:
    """`run(*args)` calls `main(args)` and returns its exit code and captured output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
