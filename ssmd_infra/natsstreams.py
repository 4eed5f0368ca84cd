"""Turn `StreamSpec`s into JetStream streams on a real server: create, compare, update, delete.

Both backends of the desired state use this module — the Pulumi dynamic provider
(`ssmd_infra.pulumi_stream`) and the local runner — so they cannot disagree about what a
stream looks like. Facts that shape it:

- Subject transforms need nats-server ≥ 2.10; 2.9 accepts the config and silently drops the
  transforms. So the server version is checked, and the stream info the server returns must
  echo every transform back; otherwise we refuse. The same holds for a shard stream's
  RePublish (live readers would silently see nothing): the reply must echo it.
- A stream update sends the *whole* config: a field left out falls back to the server's
  default (storage, limits, duplicate window reset). Updates therefore start from the raw
  JSON config the server currently holds and overlay only the fields ssmd manages; fields
  nats-py does not model survive too.
- The server refuses some changes (storage type, retention to or from work-queue, changes to
  a mirror, turning sealed/deny_delete/deny_purge off). Those need a replacement, which
  loses the stored data, so they are refused here with an error that says so, before
  anything is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import api

from .errors import SsmdError
from .stack_config import nats_url_problem, redact_url
from .streams import RepublishSpec, SourceSpec, StreamSpec

MIN_SERVER_VERSION = (2, 10, 0)
CONNECT_TIMEOUT = 3.0
REQUEST_TIMEOUT = 5.0
_NANOS = 1_000_000_000
_API = "$JS.API"
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


def to_stream_config(spec: StreamSpec) -> api.StreamConfig:
    """The nats-py config for `spec` (what a fresh stream is created with)."""
    sources = [
        api.StreamSource(
            name=s.name,
            subject_transforms=[api.SubjectTransform(src=s.transform_src, dest=s.transform_dest)],
        )
        for s in spec.sources
    ]
    return api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects) or None,
        retention=api.RetentionPolicy(spec.retention),
        storage=api.StorageType(spec.storage),
        discard=api.DiscardPolicy(spec.discard),
        max_age=spec.max_age,
        max_bytes=spec.max_bytes,
        max_msgs=spec.max_msgs,
        num_replicas=spec.replicas,
        duplicate_window=spec.duplicate_window,
        sources=sources or None,
        republish=(
            api.RePublish(
                src=spec.republish.src,
                dest=spec.republish.dest,
                headers_only=spec.republish.headers_only,
            )
            if spec.republish
            else None
        ),
    )


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


def replacement_reasons(
    current: StreamSpec, desired: StreamSpec, raw_config: dict[str, Any] | None = None
) -> list[str]:
    """Why the server would refuse to update `current` into `desired` in place ([] if it won't).

    `raw_config` (the server's JSON) adds the checks on fields ssmd never sets: a stream that
    is a mirror, or is sealed / deny_delete / deny_purge, cannot become an ssmd stream.
    """
    reasons = []
    if current.storage != desired.storage:
        reasons.append(f"storage {current.storage} → {desired.storage} (the server cannot convert)")
    if current.retention != desired.retention and "workqueue" in (
        current.retention,
        desired.retention,
    ):
        reasons.append(
            f"retention {current.retention} → {desired.retention} (to or from workqueue is refused)"
        )
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


async def check_server(nc: Client) -> None:
    """Raise `SsmdError` when the connected server is older than 2.10."""
    info = getattr(nc, "_server_info", None) or {}
    version = info.get("version")
    if not isinstance(version, str):
        raise SsmdError("the NATS server did not report its version")
    require_server_version(version)


def verify_transforms(spec: StreamSpec, info: api.StreamInfo) -> None:
    """Refuse when the server's stream info does not echo every desired subject transform.

    This is how a server that ignores transforms (nats-server < 2.10, or anything that drops
    them) is caught even when the version check passed.
    """
    echoed: dict[str, list[tuple[str, str]]] = {}
    for got in info.config.sources or []:
        echoed[got.name] = [(t.src, t.dest) for t in got.subject_transforms or []]
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
    verify_transforms(spec, _stream_info(reply))
    verify_republish(spec, reply.get("config") or {})


# ----------------------------------------------------------------------------- server calls


async def _connect(nats_url: str, servers: list[str], timeout: float) -> Client:
    """Connect, or fail once every server has refused (nats-py alone would retry forever)."""
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[BaseException] = loop.create_future()
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        if len(errors) >= len(servers) and not failed.done():
            failed.set_result(exc)

    attempt = asyncio.ensure_future(
        nats.connect(
            servers=servers,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=on_error,
            name="ssmd-streams",
        )
    )
    waiters: set[asyncio.Future[Any]] = {attempt, failed}
    done, _ = await asyncio.wait(
        waiters, timeout=timeout * (len(servers) + 1), return_when=asyncio.FIRST_COMPLETED
    )
    if attempt in done and attempt.exception() is None:
        return attempt.result()
    if attempt in done:
        reason: BaseException | None = attempt.exception()
    else:
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        reason = failed.result() if failed.done() else None
    text = f"{type(reason).__name__}: {reason}" if reason else f"no answer within {timeout:.0f}s"
    raise SsmdError(f"cannot connect to NATS at {redact_url(nats_url)}: {text}")


@asynccontextmanager
async def connect(nats_url: str, timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[Client]:
    """A connection that fails fast with a clear `SsmdError` and is always closed."""
    problem = nats_url_problem(nats_url)
    if problem:
        raise SsmdError(problem)
    servers = [u.strip() for u in nats_url.split(",")]
    nc = await _connect(nats_url, servers, timeout)
    try:
        await check_server(nc)
        yield nc
    finally:
        await nc.close()


async def _request(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = json.dumps(body).encode() if body is not None else b""
    try:
        msg = await nc.request(subject, payload, timeout=REQUEST_TIMEOUT)
    except nats.errors.NoRespondersError:
        raise SsmdError(
            "JetStream is not enabled on this NATS server (no responder for the JetStream API)"
        ) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise SsmdError(f"NATS did not answer {subject} within {REQUEST_TIMEOUT:.0f}s") from None
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


class StreamNotFound(SsmdError):
    """The stream does not exist on the server."""


def _raise_api_error(reply: dict[str, Any], doing: str) -> None:
    error = reply.get("error")
    if not error:
        return
    if error.get("err_code") == 10059:  # stream not found
        raise StreamNotFound(f"{doing}: stream not found")
    raise SsmdError(f"{doing}: NATS refused: {error.get('description', error)}")


async def stream_raw_info(nc: Client, name: str) -> dict[str, Any] | None:
    """The server's JSON stream info for `name`, or None when there is no such stream."""
    reply = await _request(nc, f"{_API}.STREAM.INFO.{name}")
    try:
        _raise_api_error(reply, f"reading stream {name}")
    except StreamNotFound:
        return None
    return reply


async def stream_names(nc: Client) -> list[str]:
    names: list[str] = []
    while True:
        reply = await _request(nc, f"{_API}.STREAM.NAMES", {"offset": len(names)})
        _raise_api_error(reply, "listing streams")
        page = reply.get("streams") or []
        names.extend(page)
        if not page or len(names) >= int(reply.get("total", 0)):
            return names


def _stream_info(raw: dict[str, Any]) -> api.StreamInfo:
    info: api.StreamInfo = api.StreamInfo.from_response(copy.deepcopy(raw))  # mutates its input
    return info


@dataclass(frozen=True)
class StreamOutcome:
    """What happened to one stream, and what the server now holds."""

    action: str  # created | adopted | updated | unchanged
    spec: StreamSpec
    message: str


async def apply_stream(
    nc: Client, spec: StreamSpec, *, update: bool = True, adopt: bool = True
) -> StreamOutcome:
    """Create `spec`, or adopt/update the existing stream of that name.

    `update=False` (Pulumi's create) refuses an existing stream whose config differs instead
    of changing it; `adopt=False` refuses any existing stream.
    """
    validate_spec(spec)
    current_raw = await stream_raw_info(nc, spec.name)
    if current_raw is None:
        reply = await _request(nc, f"{_API}.STREAM.CREATE.{spec.name}", desired_config_json(spec))
        _raise_api_error(reply, f"creating stream {spec.name}")
        verify_echo(spec, reply)
        return StreamOutcome(
            "created", spec_from_config(reply["config"]), f"created stream {spec.name}"
        )
    current = spec_from_config(current_raw["config"])
    diffs = spec_differences(current, spec)
    if not adopt:
        raise SsmdError(f"stream {spec.name} already exists")
    if not diffs:
        verify_echo(spec, current_raw)
        return StreamOutcome("adopted", current, f"stream {spec.name} already matches")
    if not update:
        raise SsmdError(
            f"stream {spec.name} already exists with a different configuration "
            f"({describe_differences(diffs)}); import it into the stack or delete it first"
        )
    reasons = replacement_reasons(current, spec, current_raw["config"])
    if reasons:
        raise SsmdError(
            f"stream {spec.name} cannot be updated in place: {'; '.join(reasons)}. "
            f"It must be replaced, which deletes its stored messages"
        )
    body = desired_config_json(spec, current_raw["config"])
    reply = await _request(nc, f"{_API}.STREAM.UPDATE.{spec.name}", body)
    _raise_api_error(reply, f"updating stream {spec.name}")
    verify_echo(spec, reply)
    return StreamOutcome(
        "updated",
        spec_from_config(reply["config"]),
        f"updated stream {spec.name}: {describe_differences(diffs)}",
    )


async def delete_stream(nc: Client, name: str) -> bool:
    """Delete `name`; False when it did not exist."""
    reply = await _request(nc, f"{_API}.STREAM.DELETE.{name}")
    try:
        _raise_api_error(reply, f"deleting stream {name}")
    except StreamNotFound:
        return False
    return True


async def read_stream(nats_url: str, name: str) -> StreamSpec | None:
    """The live stream `name` as a spec, or None when it does not exist."""
    async with connect(nats_url) as nc:
        raw = await stream_raw_info(nc, name)
    return None if raw is None else spec_from_config(raw["config"])


def _ordered(specs: Iterable[StreamSpec]) -> list[StreamSpec]:
    """Streams without sources first: a source must exist before a stream sources it."""
    items = list(specs)
    return [s for s in items if not s.sources] + [s for s in items if s.sources]


async def reconcile_streams(
    nats_url: str,
    specs: Sequence[StreamSpec],
    *,
    delete_absent_prefix: str | None = None,
) -> list[str]:
    """Make the server hold exactly `specs`; returns one human-readable line per action.

    Everything is checked before anything changes: invalid specs and changes that need a
    replacement are refused up front, so a refusal leaves the server untouched.
    """
    specs = list(specs)
    problems = [p for spec in specs for p in spec_problems(spec)]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate stream names: {', '.join(duplicates)}")
    if problems:
        raise SsmdError("; ".join(problems))
    async with connect(nats_url) as nc:
        refusals = []
        for spec in specs:
            raw = await stream_raw_info(nc, spec.name)
            if raw is None:
                continue
            reasons = replacement_reasons(spec_from_config(raw["config"]), spec, raw["config"])
            if reasons:
                refusals.append(f"stream {spec.name}: {'; '.join(reasons)}")
        if refusals:
            raise SsmdError(
                "these streams cannot be updated in place and would have to be replaced, "
                "which deletes their stored messages: " + " | ".join(refusals)
            )
        actions = []
        for spec in _ordered(specs):
            outcome = await apply_stream(nc, spec)
            actions.append(
                f"unchanged stream {spec.name}" if outcome.action == "adopted" else outcome.message
            )
        if delete_absent_prefix:
            wanted = set(names)
            for name in sorted(await stream_names(nc)):
                if name.startswith(delete_absent_prefix) and name not in wanted:
                    await delete_stream(nc, name)
                    actions.append(f"deleted stream {name} (not in the environment)")
        return actions
