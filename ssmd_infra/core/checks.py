"""Deployment checks of `ssmd shard validate`: beyond "the file loads and resolves".

- **Resources**: the CPU and memory the environment requests at full scale — every shard's
  connector at its autoscaler maximum (`replicas`) plus its one archiver, each with the
  shard's requests (the same numbers `manifests` puts in the pod specs) — against a budget
  (`--cpu-budget` / `--memory-budget`, or `SSMD_CPU_BUDGET` / `SSMD_MEMORY_BUDGET`): a reshard
  that adds shards adds workloads, and the cluster has to hold them at the peak.
- **NATS mappings**, checked on the stream specs both backends deploy (`streams.stream_specs`):
  every shard has its internal stream on `internal.{shard}.>`, no two internal streams
  capture a common subject (JetStream refuses overlapping streams, and a message must land in
  exactly one shard stream), and the client stream sources every shard stream — and nothing
  else — with the transform `internal.{shard}.{feed}.>` → `md.{feed}.>`. A gap here is data a
  client never sees. With `streams.internal.republish`, every shard stream also republishes
  `internal.{shard}.{feed}.>` → `md.{feed}.>` (live readers), and no stream captures
  `md.{feed}.>` (it would store the republished messages a second time).
- **Kubernetes names**: `ssmd-archiver-{shard}` must fit the StatefulSet name limit.

Each check is a `Check` with a severity; `validate` exits 1 when any is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.quantity import parse_quantity
from ssmd_infra.core.streams import StreamSpec, stream_specs
from ssmd_infra.core.subjects import (
    CLIENT_STREAM,
    client_feed_wildcard,
    internal_feed_wildcard,
    internal_stream,
    internal_wildcard,
)
from ssmd_infra.core.workload import STATEFULSET_NAME_LIMIT, archiver_name

CPU_BUDGET_VARIABLE = "SSMD_CPU_BUDGET"
MEMORY_BUDGET_VARIABLE = "SSMD_MEMORY_BUDGET"


@dataclass(frozen=True)
class Check:
    name: str
    severity: str  # ok | warning | error
    message: str

    @property
    def failed(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class Budget:
    """Cluster capacity the environment must fit in; None = not configured."""

    cpu: Decimal | None = None  # cores
    memory: Decimal | None = None  # bytes

    @classmethod
    def parse(cls, cpu: str | None = None, memory: str | None = None) -> Budget:
        """From options, else the environment variables; a bad quantity is a user error."""
        cpu = cpu or os.environ.get(CPU_BUDGET_VARIABLE) or None
        memory = memory or os.environ.get(MEMORY_BUDGET_VARIABLE) or None
        return cls(
            cpu=_quantity(cpu, "--cpu-budget", "e.g. 16 or 16000m"),
            memory=_quantity(memory, "--memory-budget", "e.g. 64Gi"),
        )


def _quantity(text: str | None, what: str, example: str) -> Decimal | None:
    if text is None:
        return None
    try:
        value = parse_quantity(text)
    except (SsmdError, ValueError) as exc:
        raise SsmdError(f"{what}: {exc} ({example})") from None
    if value <= 0:
        raise SsmdError(f"{what} must be positive ({example})")
    return value


def requested(env: Environment) -> tuple[Decimal, Decimal]:
    """(cores, bytes) requested at full scale: (replicas + 1 archiver) × the shard's requests."""
    cpu = Decimal(0)
    memory = Decimal(0)
    for shard in env.shards.values():
        pods = shard.replicas + 1
        cpu += pods * shard.resources.requests.cpu_cores
        memory += pods * shard.resources.requests.memory_bytes
    return cpu, memory


def _gib(value: Decimal) -> str:
    return f"{float(value) / 2**30:,.2f}Gi"


def _cores(value: Decimal) -> str:
    return f"{float(value):,.2f}"


def resource_checks(env: Environment, budget: Budget) -> list[Check]:
    cpu, memory = requested(env)
    checks = []
    for label, value, limit, show in (
        ("cpu", cpu, budget.cpu, _cores),
        ("memory", memory, budget.memory, _gib),
    ):
        what = f"{label} requested at full scale: {show(value)}"
        if limit is None:
            checks.append(
                Check(f"{label} budget", "ok", f"{what} (no budget set: --{label}-budget)")
            )
        elif value > limit:
            checks.append(
                Check(
                    f"{label} budget",
                    "error",
                    f"{what}, over the budget of {show(limit)} by {show(value - limit)}",
                )
            )
        else:
            checks.append(Check(f"{label} budget", "ok", f"{what} of {show(limit)}"))
    return checks


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both NATS patterns (`*` one token, `>` one or more)."""
    left, right = a.split("."), b.split(".")
    for index in range(max(len(left), len(right))):
        if index >= len(left) or index >= len(right):
            return False
        x, y = left[index], right[index]
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return True


def mapping_problems(env: Environment, specs: list[StreamSpec]) -> list[str]:
    """Every way `specs` fail to carry each shard's subjects into exactly one internal stream
    and from there into the client stream."""
    problems: list[str] = []
    by_name = {s.name: s for s in specs}
    client = by_name.get(CLIENT_STREAM)
    internal = [s for s in specs if s.name != CLIENT_STREAM]
    for shard in env.shards:
        spec = by_name.get(internal_stream(shard))
        if spec is None:
            problems.append(f"shard {shard} has no internal stream {internal_stream(shard)}")
        elif internal_wildcard(shard) not in spec.subjects:
            problems.append(
                f"stream {spec.name} does not capture {internal_wildcard(shard)} "
                f"(subjects: {', '.join(spec.subjects) or 'none'})"
            )
    for i, first in enumerate(internal):
        for second in internal[i + 1 :]:
            for x in first.subjects:
                for y in second.subjects:
                    if subjects_overlap(x, y):
                        problems.append(
                            f"streams {first.name} ({x}) and {second.name} ({y}) overlap: "
                            f"a subject would belong to both"
                        )
    problems.extend(_republish_problems(env, specs))
    if client is None:
        problems.append(f"no client stream {CLIENT_STREAM}")
        return problems
    sources = {s.name: s for s in client.sources}
    dest = client_feed_wildcard(env.feed)
    for shard in env.shards:
        source = sources.get(internal_stream(shard))
        src = internal_feed_wildcard(shard, env.feed)
        if source is None:
            problems.append(f"{CLIENT_STREAM} does not source shard {shard}: clients miss it")
        elif (source.transform_src, source.transform_dest) != (src, dest):
            problems.append(
                f"{CLIENT_STREAM} sources {source.name} with {source.transform_src} → "
                f"{source.transform_dest}, expected {src} → {dest}"
            )
    known = {internal_stream(s) for s in env.shards}
    for name in sources:
        if name not in known:
            problems.append(f"{CLIENT_STREAM} sources {name}, which is no shard's stream")
    return problems


def _republish_problems(env: Environment, specs: list[StreamSpec]) -> list[str]:
    problems: list[str] = []
    by_name = {s.name: s for s in specs}
    dest = client_feed_wildcard(env.feed)
    wanted = env.streams.internal.republish
    for shard in env.shards:
        spec = by_name.get(internal_stream(shard))
        if spec is None:
            continue
        got = spec.republish
        src = internal_feed_wildcard(shard, env.feed)
        if wanted and got is None:
            problems.append(f"stream {spec.name} does not republish {src} → {dest}")
        elif (
            wanted
            and got is not None
            and (got.src, got.dest, got.headers_only)
            != (
                src,
                dest,
                False,
            )
        ):
            problems.append(
                f"stream {spec.name} republishes {got.src} → {got.dest}"
                f"{' (headers only)' if got.headers_only else ''}, expected {src} → {dest}"
            )
        elif not wanted and got is not None:
            problems.append(
                f"stream {spec.name} republishes to {got.dest}, but streams.internal.republish "
                f"is off"
            )
    if wanted:
        for spec in specs:
            for subject in spec.subjects:
                if subjects_overlap(subject, dest):
                    problems.append(
                        f"stream {spec.name} captures {subject}, which overlaps the republished "
                        f"{dest}: every message would be stored twice"
                    )
    return problems


def mapping_checks(env: Environment) -> list[Check]:
    problems = mapping_problems(env, stream_specs(env))
    if problems:
        return [Check("nats mappings", "error", p) for p in problems]
    return [
        Check(
            "nats mappings",
            "ok",
            f"{len(env.shards)} internal streams, disjoint; {CLIENT_STREAM} sources all of "
            f"them into {client_feed_wildcard(env.feed)}"
            + (
                "; each republishes to it for live readers"
                if env.streams.internal.republish
                else ""
            ),
        )
    ]


def name_checks(env: Environment) -> list[Check]:
    long = [s for s in env.shards if len(archiver_name(s)) > STATEFULSET_NAME_LIMIT]
    return [
        Check(
            "kubernetes names",
            "error",
            f"shard {s}: {archiver_name(s)!r} is longer than {STATEFULSET_NAME_LIMIT} characters",
        )
        for s in long
    ]


def deployment_checks(env: Environment, budget: Budget) -> list[Check]:
    return [*resource_checks(env, budget), *mapping_checks(env), *name_checks(env)]
