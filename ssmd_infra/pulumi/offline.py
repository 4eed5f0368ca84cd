"""Run the Pulumi program in-process against Pulumi's mock engine and record what it declares.

The Pulumi CLI is not needed: `pulumi.runtime.set_mocks` stands in for the engine, every
resource registration is recorded (type, name, inputs, parent) and the stack outputs are
resolved at the end. The tests use it to check the declared objects and to render the
Kubernetes manifests for schema validation; the benchmark uses it to time the program.

The mocks answer like the real providers where the program reads an output: the runtime
image gets a `sha256:` digest derived from its inputs and a digest-pinned `ref`, and a
Kubernetes object without `metadata.name` gets `{resource name}-<suffix>` as pulumi-kubernetes
auto-names it (a digest of its inputs stands in for the random suffix, so new content is a new
name, as a replacement would give). The resource options the engine receives (protect,
retainOnDelete, ignoreChanges, deleteBeforeReplace, provider, parent), which the mocks API
does not show, are recorded too (`Declared.options`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import runpy
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
import pulumi
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from ssmd_infra.pulumi.nkey_provider import NATS_USER_KEY_TYPE, ROLE, user_key_outputs
from ssmd_infra.pulumi.stack_config import PREFIX

IMAGE_TYPE = "docker-build:index:Image"


def stand_in_seed(role: str) -> str:
    """A fixed user seed per role for offline runs (never for a deployment: `create` draws
    one from the operating system's CSPRNG)."""
    raw = hashlib.sha256(f"ssmd offline NKEY of {role}".encode()).digest()
    seed: bytes = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)
    return seed.decode("ascii")


SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value


@dataclass(frozen=True)
class ResourceOptionsSeen:
    """The resource options the engine received with a registration (what mocks hide)."""

    protect: bool = False
    retain_on_delete: bool = False
    ignore_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False
    provider: str = ""
    parent: str = ""  # the parent's URN


@dataclass(frozen=True)
class Declared:
    """One resource the program registered."""

    type: str
    name: str
    inputs: dict[str, Any]
    urn: str = ""
    auto_name: str | None = None  # the name the provider gives an object without one
    options: ResourceOptionsSeen = field(default_factory=lambda: ResourceOptionsSeen())

    @property
    def parent_type(self) -> str | None:
        """Type of the enclosing resource (Pulumi's URN carries the parent's type)."""
        chain = self.urn.split("::")[2].split("$") if self.urn else []
        return chain[-2] if len(chain) > 1 else None

    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object as it would be applied (secrets unwrapped, auto-named)."""
        obj: dict[str, Any] = _integral(unwrap_secrets(self.inputs))
        if self.auto_name is not None:
            obj["metadata"] = {**obj.get("metadata", {}), "name": self.auto_name}
        return obj


@dataclass
class OfflineRun:
    resources: list[Declared] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    outputs_secret: bool = False

    def of_type(self, type_: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_]

    def named(self, type_: str, name: str) -> Declared:
        for r in self.resources:
            if r.type == type_ and r.name == name:
                return r
        raise KeyError(f"no {type_} named {name!r}")

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        return [r.manifest() for r in self.resources if r.type.startswith("kubernetes:")]


def unwrap_secrets(value: Any) -> Any:
    """Replace Pulumi's secret wrappers by their values (to render, or to search for leaks)."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) is not None and "value" in value:
            return unwrap_secrets(value["value"])
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


def _integral(value: Any) -> Any:
    """Pulumi carries numbers as doubles; Kubernetes' integer fields want 9100, not 9100.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class RecordingMocks(pulumi.runtime.Mocks):
    """Records registrations; thread-safe (the mock monitor is called from worker threads)."""

    def __init__(self) -> None:
        self.resources: list[Declared] = []
        self._lock = threading.Lock()

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ == NATS_USER_KEY_TYPE:
            # what the provider's create returns, but the same key for the same role in
            # every run: a resource that exists keeps its outputs across `pulumi up`s
            role = str(args.inputs[ROLE])
            outputs.update(user_key_outputs(role, stand_in_seed(role)))
        elif args.typ == IMAGE_TYPE:
            tag = str(args.inputs["tags"][0])
            repository = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
            body = json.dumps(args.inputs, sort_keys=True, default=str).encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            outputs.update(digest=digest, ref=f"{repository}@{digest}")
        metadata = args.inputs.get("metadata")
        unnamed = isinstance(metadata, dict) and not metadata.get("name")
        auto_name = None
        if args.typ.startswith("kubernetes:") and isinstance(metadata, dict) and unnamed:
            # pulumi-kubernetes auto-names `{resource name}-<random suffix>`, a new suffix
            # per replacement; a digest of the inputs stands in for the random part
            body = json.dumps(args.inputs, sort_keys=True, default=str).encode()
            suffix = hashlib.sha256(body).hexdigest()[:8]
            auto_name = f"{args.name}-{suffix}"
            outputs["metadata"] = {**metadata, "name": auto_name}
        with self._lock:
            self.resources.append(Declared(args.typ, args.name, args.inputs, auto_name=auto_name))
        return f"{args.name}-id", outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(MockMonitor):
    """The mock engine, also keeping each registration's resource options by URN."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.options: dict[str, ResourceOptionsSeen] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.options[response.urn] = ResourceOptionsSeen(
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            ignore_changes=tuple(request.ignoreChanges),
            delete_before_replace=bool(request.deleteBeforeReplace),
            provider=str(request.provider),
            parent=str(request.parent),
        )
        return response


def _attach_urns(run: OfflineRun, monitor: RecordingMonitor) -> None:
    by_key = {}
    for urn in monitor.get_registered_resources():
        parts = urn.split("::")
        by_key[(parts[2].split("$")[-1], parts[3])] = urn
    resources = []
    for r in run.resources:
        urn = by_key.get((r.type, r.name), "")
        seen = monitor.options.get(urn, ResourceOptionsSeen())
        resources.append(Declared(r.type, r.name, r.inputs, urn, r.auto_name, seen))
    run.resources[:] = resources


def _usable_event_loop() -> None:
    """Pulumi's runtime drives the thread's current event loop; make sure one is open.

    Under pytest, an asyncio test may have closed the loop or left none set.
    """
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        closed = loop.is_closed()
    except RuntimeError:
        closed = True
    if closed:
        asyncio.set_event_loop(asyncio.new_event_loop())


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_program(
    program: Path,
    config: Mapping[str, str],
    *,
    secret_keys: tuple[str, ...] = (),
    stack: str = "kalshi-prod",
    preview: bool = False,
) -> OfflineRun:
    """Run `program` (a Pulumi `__main__.py`) with `config` (keys without `ssmd:`).

    Raises what the program raises (a `pulumi.RunError` for user errors); the resources
    recorded up to then are in the exception's `offline_run` attribute.
    """
    _usable_event_loop()
    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="ssmd", stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(
        {f"{PREFIX}:{k}": v for k, v in config.items()},
        [f"{PREFIX}:{k}" for k in secret_keys],
    )
    result = OfflineRun(resources=mocks.resources)

    def main() -> None:
        with _cwd(program.parent):
            runpy.run_path(str(program), run_name="__main__")

    try:
        _sync_await(run_pulumi_func(main))
    except BaseException as exc:
        exc.offline_run = result  # type: ignore[attr-defined]
        raise
    finally:
        _attach_urns(result, monitor)
    root = pulumi_settings.get_root_resource()
    exported: dict[str, Any] = dict(getattr(root, "outputs", {}) or {})
    resolved = _sync_await(pulumi.Output.from_input(exported).future(with_unknowns=True))
    secret = _sync_await(pulumi.Output.from_input(exported).is_secret())
    result.outputs = resolved or {}
    result.outputs_secret = bool(secret)
    return result
