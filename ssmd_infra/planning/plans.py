"""Stored resharding plans: `.ssmd/plans/<id>.yaml`, verified before they are saved.

A plan is only worth storing if applying it does exactly what it says, so `make_plan` renders
the new environment file with the round-trip editor (comments and order kept), validates it
with the real loader, resolves it with the real `resolve` over the same symbols, and compares
every symbol's shard with the proposal. A plan that fails any of that is an error, never a file.

The plan records the sha256 of the environment file it was computed from: `apply` refuses it
once the file has changed (the edits and estimates would describe another starting point), and
stores the rendered file text, so what `apply` writes is byte for byte what was verified here.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssmd_infra.adapters.files import write_atomically
from ssmd_infra.core.environment import (
    Environment,
    environment_path,
    load_environment,
    parse_environment,
)
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.yamlsource import load_yaml
from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.ops import AddShard, Op, Pin, op_from_dict
from ssmd_infra.planning.proposal import Proposal
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.situation import Situation

PLANS_DIR = Path(".ssmd") / "plans"
PLAN_VERSION = 1


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def raw_document(env: Environment) -> dict[str, Any]:
    """The environment file as plain data (values as the YAML wrote them: `tier: 1` stays 1)."""
    assert env.file is not None
    data, _ = load_yaml(Path(env.file).read_bytes(), env.file)
    return dict(data)


# ----------------------------------------------------------------------------- rendering


def _node(value: Any) -> Any:
    """Plain data as round-trip nodes: block mappings, flow lists (`symbol: [BTC*, ETH*]`),
    and strings the strict loader would read as something else (`yes`, `1.0`) quoted."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, Mapping):
        return CommentedMap((k, _node(v)) for k, v in value.items())
    if isinstance(value, list):
        seq = CommentedSeq(_node(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, str):
        try:
            reread = yaml.safe_load(value)
        except yaml.YAMLError:
            reread = None
        if reread != value:
            return DoubleQuotedScalarString(value)
    return value


def _like(value: Any, model: Any) -> Any:
    """`value` as a node, written the way `model` (the source shard's node) was: flow or
    block mappings, quoted or plain scalars — a carve-out reads like the shard it came from."""
    from ruamel.yaml.comments import CommentedMap

    if isinstance(value, Mapping) and isinstance(model, CommentedMap):
        out = CommentedMap((k, _like(v, model.get(k))) for k, v in value.items())
        if model.fa.flow_style():
            out.fa.set_flow_style()
        return out
    if isinstance(value, str) and isinstance(model, str) and str(model) == value:
        return type(model)(value)
    return _node(value)


def render(text: str, ops: Sequence[Op], file: str = "<environment>") -> str:
    """`text` with `ops` applied by the round-trip editor (`envedit`): every line the edit
    does not touch stays as written — comments, order, quoting, spacing."""
    from ruamel.yaml.comments import CommentedMap

    from ssmd_infra.planning.envedit import EditRefused, RoundTrip, append_entry, pin, unpin

    rt = RoundTrip(text, file)
    for op in ops:
        if isinstance(op, AddShard):
            shards = rt.doc.get("shards")
            if not isinstance(shards, CommentedMap) or shards.fa.flow_style():
                raise EditRefused(f"{file}: `shards` is not a block mapping; edit it by hand")
            if op.shard in shards:
                raise PlanError(f"shard {op.shard!r} already exists")
            source = shards.get(op.after) if op.after is not None else None
            body = CommentedMap(
                (k, _node(v) if k == "selector" else _like(v, (source or {}).get(k)))
                for k, v in op.body.items()
            )
            append_entry(shards, op.shard, body, rt.indent)
        elif isinstance(op, Pin):
            pin(rt, op.symbol, op.shard)
        else:
            unpin(rt, op.symbol)
    return rt.text()


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """A verified proposal, tied to the exact environment file it was computed from."""

    id: str
    env: str
    env_file: str
    env_sha256: str
    created_at: str
    strategy: str
    rates_source: str
    measured_at: str | None
    ops: tuple[Op, ...]
    moves: dict[str, tuple[str, str]]
    estimates: tuple[dict[str, Any], ...]
    balance: dict[str, Any] | None
    notes: tuple[str, ...]
    environment_after: str
    # attributes of moved symbols the file does not list (secmaster environments), so the
    # plan can be re-verified at apply without the rates
    extra_symbols: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return plan_path(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "id": self.id,
            "env": self.env,
            "env_file": self.env_file,
            "env_sha256": self.env_sha256,
            "created_at": self.created_at,
            "strategy": self.strategy,
            "rates": {"source": self.rates_source, "measured_at": self.measured_at},
            "changes": [op.to_dict() for op in self.ops],
            "symbols_moved": len(self.moves),
            "moves": {s: list(m) for s, m in sorted(self.moves.items())},
            "shards": list(self.estimates),
            "balance": self.balance,
            "notes": list(self.notes),
            "extra_symbols": self.extra_symbols,
            "environment_after": self.environment_after,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Plan:
        try:
            rates = data.get("rates") or {}
            return cls(
                id=str(data["id"]),
                env=str(data["env"]),
                env_file=str(data["env_file"]),
                env_sha256=str(data["env_sha256"]),
                created_at=str(data["created_at"]),
                strategy=str(data["strategy"]),
                rates_source=str(rates.get("source", "")),
                measured_at=rates.get("measured_at"),
                ops=tuple(op_from_dict(op) for op in data.get("changes") or []),
                moves={s: (str(m[0]), str(m[1])) for s, m in (data.get("moves") or {}).items()},
                estimates=tuple(data.get("shards") or ()),
                balance=data.get("balance"),
                notes=tuple(data.get("notes") or ()),
                environment_after=str(data["environment_after"]),
                extra_symbols=dict(data.get("extra_symbols") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SsmdError(f"{where}: not a readable ssmd plan ({exc})") from None


def plans_dir() -> Path:
    return PLANS_DIR


def plan_path(plan_id: str) -> Path:
    return plans_dir() / f"{plan_id}.yaml"


def available_plans() -> list[str]:
    directory = plans_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml"))


def save_plan(plan: Plan) -> Path:
    path = plan.path
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(plan.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    write_atomically(path, text.encode())
    return path


def load_plan(plan_id: str) -> Plan:
    """The stored plan `plan_id`; an unknown id lists the plans there are."""
    if not plan_id or "/" in plan_id or plan_id.startswith("."):
        raise SsmdError(f"bad plan id {plan_id!r}")
    path = plan_path(plan_id)
    if not path.is_file():
        known = available_plans()
        listing = ", ".join(known) if known else "none yet — make one with `ssmd shard plan`"
        raise SsmdError(f"no plan {plan_id!r} in {plans_dir()}/ (plans: {listing})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SsmdError(f"{path}: not a readable ssmd plan ({exc})") from None
    if not isinstance(data, Mapping):
        raise SsmdError(f"{path}: not a readable ssmd plan")
    return Plan.from_dict(data, str(path))


# ----------------------------------------------------------------------------- verification


def verify_rendered(
    text: str,
    file: str,
    universe: Mapping[str, Mapping[str, str]],
    expected: Mapping[str, str],
    *,
    complete_universe: bool,
) -> Environment:
    """Load `text` as the environment file and check it resolves exactly to `expected`."""
    try:
        env = parse_environment(text, file)
        layout = resolve(env, universe, complete_universe=complete_universe)
    except ConfigError as exc:
        raise PlanError(
            f"the planned environment does not validate, so the plan was not saved:\n{exc}"
        ) from None
    wrong = sorted(
        s
        for s in set(expected) | set(layout.assignment)
        if expected.get(s) != layout.assignment.get(s)
    )
    if wrong:
        shown = ", ".join(
            f"{s} (planned {expected.get(s)}, resolves to {layout.assignment.get(s)})"
            for s in wrong[:5]
        )
        raise PlanError(
            f"the planned environment does not resolve as planned for {len(wrong)} symbol(s): "
            f"{shown}; the plan was not saved"
        )
    return env


def make_plan(sit: Situation, proposal: Proposal, rates: Rates) -> tuple[Plan, Environment]:
    """Render, verify and package `proposal`; returns the plan and the planned environment."""
    env = sit.env
    assert env.file is not None
    path = Path(env.file)
    original = path.read_bytes()
    text = render(original.decode(), proposal.ops, str(path))
    complete = env.secmaster.source == "manual"
    planned_env = verify_rendered(
        text, str(path), sit.universe, proposal.assignment, complete_universe=complete
    )
    env_hash = hashlib.sha256(original).hexdigest()
    fingerprint = hashlib.sha256(
        (env_hash + repr([op.to_dict() for op in proposal.ops])).encode()
    ).hexdigest()[:6]
    plan_id = f"{env.name}-{slug(proposal.strategy)}-{fingerprint}"
    extra = {
        s: dict(sit.universe[s])
        for s in sorted(proposal.moves)
        if s not in env.symbols and not complete
    }
    plan = Plan(
        id=plan_id,
        env=env.name,
        env_file=str(path),
        env_sha256=env_hash,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        strategy=proposal.strategy,
        rates_source=rates.source,
        measured_at=rates.measured_at,
        ops=proposal.ops,
        moves=dict(proposal.moves),
        estimates=tuple(e.to_dict() for e in proposal.estimates),
        balance=proposal.balance.to_dict() if proposal.balance else None,
        notes=proposal.notes,
        environment_after=text,
        extra_symbols=extra,
    )
    return plan, planned_env


def check_current(plan: Plan, env_ref: str) -> Path:
    """The environment file of `env_ref`, if `plan` was computed from exactly its content."""
    path = environment_path(env_ref)
    env = load_environment(path)
    if env.name != plan.env:
        raise SsmdError(f"plan {plan.id} is for environment {plan.env}, not {env.name}")
    current = file_sha256(path)
    if current != plan.env_sha256:
        raise SsmdError(
            f"plan {plan.id} was computed from another version of {path} (sha256 "
            f"{plan.env_sha256[:12]}…, the file is now {current[:12]}…); its changes and "
            f"estimates no longer hold. Make a new plan: `ssmd shard plan {plan.env} "
            f"--strategy {plan.strategy}`"
        )
    return path


def planned_environment(plan: Plan, path: Path) -> Environment:
    """The environment `plan` writes, re-verified: every moved symbol lands where planned."""
    from ssmd_infra.core.secmaster import merge_symbols

    before = load_environment(path)
    complete = before.secmaster.source == "manual"
    universe = {**plan.extra_symbols, **merge_symbols(before)}
    expected = dict(resolve(before, universe, complete_universe=complete).assignment)
    for symbol, (_, target) in plan.moves.items():
        if symbol in universe:
            expected[symbol] = target
    return verify_rendered(
        plan.environment_after, str(path), universe, expected, complete_universe=complete
    )


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """`split-tier1:2` → `split-tier1-2`: a strategy as part of a plan id (and a file name)."""
    return _SLUG.sub("-", text.lower()).strip("-")
