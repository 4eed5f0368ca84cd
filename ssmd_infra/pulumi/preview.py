"""What `pulumi preview` would list between two runs of the program, from their registrations.

The Pulumi CLI is not available where the tests run, so the program is run twice under the
mock engine (`ssmd_infra.pulumi.offline`) — before and after an edit — and the registrations
are compared by URN and inputs with the providers' own rules:

- pulumi-kubernetes replaces an object whose `metadata.name` changes (the new one is created
  first, the old one deleted after: the names differ, so no delete-before-replace), an object
  whose replace-on-change fields change (`FORCE_NEW`: a claim's storage class, a StatefulSet's
  claim templates — which the program tells the engine to ignore), and a Secret whose data
  changes (Secret data is replace-on-change; the program's main provider does not set
  `enableSecretMutable`; without a fixed name the replacement gets a new one), except the
  Secret `ssmd-nats-authorization`, whose own provider (`MUTABLE_SECRETS_PROVIDER`) sets it:
  updated in place. ConfigMap data is
  an update in place (the program's provider sets `enableConfigMapMutable`);
- a stream is replaced when a field the server cannot change in place changes
  (`ssmd_infra.core.stream_rules.replacement_fields`), else updated;
- `ignore_changes` paths are not compared (the engine does not diff them).

`render` lays the result out like the CLI's preview tree, which is how the README shows the
preview of an edit (and a test keeps that text true).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ssmd_infra.core import stream_rules
from ssmd_infra.pulumi.manifests import MUTABLE_SECRETS_PROVIDER
from ssmd_infra.pulumi.offline import Declared, OfflineRun, unwrap_secrets

SECRET = "kubernetes:core/v1:Secret"
STREAM = "pulumi-python:dynamic/ssmd:NatsStream"
# pulumi-kubernetes' replace-on-change fields of the kinds this program declares (its
# `forceNew` table), as (top-level key, field) pairs
FORCE_NEW: dict[str, tuple[tuple[str, str], ...]] = {
    "kubernetes:core/v1:PersistentVolumeClaim": (
        ("spec", "accessModes"),
        ("spec", "selector"),
        ("spec", "storageClassName"),
        ("spec", "volumeName"),
    ),
    "kubernetes:apps/v1:StatefulSet": (
        ("spec", "podManagementPolicy"),
        ("spec", "revisionHistoryLimit"),
        ("spec", "selector"),
        ("spec", "serviceName"),
        ("spec", "volumeClaimTemplates"),
    ),
    "kubernetes:apps/v1:Deployment": (("spec", "selector"),),
}


@dataclass(frozen=True)
class Roll:
    """What `pulumi up` would do, by resource name (names are unique in this program)."""

    changed: set[str]
    replaced: set[str]
    created: set[str]
    deleted: set[str]


def _name(inputs: dict[str, Any]) -> object:
    metadata = inputs.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


def _without(inputs: dict[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    """`inputs` (secrets unwrapped) less the `ignore_changes` paths (dotted)."""
    out: dict[str, Any] = json.loads(json.dumps(unwrap_secrets(inputs), default=str))
    for path in ignored:
        *parents, leaf = path.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _provider_name(reference: str) -> str:
    """The resource name of a provider reference (`{urn}::{id}`, the URN ending `::{name}`)."""
    parts = reference.split("::")
    return parts[-2] if len(parts) >= 2 else ""


def _replaced(
    type_: str, old: dict[str, Any], new: dict[str, Any], mutable_secret: bool = False
) -> bool:
    if type_ == STREAM:
        from ssmd_infra.pulumi.stream_provider import spec_from_props

        return bool(stream_rules.replacement_fields(spec_from_props(old), spec_from_props(new)))
    if _name(old) != _name(new):
        return True
    for top, field in FORCE_NEW.get(type_, ()):
        if (old.get(top) or {}).get(field) != (new.get(top) or {}).get(field):
            return True
    data = ("stringData", "data")
    changed = [old.get(k) for k in data] != [new.get(k) for k in data]
    return type_ == SECRET and changed and not mutable_secret


@dataclass(frozen=True)
class Step:
    op: str  # create | update | replace | delete | same
    resource: Declared
    diff: tuple[str, ...] = ()  # top-level input keys that differ


def steps(before: OfflineRun, after: OfflineRun) -> list[Step]:
    """Every resource of both runs with what would happen to it, in registration order."""
    old = {r.urn: r for r in before.resources}
    out = []
    for resource in after.resources:
        previous = old.get(resource.urn)
        if previous is None:
            out.append(Step("create", resource))
            continue
        ignored = resource.options.ignore_changes
        a, b = _without(previous.inputs, ignored), _without(resource.inputs, ignored)
        if a == b:
            out.append(Step("same", resource))
            continue
        keys = tuple(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))
        mutable = _provider_name(resource.options.provider) == MUTABLE_SECRETS_PROVIDER
        op = "replace" if _replaced(resource.type, a, b, mutable) else "update"
        out.append(Step(op, resource, keys))
    new = {r.urn for r in after.resources}
    out.extend(Step("delete", r) for r in before.resources if r.urn not in new)
    return out


def roll(before: OfflineRun, after: OfflineRun) -> Roll:
    """The names of the resources each operation touches."""
    by_op: dict[str, set[str]] = {
        "update": set(),
        "replace": set(),
        "create": set(),
        "delete": set(),
    }
    for step in steps(before, after):
        if step.op in by_op:
            by_op[step.op].add(step.resource.name)
    return Roll(by_op["update"], by_op["replace"], by_op["create"], by_op["delete"])


_SIGN = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": ""}


def render(before: OfflineRun, after: OfflineRun, *, stack: str) -> str:
    """The preview tree of the changes (unchanged resources are left out, their parents kept),
    then the counts, as `pulumi preview` lays them out."""
    all_steps = steps(before, after)
    parents = {s.resource.urn: s.resource.options.parent for s in all_steps}
    wanted: set[str] = set()
    for step in all_steps:
        if step.op == "same":
            continue
        urn: str | None = step.resource.urn
        while urn and urn not in wanted:
            wanted.add(urn)
            urn = parents.get(urn)
    children: dict[str, list[Step]] = {}
    for step in all_steps:
        if step.resource.urn in wanted:
            children.setdefault(parents.get(step.resource.urn, ""), []).append(step)
    # the stack: the one parent that is not itself a registered resource
    root = next((p for p in children if p not in parents), "")
    lines = [
        f"     {'Type':<60} {'Name':<26} Plan",
        f"     {'pulumi:pulumi:Stack':<60} ssmd-{stack}",
    ]

    def walk(parent: str, prefix: str) -> None:
        # by name: the engine's registration order varies between runs (threads)
        kids = sorted(children.get(parent, []), key=lambda s: s.resource.name)
        for index, step in enumerate(kids):
            last = index == len(kids) - 1
            label = prefix + ("└─ " if last else "├─ ") + step.resource.type
            plan = "" if step.op == "same" else step.op
            info = f"  [diff: {', '.join('~' + k for k in step.diff)}]" if step.diff else ""
            lines.append(
                f" {_SIGN[step.op]:>2}  {label:<60} {step.resource.name:<26} {plan}{info}".rstrip()
            )
            walk(step.resource.urn, prefix + ("   " if last else "│  "))

    walk(root, "")
    counts = {op: sum(1 for s in all_steps if s.op == op) for op in _SIGN}
    lines += ["", "Resources:"]
    for op, label in (
        ("create", "to create"),
        ("update", "to update"),
        ("replace", "to replace"),
        ("delete", "to delete"),
    ):
        if counts[op]:
            lines.append(f"    {_SIGN[op]} {counts[op]} {label}")
    lines.append(f"    {counts['same']} unchanged")
    return "\n".join(lines) + "\n"
