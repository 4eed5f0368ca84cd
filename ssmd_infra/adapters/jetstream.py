"""The stream admin: turn `StreamSpec`s into JetStream streams on a real server (create,
compare, update, delete) over nats-py, by the rules of `ssmd_infra.core.stream_rules`.

Shared I/O for the backends that manage streams: the Pulumi dynamic provider
(`ssmd_infra.pulumi.stream_provider`), the local supervisor and the day roll's checks.
Everything is checked before anything changes: a change that needs a replacement is refused
with an error that says so, before the server is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.nats_url import nats_url_problem, redact_url
from ssmd_infra.core.nkey_seeds import RoleSeed
from ssmd_infra.core.stream_rules import (
    describe_differences,
    desired_config_json,
    replacement_reasons,
    require_server_version,
    spec_differences,
    spec_from_config,
    spec_problems,
    validate_spec,
    verify_echo,
)
from ssmd_infra.core.streams import StreamSpec
from ssmd_infra.core.subjects import stream_api, stream_list_api

CONNECT_TIMEOUT = 3.0
REQUEST_TIMEOUT = 5.0


# ----------------------------------------------------------------------------- server checks


async def check_server(nc: Client) -> None:
    """Raise `SsmdError` when the connected server is older than 2.10."""
    info = getattr(nc, "_server_info", None) or {}
    version = info.get("version")
    if not isinstance(version, str):
        raise SsmdError("the NATS server did not report its version")
    require_server_version(version)


# ----------------------------------------------------------------------------- server calls


async def _connect(
    nats_url: str, servers: list[str], timeout: float, seed: RoleSeed | None = None
) -> Client:
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
            **(seed.nats_py_options() if seed is not None else {}),
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
async def connect(
    nats_url: str, timeout: float = CONNECT_TIMEOUT, *, seed: RoleSeed | None = None
) -> AsyncIterator[Client]:
    """A connection that fails fast with a clear `SsmdError` and is always closed; with
    `seed` (the `admin` role's, from `read_seed_file`), authenticated as that role."""
    problem = nats_url_problem(nats_url)
    if problem:
        raise SsmdError(problem)
    servers = [u.strip() for u in nats_url.split(",")]
    nc = await _connect(nats_url, servers, timeout, seed)
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
    reply = await _request(nc, stream_api("INFO", name))
    try:
        _raise_api_error(reply, f"reading stream {name}")
    except StreamNotFound:
        return None
    return reply


async def stream_names(nc: Client) -> list[str]:
    names: list[str] = []
    while True:
        reply = await _request(nc, stream_list_api("NAMES"), {"offset": len(names)})
        _raise_api_error(reply, "listing streams")
        page = reply.get("streams") or []
        names.extend(page)
        if not page or len(names) >= int(reply.get("total", 0)):
            return names


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
        reply = await _request(nc, stream_api("CREATE", spec.name), desired_config_json(spec))
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
            f"({describe_differences(diffs)}). A stream cannot be imported into the stack "
            f"(Pulumi does not import dynamic resources): make the environment's stream "
            f"settings match it (`nats stream info {spec.name}`), or delete it first "
            f"(`nats stream rm {spec.name}`, which loses its stored messages)"
        )
    reasons = replacement_reasons(current, spec, current_raw["config"])
    if reasons:
        raise SsmdError(
            f"stream {spec.name} cannot be updated in place: {'; '.join(reasons)}. "
            f"It must be replaced, which deletes its stored messages"
        )
    body = desired_config_json(spec, current_raw["config"])
    reply = await _request(nc, stream_api("UPDATE", spec.name), body)
    _raise_api_error(reply, f"updating stream {spec.name}")
    verify_echo(spec, reply)
    return StreamOutcome(
        "updated",
        spec_from_config(reply["config"]),
        f"updated stream {spec.name}: {describe_differences(diffs)}",
    )


async def delete_stream(nc: Client, name: str) -> bool:
    """Delete `name`; False when it did not exist."""
    reply = await _request(nc, stream_api("DELETE", name))
    try:
        _raise_api_error(reply, f"deleting stream {name}")
    except StreamNotFound:
        return False
    return True


async def read_stream(
    nats_url: str, name: str, *, seed: RoleSeed | None = None
) -> StreamSpec | None:
    """The live stream `name` as a spec, or None when it does not exist."""
    async with connect(nats_url, seed=seed) as nc:
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
    seed: RoleSeed | None = None,
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
    async with connect(nats_url, seed=seed) as nc:
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
