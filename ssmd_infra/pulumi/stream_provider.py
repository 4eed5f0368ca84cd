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
- `read` reports what the server holds, so drift shows on `pulumi refresh`;
- where NATS is (`ssmd:natsAdminUrl`, else `ssmd:natsUrl`) is **not** a property: the engine
  hands the stack's configuration to the provider host, which calls `configure` once per
  process before any other method. So the URL (which may carry a password) never lands in
  the state, changing it (another port-forward) is never a diff, and `read`/`delete` of a
  stream use the URL of today's run, not the one of the run that created it;
- under `nats.auth: nkeys` the provider connects as the `admin` role: its seed is the secret
  property `admin_seed` (from the program's `NatsUserKey` of role admin: encrypted in the
  state, never compared as part of the stream, never shown), kept in the outputs so that
  `read` and `delete` have it too. Before changing anything it checks that the server
  refuses anonymous clients (an admin seed against a server without authorization would
  enforce none of the roles).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from ssmd_infra.adapters import jetstream
from ssmd_infra.adapters.nats_auth import require_anonymous_refused
from ssmd_infra.core import stream_rules
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_auth import ADMIN_ROLE
from ssmd_infra.core.nats_url import nats_url_problem
from ssmd_infra.core.nkey_seeds import RoleSeed, parse_role_seed
from ssmd_infra.core.streams import StreamSpec
from ssmd_infra.pulumi.stack_config import NATS_ADMIN_URL, NATS_URL, PREFIX

# Streams created before the URL became provider configuration carry it in their state;
# it is ignored (never compared, never used) and dropped at their next update.
LEGACY_URL_PROPERTY = "nats_url"
# the admin role's seed (a secret property); absent under `nats.auth: none`
ADMIN_SEED_PROPERTY = "admin_seed"
_NOT_SPEC = (LEGACY_URL_PROPERTY, ADMIN_SEED_PROPERTY)


def props_from_spec(spec: StreamSpec) -> dict[str, Any]:
    """The resource's inputs/outputs: the spec's plain-data form, nothing about the server."""
    return spec.to_dict()


def spec_from_props(props: dict[str, Any]) -> StreamSpec:
    data = {k: v for k, v in props.items() if k not in _NOT_SPEC and not k.startswith("__")}
    return StreamSpec.from_dict(data)


def admin_seed_of(props: dict[str, Any]) -> RoleSeed | None:
    """The admin seed a stream's properties carry (None: connect anonymously)."""
    text = props.get(ADMIN_SEED_PROPERTY)
    if not text:
        return None
    return parse_role_seed(str(text), ADMIN_ROLE, source="the stream provider's admin seed")


def _outputs(spec: StreamSpec, props: dict[str, Any]) -> dict[str, Any]:
    out = props_from_spec(spec)
    if props.get(ADMIN_SEED_PROPERTY):
        out[ADMIN_SEED_PROPERTY] = props[ADMIN_SEED_PROPERTY]
    return out


def admin_url_of(config: Any) -> str:
    """`ssmd:natsAdminUrl`, else `ssmd:natsUrl`, from the stack configuration `config`."""
    for key in (NATS_ADMIN_URL, NATS_URL):
        value = config.get(f"{PREFIX}:{key}")
        if value:
            url = str(value).strip()
            problem = nats_url_problem(url)
            if problem:
                raise ConfigError(f"{PREFIX}:{key}: {problem}")
            return url
    raise ConfigError(
        f"{PREFIX}:{NATS_ADMIN_URL} (or {PREFIX}:{NATS_URL}) is not set: the stream provider "
        f"does not know where NATS is"
    )


class NatsStreamProvider(ResourceProvider):
    """CRUD for one JetStream stream; stateless when pickled, so it survives pickling.

    `configure` (run in the provider host, after unpickling) is the only place that sets an
    attribute: the admin URL of this run.
    """

    serialize_as_secret_always = False

    def configure(self, req: ConfigureRequest) -> None:
        self._admin_url = admin_url_of(req.config)

    def _url(self) -> str:
        url: str | None = getattr(self, "_admin_url", None)
        if url is None:
            raise ConfigError("the stream provider was not configured with the stack config")
        return url

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        try:
            spec = spec_from_props(news)
        except (KeyError, TypeError, ValueError) as exc:
            failures.append(CheckFailure("name", f"incomplete stream definition: {exc}"))
        else:
            failures.extend(CheckFailure("name", p) for p in stream_rules.spec_problems(spec))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = spec_from_props(props)
        live = asyncio.run(_apply(self._url(), spec, admin_seed_of(props), update=False))
        return CreateResult(spec.name, _outputs(live, props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = spec_from_props(olds), spec_from_props(news)
        changed = list(stream_rules.spec_differences(old, new))
        if old.name != new.name:
            changed.append("name")
        if olds.get(ADMIN_SEED_PROPERTY) != news.get(ADMIN_SEED_PROPERTY):
            changed.append(ADMIN_SEED_PROPERTY)  # kept for read/delete; an in-place update
        replaces = list(stream_rules.replacement_fields(old, new))
        return DiffResult(
            changes=bool(changed),
            replaces=replaces,
            stables=[],
            delete_before_replace=bool(replaces),
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = spec_from_props(news)
        live = asyncio.run(_apply(self._url(), spec, admin_seed_of(news), update=True))
        return UpdateResult(_outputs(live, news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        asyncio.run(_delete(self._url(), id_, admin_seed_of(props)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        live = asyncio.run(jetstream.read_stream(self._url(), id_, seed=admin_seed_of(props)))
        if live is None:
            return ReadResult("", {})
        return ReadResult(id_, _outputs(live, props))


async def _apply(url: str, spec: StreamSpec, seed: RoleSeed | None, *, update: bool) -> StreamSpec:
    if seed is not None:
        await require_anonymous_refused(url, "the stack's environment has nats.auth: nkeys")
    async with jetstream.connect(url, seed=seed) as nc:
        outcome = await jetstream.apply_stream(nc, spec, update=update)
    return outcome.spec


async def _delete(url: str, name: str, seed: RoleSeed | None) -> None:
    async with jetstream.connect(url, seed=seed) as nc:
        await jetstream.delete_stream(nc, name)


class NatsStream(pulumi.dynamic.Resource, module="ssmd", name="NatsStream"):
    """A JetStream stream managed from a `StreamSpec`."""

    name: pulumi.Output[str]
    subjects: pulumi.Output[list[str]]
    sources: pulumi.Output[list[dict[str, str]]]
    republish: pulumi.Output[dict[str, Any] | None]

    def __init__(
        self,
        resource_name: str,
        spec: StreamSpec,
        opts: pulumi.ResourceOptions | None = None,
        admin_seed: pulumi.Input[str] | None = None,
    ) -> None:
        """`admin_seed`: the admin role's seed (a secret output) under `nats.auth: nkeys`."""
        stream_rules.validate_spec(spec)
        props: dict[str, Any] = props_from_spec(spec)
        if admin_seed is not None:
            props[ADMIN_SEED_PROPERTY] = pulumi.Output.secret(admin_seed)
            secret = pulumi.ResourceOptions(additional_secret_outputs=[ADMIN_SEED_PROPERTY])
            opts = pulumi.ResourceOptions.merge(opts, secret)
        super().__init__(NatsStreamProvider(), resource_name, props, opts)
