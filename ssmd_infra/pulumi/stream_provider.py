"""A JetStream stream as a Pulumi resource, through a dynamic provider.

The provider object is pickled with dill when the program runs and unpickled in the
dynamic-provider host process, so:

- `NatsStreamProvider` is a module-level class with no state: dill pickles it by reference
  to this module, which the host imports from the same virtualenv;
- every method opens its own NATS connection (`asyncio.run` around `ssmd_infra.adapters.jetstream`)
  and closes it before returning — nothing live survives between calls;
- `diff` compares only the fields ssmd manages, normalised, so neither the pickled provider
  (`__provider`) nor defaults the server fills in cause spurious diffs, and it asks for a
  delete-before-replace for the changes the server refuses;
- `republish` (a shard stream's RePublish, opt-in) is a property only when set, so streams
  without it keep the properties they had before the field existed; turning it on or off is
  an in-place update;
- `update` returns the outputs (the default would return none);
- `read` reports what the server holds, so drift shows on `pulumi refresh`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from ssmd_infra.adapters import jetstream
from ssmd_infra.core import stream_rules
from ssmd_infra.core.nats_url import nats_url_problem
from ssmd_infra.core.streams import StreamSpec

NATS_URL = "nats_url"


def props_from_spec(spec: StreamSpec, nats_url: str) -> dict[str, Any]:
    """The resource's inputs/outputs: the spec's plain-data form plus where the server is."""
    return {NATS_URL: nats_url, **spec.to_dict()}


def spec_from_props(props: dict[str, Any]) -> StreamSpec:
    data = {k: v for k, v in props.items() if k != NATS_URL and not k.startswith("__")}
    return StreamSpec.from_dict(data)


class NatsStreamProvider(ResourceProvider):
    """CRUD for one JetStream stream; stateless, so it survives pickling."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        problem = nats_url_problem(news.get(NATS_URL))
        if problem:
            failures.append(CheckFailure(NATS_URL, problem))
        try:
            spec = spec_from_props(news)
        except (KeyError, TypeError, ValueError) as exc:
            failures.append(CheckFailure("name", f"incomplete stream definition: {exc}"))
        else:
            failures.extend(CheckFailure("name", p) for p in stream_rules.spec_problems(spec))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = spec_from_props(props)
        url = str(props[NATS_URL])
        live = asyncio.run(_apply(url, spec, update=False))
        return CreateResult(spec.name, props_from_spec(live, url))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = spec_from_props(olds), spec_from_props(news)
        changed = list(stream_rules.spec_differences(old, new))
        if old.name != new.name:
            changed.append("name")
        if olds.get(NATS_URL) != news.get(NATS_URL):
            changed.append(NATS_URL)
        replaces = list(stream_rules.replacement_fields(old, new))
        return DiffResult(
            changes=bool(changed),
            replaces=replaces,
            stables=[],
            delete_before_replace=bool(replaces),
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = spec_from_props(news)
        url = str(news[NATS_URL])
        live = asyncio.run(_apply(url, spec, update=True))
        return UpdateResult(props_from_spec(live, url))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        asyncio.run(_delete(str(props[NATS_URL]), id_))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        url = str(props[NATS_URL])
        live = asyncio.run(jetstream.read_stream(url, id_))
        if live is None:
            return ReadResult("", {})
        return ReadResult(id_, props_from_spec(live, url))


async def _apply(url: str, spec: StreamSpec, *, update: bool) -> StreamSpec:
    async with jetstream.connect(url) as nc:
        outcome = await jetstream.apply_stream(nc, spec, update=update)
    return outcome.spec


async def _delete(url: str, name: str) -> None:
    async with jetstream.connect(url) as nc:
        await jetstream.delete_stream(nc, name)


class NatsStream(pulumi.dynamic.Resource, module="ssmd", name="NatsStream"):
    """A JetStream stream managed from a `StreamSpec`."""

    name: pulumi.Output[str]
    nats_url: pulumi.Output[str]
    subjects: pulumi.Output[list[str]]
    sources: pulumi.Output[list[dict[str, str]]]
    republish: pulumi.Output[dict[str, Any] | None]

    def __init__(
        self,
        resource_name: str,
        spec: StreamSpec,
        nats_url: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        stream_rules.validate_spec(spec)
        props: dict[str, Any] = {NATS_URL: nats_url, **spec.to_dict()}
        super().__init__(NatsStreamProvider(), resource_name, props, opts)
