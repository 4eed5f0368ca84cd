"""The shard catalog: every shard's definition and the pins, apart from any shard's own config.

In Kubernetes a shard's pods get their own shard's definition and symbols only (so an edit of
another shard does not roll them), but a connector whose symbols come from a live secmaster
still has to resolve markets the way the whole environment does: a carve-out shard (`tier=1,
symbol=BTC*`) takes markets away from `tier=1`, and a pin moves one. The catalog carries
exactly that — every shard's definition and every pin — in one small document that the
Pulumi program writes into a ConfigMap which no pod template references by content (changing
it rolls no pod) and which the connector re-reads at every symbol refresh.

Pure: render a catalog from an `Environment`, and overlay a catalog's text onto a shard's own
environment.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ssmd_infra.core.environment import Environment, Shard
from ssmd_infra.core.errors import ConfigError

CATALOG_FILE_NAME = "shards.json"


class ShardCatalog(BaseModel):
    """Every shard of one environment and every pin (symbol → shard)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    environment: str
    shards: dict[str, Shard]
    assignments: dict[str, str]


def render_catalog(env: Environment) -> str:
    """The catalog of `env` as JSON (stable: sorted keys, so equal inputs give equal text)."""
    data: dict[str, Any] = {
        "environment": env.name,
        "shards": {
            name: shard.model_dump(mode="json", by_alias=True, exclude={"name"})
            for name, shard in env.shards.items()
        },
        "assignments": dict(env.assignments),
    }
    return json.dumps(data, sort_keys=True, indent=1) + "\n"


def with_catalog(env: Environment, shard: str, text: str, file: str) -> Environment:
    """`env` (a shard's own view) with the other shards and pins of the catalog in `text`.

    The shard's own definition and pins win: they are what its pods were rolled with. A
    catalog of another environment is refused (a ConfigMap mounted into the wrong pods).
    """
    try:
        catalog = ShardCatalog.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{file}: invalid shard catalog at {where or 'top'}: {first['msg']}"
        ) from None
    if catalog.environment != env.name:
        raise ConfigError(
            f"{file}: the shard catalog is of environment {catalog.environment!r}, not {env.name!r}"
        )
    shards = {
        name: spec.model_copy(update={"name": name})
        for name, spec in catalog.shards.items()
        if name != shard
    }
    shards[shard] = env.shard(shard)
    pins = {s: t for s, t in catalog.assignments.items() if t != shard}
    pins.update({s: t for s, t in env.assignments.items() if t == shard})
    return env.model_copy(update={"shards": shards, "assignments": pins})
