"""`docker build -f runtime/Dockerfile .`: the image holds the runtime only and runs it.

Needs a Docker daemon (and the base image from its registry); where none is reachable the test
is skipped, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _docker_unavailable() -> str | None:
    """Why `docker build` cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    probe = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"no Docker daemon reachable: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def docker(*args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_image_builds_with_the_runtime_only_and_runs_it() -> None:
    why = _docker_unavailable()
    if why is not None:
        pytest.skip(f"docker build of runtime/Dockerfile not run: {why}")
    tag = f"ssmd-runtime-test:{uuid.uuid4().hex[:8]}"
    docker("build", "-f", "runtime/Dockerfile", "-t", tag, str(REPO))
    try:
        listing = docker(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "ls /opt/ssmd/app /opt/ssmd/app/ssmd_infra; ls /opt/ssmd/app/exchanges 2>&1 || true",
        )
        assert listing.split("\n\n")[0].split() == ["/opt/ssmd/app:", "runtime", "ssmd_infra"]
        assert "__init__.py" in listing and "core" in listing
        assert "pulumi" not in listing.split("ssmd_infra:")[1].split("ls:")[0]
        assert "No such file or directory" in listing  # no environment files in the image
        usage = docker("run", "--rm", tag, "connector", "--help")
        assert "--shards-file" in usage
        assert docker("run", "--rm", "--entrypoint", "id", tag, "-u").strip() == "10001"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
