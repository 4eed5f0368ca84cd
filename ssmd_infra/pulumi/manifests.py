"""The Kubernetes objects of an environment, as plain dicts (no Pulumi import).

Pure builders so the exact objects the Pulumi components declare can be rendered and
validated offline against the Kubernetes OpenAPI schema, and read in a review. The
components (`ssmd_infra.pulumi.components`) pass these dicts to `pulumi_kubernetes` unchanged;
only the image reference, the Secrets' names and the credentials arrive as Pulumi outputs:
the builders put placeholders (`Refs.pending()`) that `ShardObjects.with_refs` swaps.

Per shard: a ConfigMap `ssmd-shard-{shard}-config-{hash}` (environment.yaml + assignment.json,
this shard's definition and symbols only; content-addressed, so an edit creates a new one,
the pod templates switch to it and roll, and the old one is deleted after — never a
delete-before-replace), the connector Deployment, its HorizontalPodAutoscaler and (when the
shard can run 2 replicas) a PodDisruptionBudget, the archiver StatefulSet (one replica, a
persistent volume per shard) and its headless Service.

Shared: the shard catalog ConfigMap `ssmd-shards` (every shard and pin, read by the
connectors for resolution, updated in place and referenced by no content: it rolls no pod),
and Secrets without a fixed name (the provider names them with a random suffix, so a
rotation creates a new Secret first and the pods that reference it roll): the endpoints
(NATS and Redis URLs, which may carry passwords), the Kalshi credentials, and under
`nats.auth: nkeys` one per NATS role holding that role's seed only (`{role}.nk`), mounted
read-only into that role's pods alone, whose path is `NATS_NKEY_SEED`. The NATS
`authorization` block for the NATS Helm release is the Secret `ssmd-nats-authorization`
(fixed name: the release refers to it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssmd_infra.core.environment import Environment, Shard
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_auth import archiver_role, connector_role
from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE, seed_file_name
from ssmd_infra.core.resolution import Layout
from ssmd_infra.core.shard_catalog import CATALOG_FILE_NAME, render_catalog
from ssmd_infra.core.subjects import (
    CLIENT_STREAM,
    client_feed_wildcard,
    internal_feed_wildcard,
    internal_stream,
    internal_wildcard,
)
from ssmd_infra.core.workload import (
    ARCHIVE_VOLUME,
    NATS_URL_VARIABLE,
    REDIS_URL_VARIABLE,
    RUNTIME_MODULE,
    SHARDS_FILE_VARIABLE,
    STATEFULSET_NAME_LIMIT,
    Endpoints,
    archiver_name,
    archiver_workload,
    connector_name,
    connector_workload,
)
from ssmd_infra.pulumi.stack_config import StackConfig

Obj = dict[str, Any]

APP_NAME = "ssmd"
CONFIG_DIR = "/etc/ssmd"
CATALOG_DIR = "/etc/ssmd-shards"
CATALOG_CONFIG_MAP = "ssmd-shards"
ENVIRONMENT_FILE = f"{CONFIG_DIR}/environment.yaml"
ASSIGNMENT_FILE = f"{CONFIG_DIR}/assignment.json"
SECRET_DIR = "/var/run/secrets/kalshi"
PRIVATE_KEY_FILE = "private-key.pem"
API_KEY_ID_KEY = "api-key-id"
ARCHIVE_DIR = "/var/lib/ssmd/archive"
SERVICE_ACCOUNT = "ssmd"
KALSHI_SECRET_PREFIX = "ssmd-kalshi-credentials"
ENDPOINTS_SECRET_PREFIX = "ssmd-endpoints"
NATS_SEED_SECRET_PREFIX = "ssmd-nats-seed"  # + the role: `ssmd-nats-seed-connector-tier1-<random>`
NATS_SEED_DIR = "/var/run/secrets/nats"
# owner and group (the pod's fsGroup, the runtime's group) read; a Secret volume's files
# belong to root, so 0400 would leave the non-root runtime unable to read its own seed
NATS_SEED_MODE = 0o440
NATS_AUTHORIZATION_KEY = "authorization.conf"
# the Kubernetes provider of the one fixed-name Secret, ssmd-nats-authorization: with
# `enableSecretMutable` its new content is an in-place update (the NATS release refers to it by
# name, so a replacement would delete it first); every other Secret is auto-named and replaced
MUTABLE_SECRETS_PROVIDER = "kubernetes-mutable-secrets"
# keys of the endpoints Secret, by the environment variable the runtime reads
ENDPOINT_KEYS = {NATS_URL_VARIABLE: "nats-url", REDIS_URL_VARIABLE: "redis-url"}
LABEL_VALUE_LIMIT = 63
CHECKSUM_ANNOTATION = "ssmd.io/config-checksum"
RUN_AS = 10001  # the image's non-root user (runtime/Dockerfile)
# A ConfigMap holds at most 1 MiB; leave room for metadata.
CONFIGMAP_LIMIT = 1_000_000


def config_map_name(shard: str, data_checksum: str) -> str:
    """Content-addressed: a new content is a new ConfigMap (created before the old goes)."""
    return f"ssmd-shard-{shard}-config-{data_checksum[:10]}"


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value (at most 63 characters).

    A longer value keeps a prefix and ends in a hash of the whole text, so two long values
    that share their first 54 characters still differ (a plain cut would give two shards the
    same selector).
    """
    if len(text) <= LABEL_VALUE_LIMIT:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    prefix = text[: LABEL_VALUE_LIMIT - len(digest) - 1].rstrip("-_.")
    return f"{prefix}-{digest}"


def selector_labels(env: Environment, shard: str, component: str) -> dict[str, str]:
    """The immutable subset used in selectors: never add a label that may change."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": label_value(f"{env.name}-{shard}"),
        "app.kubernetes.io/component": component,
    }


def labels(env: Environment, shard: str | None, component: str) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus the ssmd shard and environment."""
    out = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": "pulumi",
        "ssmd.io/environment": label_value(env.name),
    }
    if shard is not None:
        out.update(selector_labels(env, shard, component))
        out["ssmd.io/shard"] = label_value(shard)
    else:
        out["app.kubernetes.io/instance"] = label_value(env.name)
    return out


@dataclass(frozen=True)
class Refs:
    """What the workloads reference that only Pulumi knows: the image and the Secrets' names.

    Values are `str` (placeholders, or fixed values in tests) or Pulumi outputs.
    """

    image: object
    endpoints_secret: object
    kalshi_secret: object | None
    # the Secrets of the shard's roles' NATS seeds; None without NATS authorization
    connector_seed_secret: object | None = None
    archiver_seed_secret: object | None = None

    @staticmethod
    def pending(with_kalshi: bool, with_nats_seeds: bool = False) -> Refs:
        return Refs(
            image="image-pending",
            endpoints_secret=f"{ENDPOINTS_SECRET_PREFIX}-pending",
            kalshi_secret=f"{KALSHI_SECRET_PREFIX}-pending" if with_kalshi else None,
            connector_seed_secret=f"{NATS_SEED_SECRET_PREFIX}-connector-pending"
            if with_nats_seeds
            else None,
            archiver_seed_secret=f"{NATS_SEED_SECRET_PREFIX}-archiver-pending"
            if with_nats_seeds
            else None,
        )


@dataclass(frozen=True)
class ShardContext:
    """Everything the builders of one shard need."""

    env: Environment
    layout: Layout
    shard: Shard
    config: StackConfig
    refs: Refs

    @property
    def name(self) -> str:
        return self.shard.name


def shard_environment(env: Environment, layout: Layout, shard: str) -> str:
    """The environment as one shard's pods see it: the shared settings, this shard's definition,
    pins and symbols, nothing of the other shards.

    So an edit of another shard leaves this text — and so this shard's ConfigMap name and
    pods — unchanged, and the ConfigMap stays small (an environment with tens of thousands of
    manual symbols would not fit in one). With only its own symbols in the file, the shard
    resolves exactly them; a connector that resolves live markets also reads the shard
    catalog (`ssmd_infra.core.shard_catalog`) for the other shards' selectors and pins.
    """
    data = env.model_dump(mode="json", by_alias=True, exclude={"symbols", "shards"})
    data["shards"] = {
        shard: env.shards[shard].model_dump(mode="json", by_alias=True, exclude={"name"})
    }
    data["assignments"] = {s: t for s, t in env.assignments.items() if t == shard}
    header = (
        f"# Shard {shard!r} of environment {env.name!r}, generated from {Path(env.file or '').name}"
        f" by the ssmd Pulumi program:\n# this shard's definition and symbols only.\n"
    )
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter when present
    body = yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body + _symbols_block(env, layout.symbols_of(shard))


def _symbols_block(env: Environment, symbols: list[str]) -> str:
    """`symbols:` one per line in flow style, JSON-quoted (valid YAML, and fast to write).

    A YAML emitter takes seconds for tens of thousands of symbols; JSON strings are YAML
    double-quoted scalars, so this is exact for any ticker (dots, quotes, unicode).
    """
    if not symbols:
        return "symbols: {}\n"
    lines = ["symbols:"]
    for symbol in (s for s in symbols if s in env.symbols):
        attrs = ", ".join(
            f"{json.dumps(k)}: {json.dumps(v)}" for k, v in env.symbols[symbol].items()
        )
        lines.append(f"  {json.dumps(symbol)}: {{{attrs}}}")
    return "\n".join(lines) + "\n"


def assignment(ctx: ShardContext) -> Obj:
    """The shard's assignment as the runtime reads it; never any credential."""
    env, shard = ctx.env, ctx.shard
    pins = {symbol: target for symbol, target in env.assignments.items() if target == shard.name}
    symbols = ctx.layout.symbols_of(shard.name)
    return {
        "environment": env.name,
        "shard": shard.name,
        "feed": env.feed,
        "schema": env.schema_,
        "selector": dict(shard.selector),
        "pins": pins,
        "symbols": symbols,
        "symbol_count": len(symbols),
        "symbols_complete": env.secmaster.source == "manual",
        "secmaster": {
            "source": env.secmaster.source,
            "refresh_interval": env.secmaster.refresh_interval,
        },
        "subjects": {
            "internal": internal_wildcard(shard.name),
            "internal_feed": internal_feed_wildcard(shard.name, env.feed),
            "client": client_feed_wildcard(env.feed),
        },
        "stream": internal_stream(shard.name),
        "client_stream": CLIENT_STREAM,
        "buffer": {"capacity": shard.buffer.capacity, "drop_policy": shard.buffer.drop_policy},
        "autoscaling": {
            "min_replicas": shard.min_replicas,
            "max_replicas": shard.replicas,
            "cpu_utilization": shard.autoscaling.cpu_utilization,
            "message_rate": shard.autoscaling.message_rate,
        },
    }


def config_data(ctx: ShardContext) -> dict[str, str]:
    data = {
        "environment.yaml": shard_environment(ctx.env, ctx.layout, ctx.name),
        "assignment.json": json.dumps(assignment(ctx), indent=1, sort_keys=True) + "\n",
    }
    size = sum(len(v.encode()) for v in data.values())
    if size > CONFIGMAP_LIMIT:
        raise ConfigError(
            f"shard {ctx.name!r}: its ConfigMap would be {size} bytes, over Kubernetes' 1 MiB "
            f"limit ({len(ctx.layout.symbols_of(ctx.name))} symbols); split the shard"
        )
    return data


def checksum(data: dict[str, str]) -> str:
    """sha256 of a ConfigMap's data: annotating pod templates with it rolls them on change."""
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + b"\0" + data[key].encode() + b"\0")
    return digest.hexdigest()


def config_map(ctx: ShardContext, data: dict[str, str], data_checksum: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ctx, config_map_name(ctx.name, data_checksum), "config"),
        # never edited in place: a new content is a new name (and the pods roll onto it)
        "immutable": True,
        "data": data,
    }


def _meta(ctx: ShardContext, name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": ctx.config.namespace,
        "labels": labels(ctx.env, ctx.name, component),
    }


def _resources(shard: Shard) -> Obj:
    r = shard.resources
    return {
        "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
        "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory},
    }


def _container_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probes() -> Obj:
    probe = {"httpGet": {"path": "/healthz", "port": "metrics"}, "timeoutSeconds": 2}
    return {
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **probe,
            "initialDelaySeconds": 15,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
    }


def _pod_annotations(ctx: ShardContext, data_checksum: str) -> dict[str, str]:
    return {
        CHECKSUM_ANNOTATION: data_checksum,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ctx.config.metrics_port),
        "prometheus.io/path": "/metrics",
    }


def _endpoints(ctx: ShardContext) -> Endpoints:
    return Endpoints(nats_url=ctx.config.nats_url, redis_url=ctx.config.redis_url)


def _seed_file(role: str, secret: object | None) -> str | None:
    """Where role's seed is mounted in its pods (None: no seed Secret, no authentication)."""
    return f"{NATS_SEED_DIR}/{seed_file_name(role)}" if secret is not None else None


def _seed_mount(role: str, secret: object | None) -> tuple[list[Obj], list[Obj]]:
    """The volume mount and volume of `role`'s seed Secret (only its `{role}.nk` key)."""
    if secret is None:
        return [], []
    name = seed_file_name(role)
    mount = {"name": "nats-seed", "mountPath": NATS_SEED_DIR, "readOnly": True}
    volume = {
        "name": "nats-seed",
        "secret": {
            "secretName": secret,
            "defaultMode": NATS_SEED_MODE,
            "items": [{"key": name, "path": name}],
        },
    }
    return [mount], [volume]


def _secret_env(spec_env: dict[str, str], endpoints_secret: object) -> list[Obj]:
    """The workload's environment: the endpoints as references into the endpoints Secret
    (the URLs themselves never appear in a pod spec), the seed file's path as a value."""
    out: list[Obj] = []
    for name, value in spec_env.items():
        if name == NKEY_SEED_VARIABLE:  # a path, not a secret: the seed is the mounted file
            out.append({"name": name, "value": value})
            continue
        key = ENDPOINT_KEYS[name]  # a KeyError here is a new variable the Secret lacks
        out.append(
            {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": endpoints_secret, "key": key}},
            }
        )
    return out


def _volumes(ctx: ShardContext, data_checksum: str, extra: list[Obj]) -> list[Obj]:
    return [
        {
            "name": "config",
            "configMap": {
                "name": config_map_name(ctx.name, data_checksum),
                "defaultMode": 0o444,
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        *extra,
    ]


def _pod_spec(ctx: ShardContext, container: Obj, volumes: list[Obj]) -> Obj:
    return {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }


def _container(
    ctx: ShardContext, role: str, args: list[str], env: list[Obj], mounts: list[Obj]
) -> Obj:
    return {
        "name": role,
        "image": ctx.refs.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", RUNTIME_MODULE],
        "args": args,
        "env": env,
        "ports": [{"name": "metrics", "containerPort": ctx.config.metrics_port, "protocol": "TCP"}],
        "resources": _resources(ctx.shard),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
        **_probes(),
    }


def connector_deployment(ctx: ShardContext, data_checksum: str) -> Obj:
    spec = connector_workload(
        ENVIRONMENT_FILE,
        ctx.name,
        _endpoints(ctx),
        metrics_port=ctx.config.metrics_port,
        kalshi_ws_url=ctx.config.kalshi_ws_url,
        kalshi_rest_url=ctx.config.kalshi_rest_url,
        nkey_seed_file=_seed_file(connector_role(ctx.name), ctx.refs.connector_seed_secret),
    )
    env = [
        *_secret_env(spec.env, ctx.refs.endpoints_secret),
        {"name": SHARDS_FILE_VARIABLE, "value": f"{CATALOG_DIR}/{CATALOG_FILE_NAME}"},
    ]
    mounts: list[Obj] = [{"name": "shards", "mountPath": CATALOG_DIR, "readOnly": True}]
    extra_volumes: list[Obj] = [
        {"name": "shards", "configMap": {"name": CATALOG_CONFIG_MAP, "defaultMode": 0o444}}
    ]
    kalshi_secret = ctx.refs.kalshi_secret
    if kalshi_secret is not None:
        env += [
            {
                "name": "KALSHI_API_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": kalshi_secret, "key": API_KEY_ID_KEY}},
            },
            {"name": "KALSHI_PRIVATE_KEY_PATH", "value": f"{SECRET_DIR}/{PRIVATE_KEY_FILE}"},
        ]
        mounts.append({"name": "kalshi-credentials", "mountPath": SECRET_DIR, "readOnly": True})
        extra_volumes += [
            {
                "name": "kalshi-credentials",
                "secret": {
                    "secretName": kalshi_secret,
                    "defaultMode": 0o440,
                    "items": [{"key": PRIVATE_KEY_FILE, "path": PRIVATE_KEY_FILE}],
                },
            }
        ]
    seed_mounts, seed_volumes = _seed_mount(
        connector_role(ctx.name), ctx.refs.connector_seed_secret
    )
    mounts += seed_mounts
    extra_volumes += seed_volumes
    container = _container(ctx, "connector", spec.args, env, mounts)
    select = selector_labels(ctx.env, ctx.name, "connector")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ctx, connector_name(ctx.name), "connector"),
        "spec": {
            # No `replicas`: the HPA owns the count; setting it here would reset it at every
            # `pulumi up`. A new Deployment starts at 1 and the HPA lifts it to min_replicas.
            "selector": {"matchLabels": select},
            "strategy": {
                "type": "RollingUpdate",
                # surge first: the new pod subscribes before the old one lets go (dedup by id)
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(ctx.env, ctx.name, "connector"),
                    "annotations": _pod_annotations(ctx, data_checksum),
                },
                "spec": _pod_spec(ctx, container, _volumes(ctx, data_checksum, extra_volumes)),
            },
        },
    }


def archiver_service(ctx: ShardContext) -> Obj:
    """Headless Service: the StatefulSet's network identity and a metrics scrape target."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ctx, archiver_name(ctx.name), "archiver"),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(ctx.env, ctx.name, "archiver"),
            "ports": [
                {"name": "metrics", "port": ctx.config.metrics_port, "targetPort": "metrics"}
            ],
        },
    }


def archiver_statefulset(ctx: ShardContext, data_checksum: str) -> Obj:
    name = archiver_name(ctx.name)
    if len(name) > STATEFULSET_NAME_LIMIT:
        raise ConfigError(
            f"shard {ctx.name!r}: the archiver StatefulSet name {name!r} is longer than "
            f"{STATEFULSET_NAME_LIMIT} characters; use a shorter shard name"
        )
    spec = archiver_workload(
        ENVIRONMENT_FILE,
        ctx.name,
        _endpoints(ctx),
        metrics_port=ctx.config.metrics_port,
        data_dir=ARCHIVE_DIR,
        nkey_seed_file=_seed_file(archiver_role(ctx.name), ctx.refs.archiver_seed_secret),
    )
    seed_mounts, seed_volumes = _seed_mount(archiver_role(ctx.name), ctx.refs.archiver_seed_secret)
    mounts = [{"name": "archive", "mountPath": ARCHIVE_DIR}, *seed_mounts]
    env = _secret_env(spec.env, ctx.refs.endpoints_secret)
    container = _container(ctx, "archiver", spec.args, env, mounts)
    size = ctx.config.archive_storage_size or ctx.env.archiver.storage
    claim_spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if ctx.config.archive_storage_class:
        claim_spec["storageClassName"] = ctx.config.archive_storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(ctx, name, "archiver"),
        "spec": {
            # One archiver per shard: its durable consumer and daily files are per shard.
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": selector_labels(ctx.env, ctx.name, "archiver")},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {
                    "labels": labels(ctx.env, ctx.name, "archiver"),
                    "annotations": _pod_annotations(ctx, data_checksum),
                },
                "spec": _pod_spec(ctx, container, _volumes(ctx, data_checksum, seed_volumes)),
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {
                        "name": ARCHIVE_VOLUME,
                        "labels": labels(ctx.env, ctx.name, "archiver"),
                    },
                    "spec": claim_spec,
                }
            ],
        },
    }


def connector_hpa(ctx: ShardContext) -> Obj:
    shard = ctx.shard
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(ctx, connector_name(ctx.name), "connector"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": connector_name(ctx.name),
            },
            "minReplicas": shard.min_replicas,
            "maxReplicas": shard.replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": shard.autoscaling.cpu_utilization,
                        },
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "ssmd_connector_message_rate"},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(shard.autoscaling.message_rate),
                        },
                    },
                },
            ],
            # Each scale event moves symbols between replicas: damp the flapping.
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


def connector_pdb(ctx: ShardContext) -> Obj | None:
    """Keep one connector up through voluntary disruptions (drains), when there can be two.

    With `replicas: 1` (the autoscaler's maximum) a budget could only block drains or
    protect nothing, so there is none.
    """
    if ctx.shard.replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ctx, connector_name(ctx.name), "connector"),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": selector_labels(ctx.env, ctx.name, "connector")},
        },
    }


@dataclass(frozen=True)
class ShardObjects:
    config_map: Obj
    connector: Obj
    hpa: Obj
    pdb: Obj | None
    archiver: Obj
    archiver_service: Obj
    checksum: str
    refs: Refs

    def with_refs(self, refs: Refs) -> ShardObjects:
        """The same objects referencing `refs` (the image build's output, the Secrets' names:
        known only to Pulumi) instead of the ones they were built with."""
        values = {
            old: new
            for old, new in [
                (self.refs.image, refs.image),
                (self.refs.endpoints_secret, refs.endpoints_secret),
                (self.refs.kalshi_secret, refs.kalshi_secret),
                (self.refs.connector_seed_secret, refs.connector_seed_secret),
                (self.refs.archiver_seed_secret, refs.archiver_seed_secret),
            ]
            if isinstance(old, str)
        }

        def swap(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            if isinstance(value, list):
                return [swap(v) for v in value]
            if isinstance(value, str) and value in values:
                return values[value]
            return value

        def with_template(workload: Obj) -> Obj:
            spec = workload["spec"]
            return {**workload, "spec": {**spec, "template": swap(spec["template"])}}

        return dataclasses.replace(
            self,
            connector=with_template(self.connector),
            archiver=with_template(self.archiver),
            refs=refs,
        )

    def all(self) -> list[Obj]:
        objects = [self.config_map, self.connector, self.hpa, self.pdb]
        return [o for o in [*objects, self.archiver_service, self.archiver] if o is not None]


def shard_objects(ctx: ShardContext) -> ShardObjects:
    """Every Kubernetes object of one shard; raises `ConfigError` before returning any."""
    data = config_data(ctx)
    digest = checksum(data)
    return ShardObjects(
        config_map=config_map(ctx, data, digest),
        connector=connector_deployment(ctx, digest),
        hpa=connector_hpa(ctx),
        pdb=connector_pdb(ctx),
        archiver=archiver_statefulset(ctx, digest),
        archiver_service=archiver_service(ctx),
        checksum=digest,
        refs=ctx.refs,
    )


def namespace(env: Environment, config: StackConfig) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": config.namespace, "labels": labels(env, None, "namespace")},
    }


def service_account(env: Environment, config: StackConfig) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": SERVICE_ACCOUNT,
            "namespace": config.namespace,
            "labels": labels(env, None, "runtime"),
        },
        # The runtime never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
    }


def shard_catalog(env: Environment, config: StackConfig) -> Obj:
    """Every shard and pin, for the connectors' resolution of live markets.

    A fixed name that the pod templates reference by name only: an edit changes its data in
    place (the program's Kubernetes provider has `enableConfigMapMutable`) and rolls no pod;
    the connectors read it afresh at every symbol refresh.
    """
    text = render_catalog(env)
    if len(text.encode()) > CONFIGMAP_LIMIT:
        raise ConfigError(
            f"the shard catalog of {env.name!r} would be {len(text.encode())} bytes, over "
            f"Kubernetes' 1 MiB ConfigMap limit ({len(env.assignments)} pins); pin fewer symbols"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CATALOG_CONFIG_MAP,
            "namespace": config.namespace,
            "labels": labels(env, None, "catalog"),
        },
        "data": {CATALOG_FILE_NAME: text},
    }


def _unnamed_secret(env: Environment, config: StackConfig, component: str) -> Obj:
    """A Secret without `metadata.name`: pulumi-kubernetes names it after the resource
    (`ssmd-endpoints-<random>`), so a new content is a new Secret, created before the old one
    is deleted, and the pods referencing it by name roll onto it. (A name derived from a hash
    of the content would publish a hash of the password.)"""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": config.namespace, "labels": labels(env, None, component)},
        "type": "Opaque",
    }


def endpoints_secret(
    env: Environment, config: StackConfig, nats_url: object, redis_url: object
) -> Obj:
    """The NATS and Redis URLs of the pods (Pulumi secrets in the program): may hold passwords."""
    return {
        **_unnamed_secret(env, config, "endpoints"),
        "stringData": {
            ENDPOINT_KEYS[NATS_URL_VARIABLE]: nats_url,
            ENDPOINT_KEYS[REDIS_URL_VARIABLE]: redis_url,
        },
    }


def kalshi_secret(env: Environment, config: StackConfig, private_key: object) -> Obj:
    """The only object that carries the private key (a Pulumi secret output in the program)."""
    return {
        **_unnamed_secret(env, config, "credentials"),
        "stringData": {
            API_KEY_ID_KEY: config.kalshi_api_key_id or "",
            PRIVATE_KEY_FILE: private_key,
        },
    }


def nats_seed_secret(env: Environment, config: StackConfig, role: str, seed: object) -> Obj:
    """The only object that carries `role`'s NATS seed (a Pulumi secret output in the
    program), under the key its file must be named by (`{role}.nk`: the runtime checks it)."""
    secret = _unnamed_secret(env, config, "nats-credentials")
    secret["metadata"]["annotations"] = {"ssmd.io/nats-role": role}
    return {**secret, "stringData": {seed_file_name(role): seed}}


def nats_authorization_secret(
    env: Environment, namespace: str, name: str, authorization: object
) -> Obj:
    """The nats-server `authorization` block (`render_authorization`: users by public NKEY
    and their permissions) for the NATS Helm release to include; a fixed `name`, since the
    release refers to it. It holds public keys only."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(env, None, "nats-authorization"),
        },
        "type": "Opaque",
        "stringData": {NATS_AUTHORIZATION_KEY: authorization},
    }
