"""The rules of a JetStream stream as ssmd manages it: validation, the server's JSON form,
the field-by-field diff, and which changes need a replacement. Pure: no NATS client here.

Both backends of the desired state apply these rules through the stream admin
(`ssmd_infra.adapters.jetstream`): the Pulumi dynamic provider and the local supervisor, so
they cannot disagree about what a stream looks like. Facts that shape them:

- Subject transforms need nats-server ≥ 2.10; 2.9 accepts the config and silently drops the
  transforms. So the server version is checked, and the stream config the server returns
  must echo every transform back; otherwise we refuse. The same holds for a shard stream's
  RePublish (live readers would silently see nothing): the reply must echo it.
- A stream update sends the *whole* config: a field left out falls back to the server's
  default (storage, limits, duplicate window reset). Updates therefore start from the raw
  JSON config the server currently holds and overlay only the fields ssmd manages; fields
  ssmd does not model survive too.
- The server refuses some changes (storage type, retention to or from work-queue, changes to
  a mirror, turning sealed/deny_delete/deny_purge off). Those need a replacement, which
  loses the stored data (`replacement_fields`, `replacement_reasons`).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.streams import RepublishSpec, SourceSpec, StreamSpec

MIN_SERVER_VERSION = (2, 10, 0)
_NANOS = 1_000_000_000
# Time fields are compared at millisecond precision: the server stores nanoseconds.
_TIME_FIELDS = ("max_age", "duplicate_window")

MANAGED_FIELDS = (
    "subjects",
    "max_age",
    "max_bytes",
    "max_msgs",
    "replicas",
    "duplicate_window",
    "storage",
    "retention",
    "discard",
    "sources",
    "republish",
)


# ----------------------------------------------------------------------------- validation


def spec_problems(spec: StreamSpec) -> list[str]:
    """Every reason the server would reject `spec` or it would be unbounded; [] when fine."""
    problems = []
    where = f"stream {spec.name!r}"
    if not re.match(r"^[A-Za-z0-9_-]+$", spec.name or ""):
        problems.append(f"{where}: name must be letters, digits, '-' and '_'")
    if spec.max_age <= 0:
        problems.append(f"{where}: max_age must be positive (streams are bounded by age)")
    if spec.max_bytes <= 0:
        problems.append(f"{where}: max_bytes must be positive (streams are bounded by bytes)")
    if spec.max_msgs == 0 or spec.max_msgs < -1:
        problems.append(f"{where}: max_msgs must be positive, or -1 for no message-count limit")
    if spec.replicas < 1 or spec.replicas > 5:
        problems.append(f"{where}: replicas must be between 1 and 5")
    if spec.duplicate_window <= 0:
        problems.append(f"{where}: duplicate_window must be positive (publishers dedup by id)")
    elif spec.max_age > 0 and spec.duplicate_window > spec.max_age:
        problems.append(f"{where}: duplicate_window must not exceed max_age")
    if spec.storage not in ("file", "memory"):
        problems.append(f"{where}: storage must be 'file' or 'memory'")
    if spec.retention not in ("limits", "interest", "workqueue"):
        problems.append(f"{where}: retention must be limits, interest or workqueue")
    if spec.discard not in ("old", "new"):
        problems.append(f"{where}: discard must be 'old' or 'new'")
    if not spec.subjects and not spec.sources:
        problems.append(f"{where}: needs subjects or sources")
    if spec.republish is not None and not (spec.republish.src and spec.republish.dest):
        problems.append(f"{where}: republish needs a source and a destination subject")
    return problems


def validate_spec(spec: StreamSpec) -> None:
    problems = spec_problems(spec)
    if problems:
        raise SsmdError("; ".join(problems))


# ----------------------------------------------------------------------------- conversions


def _managed_json(spec: StreamSpec) -> dict[str, Any]:
    """The wire-format fields ssmd owns, to overlay on the server's current config."""
    body: dict[str, Any] = {
        "name": spec.name,
        "retention": spec.retention,
        "storage": spec.storage,
        "discard": spec.discard,
        "max_age": round(spec.max_age * _NANOS),
        "max_bytes": spec.max_bytes,
        "max_msgs": spec.max_msgs,
        "num_replicas": spec.replicas,
        "duplicate_window": round(spec.duplicate_window * _NANOS),
    }
    if spec.subjects:
        body["subjects"] = list(spec.subjects)
    if spec.sources:
        body["sources"] = [
            {
                "name": s.name,
                "subject_transforms": [{"src": s.transform_src, "dest": s.transform_dest}],
            }
            for s in spec.sources
        ]
    if spec.republish:
        body["republish"] = {
            "src": spec.republish.src,
            "dest": spec.republish.dest,
            "headers_only": spec.republish.headers_only,
        }
    return body


def desired_config_json(spec: StreamSpec, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full config to send: `current` (server JSON) with ssmd's fields overlaid."""
    merged = copy.deepcopy(current) if current else {}
    if not spec.subjects:
        merged.pop("subjects", None)
    if not spec.sources:
        merged.pop("sources", None)
    if not spec.republish:
        merged.pop("republish", None)
    merged.update(_managed_json(spec))
    return merged


def spec_from_config(config: dict[str, Any]) -> StreamSpec:
    """What the server holds, in `StreamSpec` terms (for diffs, drift and adoption).

    A source whose transform the server did not echo comes back with empty transform
    fields, so it never equals a desired spec.
    """
    sources = []
    for raw in config.get("sources") or []:
        transforms = raw.get("subject_transforms") or []
        src = transforms[0].get("src", "") if len(transforms) == 1 else ""
        dest = transforms[0].get("dest", "") if len(transforms) == 1 else ""
        sources.append(
            SourceSpec(
                name=str(raw.get("name", "")),
                filter_subject=str(raw.get("filter_subject") or src),
                transform_src=str(src),
                transform_dest=str(dest),
            )
        )
    return StreamSpec(
        name=str(config.get("name", "")),
        subjects=tuple(config.get("subjects") or ()),
        max_age=int(config.get("max_age") or 0) / _NANOS,
        max_bytes=int(config.get("max_bytes", -1)),
        max_msgs=int(config.get("max_msgs", -1)),
        replicas=int(config.get("num_replicas") or 1),
        duplicate_window=int(config.get("duplicate_window") or 0) / _NANOS,
        storage=str(config.get("storage", "file")),
        retention=str(config.get("retention", "limits")),
        discard=str(config.get("discard", "old")),
        sources=tuple(sources),
        republish=_republish_from_config(config.get("republish")),
    )


def _republish_from_config(raw: Any) -> RepublishSpec | None:
    if not raw:
        return None
    return RepublishSpec(
        src=str(raw.get("src") or ""),
        dest=str(raw.get("dest") or ""),
        headers_only=bool(raw.get("headers_only", False)),
    )


def _normal(spec: StreamSpec, name: str) -> object:
    value = getattr(spec, name)
    if name in _TIME_FIELDS:
        return round(float(value), 3)
    if name == "subjects":
        return tuple(sorted(value))
    if name == "sources":
        return tuple(sorted((s.name, s.transform_src, s.transform_dest) for s in value))
    return value


def spec_differences(current: StreamSpec, desired: StreamSpec) -> dict[str, tuple[Any, Any]]:
    """field → (current, desired) for every managed field that differs."""
    diffs: dict[str, tuple[Any, Any]] = {}
    for name in MANAGED_FIELDS:
        if _normal(current, name) != _normal(desired, name):
            diffs[name] = (getattr(current, name), getattr(desired, name))
    return diffs


def replacement_fields(current: StreamSpec, desired: StreamSpec) -> dict[str, str]:
    """field → why, for every change of `current` into `desired` the server refuses in place.

    The one copy of the rule: the stream admin refuses such an update before changing
    anything, and the Pulumi provider turns the same fields into `replaces`.
    """
    fields: dict[str, str] = {}
    if current.name != desired.name:
        fields["name"] = f"name {current.name} → {desired.name} (a stream cannot be renamed)"
    if current.storage != desired.storage:
        fields["storage"] = (
            f"storage {current.storage} → {desired.storage} (the server cannot convert)"
        )
    if current.retention != desired.retention and "workqueue" in (
        current.retention,
        desired.retention,
    ):
        fields["retention"] = (
            f"retention {current.retention} → {desired.retention} (to or from workqueue is refused)"
        )
    return fields


def replacement_reasons(
    current: StreamSpec, desired: StreamSpec, raw_config: dict[str, Any] | None = None
) -> list[str]:
    """Why the server would refuse to update `current` into `desired` in place ([] if it won't).

    `raw_config` (the server's JSON) adds the checks on fields ssmd never sets: a stream that
    is a mirror, or is sealed / deny_delete / deny_purge, cannot become an ssmd stream.
    """
    reasons = list(replacement_fields(current, desired).values())
    raw = raw_config or {}
    if raw.get("mirror"):
        reasons.append("the existing stream is a mirror (mirror settings cannot change)")
    for flag in ("sealed", "deny_delete", "deny_purge"):
        if raw.get(flag):
            reasons.append(f"the existing stream has {flag} set (it cannot be turned off)")
    return reasons


def describe_differences(diffs: dict[str, tuple[Any, Any]]) -> str:
    parts = []
    for name, (old, new) in diffs.items():
        if name == "sources":
            old_names = sorted(s.name for s in old)
            new_names = sorted(s.name for s in new)
            if old_names == new_names:
                parts.append("sources: subject transforms differ")
            else:
                parts.append(f"sources {old_names} → {new_names}")
        else:
            parts.append(f"{name} {_show(old)} → {_show(new)}")
    return ", ".join(parts)


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, RepublishSpec):
        return f"{value.src} → {value.dest}" + (" (headers only)" if value.headers_only else "")
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------- server checks


def version_tuple(version: str) -> tuple[int, int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if not match:
        raise SsmdError(f"cannot tell the NATS server version from {version!r}")
    return int(match[1]), int(match[2]), int(match[3])


def require_server_version(version: str) -> None:
    """Refuse a nats-server older than 2.10: it would silently ignore subject transforms."""
    if version_tuple(version) < MIN_SERVER_VERSION:
        raise SsmdError(
            f"nats-server {version} is too old: ssmd needs ≥ 2.10, because older servers "
            f"accept stream subject transforms and silently ignore them (the client stream "
            f"would never receive md.* subjects); upgrade the server"
        )


def verify_transforms(spec: StreamSpec, config: dict[str, Any]) -> None:
    """Refuse when the server's stream config (JSON) does not echo every desired subject
    transform.

    This is how a server that ignores transforms (nats-server < 2.10, or anything that drops
    them) is caught even when the version check passed.
    """
    echoed: dict[str, list[tuple[str, str]]] = {}
    for got in config.get("sources") or []:
        echoed[str(got.get("name", ""))] = [
            (str(t.get("src", "")), str(t.get("dest", "")))
            for t in got.get("subject_transforms") or []
        ]
    missing = []
    for want in spec.sources:
        if (want.transform_src, want.transform_dest) not in echoed.get(want.name, []):
            missing.append(f"{want.name}: {want.transform_src} → {want.transform_dest}")
    if missing:
        raise SsmdError(
            f"the NATS server did not keep the subject transforms of stream {spec.name!r} "
            f"({'; '.join(missing)}); it probably ignores them (nats-server < 2.10). "
            f"Refusing to continue: clients would never see the md.* subjects"
        )


def verify_republish(spec: StreamSpec, config: dict[str, Any]) -> None:
    """Refuse when the server's stream config (JSON) does not echo the desired RePublish:
    live readers of the client subjects would silently receive nothing."""
    if spec.republish is None:
        return
    got = _republish_from_config(config.get("republish"))
    if got != spec.republish:
        raise SsmdError(
            f"the NATS server did not keep the republish of stream {spec.name!r} "
            f"({_show(spec.republish)}; it holds {_show(got)}). Refusing to continue: live "
            f"readers of {spec.republish.dest} would receive nothing"
        )


def verify_echo(spec: StreamSpec, reply: dict[str, Any]) -> None:
    """Every check that the server kept what it was asked for (transforms, republish)."""
    config = reply.get("config") or {}
    verify_transforms(spec, config)
    verify_republish(spec, config)
