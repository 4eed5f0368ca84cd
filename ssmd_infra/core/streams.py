"""Desired NATS JetStream streams of an environment, as plain data.

One stream per shard (`ssmd-internal-{shard}` on `internal.{shard}.>`; optionally republishing
every stored message to `md.{feed}.>` on core NATS for live readers) and one client stream
(`ssmd-client`) that sources every shard stream with the subject transform
`internal.{shard}.{feed}.>` → `md.{feed}.>`. The Pulumi dynamic provider and the local runner
both turn these specs into server calls (`ssmd_infra.adapters.jetstream`), so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssmd_infra.core.environment import Environment, StreamLimits
from ssmd_infra.core.subjects import (
    CLIENT_STREAM,
    client_feed_wildcard,
    internal_feed_wildcard,
    internal_stream,
    internal_wildcard,
)


@dataclass(frozen=True)
class SourceSpec:
    """One stream sourced into another, with a subject transform."""

    name: str
    filter_subject: str
    transform_src: str
    transform_dest: str


@dataclass(frozen=True)
class RepublishSpec:
    """JetStream RePublish: every stored message matching `src` is also published on core
    NATS with its subject transformed to `dest` (headers and payload, unless headers_only)."""

    src: str
    dest: str
    headers_only: bool = False


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age: float
    max_bytes: int
    max_msgs: int
    replicas: int
    duplicate_window: float
    storage: str = "file"
    retention: str = "limits"
    discard: str = "old"
    sources: tuple[SourceSpec, ...] = field(default_factory=tuple)
    republish: RepublishSpec | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain-data form: Pulumi inputs/outputs and JSON (`republish` only when set, so a
        stream without it has the same properties as before the field existed)."""
        data: dict[str, object] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "max_age": self.max_age,
            "max_bytes": self.max_bytes,
            "max_msgs": self.max_msgs,
            "replicas": self.replicas,
            "duplicate_window": self.duplicate_window,
            "storage": self.storage,
            "retention": self.retention,
            "discard": self.discard,
            "sources": [vars(s).copy() for s in self.sources],
        }
        if self.republish is not None:
            data["republish"] = vars(self.republish).copy()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamSpec:
        sources = tuple(SourceSpec(**s) for s in data.get("sources") or [])
        republish = data.get("republish")
        return cls(
            name=str(data["name"]),
            subjects=tuple(data.get("subjects") or ()),
            max_age=float(data["max_age"]),
            max_bytes=int(data["max_bytes"]),
            max_msgs=int(data.get("max_msgs", -1)),
            replicas=int(data.get("replicas", 1)),
            duplicate_window=float(data["duplicate_window"]),
            storage=str(data.get("storage", "file")),
            retention=str(data.get("retention", "limits")),
            discard=str(data.get("discard", "old")),
            sources=sources,
            republish=RepublishSpec(**republish) if republish else None,
        )


def _spec(
    name: str,
    subjects: tuple[str, ...],
    limits: StreamLimits,
    sources: tuple[SourceSpec, ...] = (),
    republish: RepublishSpec | None = None,
) -> StreamSpec:
    return StreamSpec(
        name=name,
        subjects=subjects,
        max_age=limits.max_age,
        max_bytes=limits.max_bytes_int,
        max_msgs=limits.max_msgs,
        replicas=limits.replicas,
        duplicate_window=limits.duplicate_window,
        storage=limits.storage,
        sources=sources,
        republish=republish,
    )


def internal_stream_spec(env: Environment, shard: str) -> StreamSpec:
    """A shard's stream; with `streams.internal.republish`, it also republishes every stored
    message `internal.{shard}.{feed}.>` → `md.{feed}.>` on core NATS (live readers)."""
    env.shard(shard)
    limits = env.streams.internal
    republish = (
        RepublishSpec(
            src=internal_feed_wildcard(shard, env.feed), dest=client_feed_wildcard(env.feed)
        )
        if limits.republish
        else None
    )
    return _spec(internal_stream(shard), (internal_wildcard(shard),), limits, republish=republish)


def client_stream_spec(env: Environment, shards: list[str] | None = None) -> StreamSpec:
    names = list(env.shards) if shards is None else shards
    sources = tuple(
        SourceSpec(
            name=internal_stream(name),
            filter_subject=internal_feed_wildcard(name, env.feed),
            transform_src=internal_feed_wildcard(name, env.feed),
            transform_dest=client_feed_wildcard(env.feed),
        )
        for name in names
    )
    return _spec(CLIENT_STREAM, (), env.streams.client, sources)


def stream_specs(env: Environment) -> list[StreamSpec]:
    """Every stream the environment needs, internal ones first (sources must exist first)."""
    return [*(internal_stream_spec(env, s) for s in env.shards), client_stream_spec(env)]
