"""Every Kubernetes object the program declares, validated offline against the OpenAPI schema.

The objects are taken from the program's own resource registrations (under Pulumi's mocks),
so what is validated is what `pulumi up` would send. `kubernetes-validate` checks them
strictly (unknown fields are errors) against a recent Kubernetes schema.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd_infra.core.environment import load_environment, parse_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.pulumi import manifests
from ssmd_infra.pulumi.offline import run_program
from ssmd_infra.pulumi.stack_config import StackConfig, parse_stack_config

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSIONS = ["1.33.0", "1.35.0"]


@pytest.fixture(scope="module")
def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def stack_values(private_key: str, environment: str) -> dict[str, str]:
    return {
        "environment": environment,
        "namespace": "ssmd",
        "createNamespace": "true",
        "imageRepository": "registry.example.com/ssmd/runtime",
        "natsUrl": "nats://nats.nats.svc:4222",
        "redisUrl": "redis://redis:6379/0",
        "archiveStorageClass": "standard",
        "kalshiApiKeyId": "key-id",
        "kalshiPrivateKey": private_key,
    }


@pytest.fixture(scope="module", params=["kalshi-prod", "kalshi-dev"])
def declared_objects(request: pytest.FixtureRequest, private_key: str) -> list[dict[str, Any]]:
    run = run_program(
        REPO / "__main__.py",
        stack_values(private_key, request.param),
        secret_keys=("kalshiPrivateKey",),
    )
    return run.kubernetes_objects()


def _id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_declared_object_is_valid_kubernetes(
    declared_objects: list[dict[str, Any]], version: str
) -> None:
    kinds = sorted({o["kind"] for o in declared_objects})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Namespace",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    failures = []
    for obj in declared_objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{_id(obj)}: {exc.message} at {list(exc.path)}")
    assert failures == []


def test_the_validator_rejects_what_kubernetes_would(
    declared_objects: list[dict[str, Any]],
) -> None:
    """The check above can fail: a typo'd field and a wrong type are caught."""
    deployment = next(o for o in declared_objects if o["kind"] == "Deployment")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)
    hpa = next(o for o in declared_objects if o["kind"] == "HorizontalPodAutoscaler")
    wrong = json.loads(json.dumps(hpa))
    wrong["spec"]["maxReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[-1], strict=True)


def test_object_names_are_valid_and_unique(declared_objects: list[dict[str, Any]]) -> None:
    ids = [(o["kind"], o["metadata"]["name"]) for o in declared_objects]
    assert len(ids) == len(set(ids))
    for _, name in ids:
        assert len(name) <= 63 and name == name.lower()


# ----------------------------------------------------------------------------- pure builders


def context(env_name: str = "kalshi-dev", **config: str) -> manifests.ShardContext:
    env = load_environment(REPO / "exchanges" / "environments" / f"{env_name}.yaml")
    layout = resolve(env, merge_symbols(env))
    values = {
        "environment": env_name,
        "imageRepository": "r.example.com/ssmd",
        "natsUrl": "nats://n:4222",
        "redisUrl": "redis://r:6379",
        **config,
    }
    stack: StackConfig = parse_stack_config("test", values)
    return manifests.ShardContext(
        env=env,
        layout=layout,
        shard=env.shards["tier1"],
        config=stack,
        refs=manifests.Refs(
            image="r.example.com/ssmd@sha256:" + "0" * 64,
            endpoints_secret="ssmd-endpoints-0123abcd",
            kalshi_secret=None,
        ),
    )


def test_without_a_private_key_no_credentials_are_mounted() -> None:
    objects = manifests.shard_objects(context())
    pod = objects.connector["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["config", "tmp", "shards"]
    assert [e["name"] for e in pod["containers"][0]["env"]] == [
        "NATS_URL",
        "REDIS_URL",
        "SSMD_SHARDS_FILE",
    ]


def test_checksum_is_stable_and_follows_the_config_map_data() -> None:
    first = manifests.shard_objects(context())
    second = manifests.shard_objects(context())
    assert first.checksum == second.checksum
    assert first.checksum == manifests.checksum(first.config_map["data"])
    changed = dict(first.config_map["data"], **{"environment.yaml": "changed"})
    assert manifests.checksum(changed) != first.checksum


def test_storage_size_from_the_stack_overrides_the_environment() -> None:
    objects = manifests.shard_objects(context(archiveStorageSize="200Gi"))
    (claim,) = objects.archiver["spec"]["volumeClaimTemplates"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "200Gi"}},
    }


def test_a_config_map_over_the_kubernetes_limit_is_refused() -> None:
    symbols = "\n".join(f"  SYM-{i:06d}-{'X' * 40}: {{tier: 1}}" for i in range(25_000))
    text = f"name: big\nfeed: kalshi\nsymbols:\n{symbols}\nshards:\n  tier1: {{selector: {{tier: 1}}, replicas: 1}}\n"
    env = parse_environment(text, "big.yaml")
    base = context()
    ctx = dataclasses.replace(
        base,
        env=env,
        layout=resolve(env, merge_symbols(env)),
        shard=env.shards["tier1"],
    )
    with pytest.raises(
        ConfigError, match=r"shard 'tier1': its ConfigMap would be .* over Kubernetes' 1 MiB"
    ):
        manifests.shard_objects(ctx)


def test_a_shard_name_too_long_for_a_statefulset_is_refused() -> None:
    name = "s" * 40
    text = f"name: long\nfeed: kalshi\nsymbols: {{A: {{tier: 1}}}}\nshards:\n  {name}: {{selector: {{tier: 1}}, replicas: 1}}\n"
    env = parse_environment(text, "long.yaml")
    base = context()
    ctx = dataclasses.replace(
        base,
        env=env,
        layout=resolve(env, merge_symbols(env)),
        shard=env.shards[name],
    )
    with pytest.raises(ConfigError, match=f"shard '{name}': the archiver StatefulSet name"):
        manifests.shard_objects(ctx)


def test_long_label_values_end_in_a_hash_and_selectors_stay_unique() -> None:
    """A 60-character environment name: `{env}-{shard}` is over 63 characters for both
    shards, and a plain cut would give them the same selector."""
    env_name = "e" * 60
    first = manifests.label_value(f"{env_name}-tier1a")
    second = manifests.label_value(f"{env_name}-tier1b")
    assert first != second
    assert len(first) == len(second) == 63
    assert first.startswith("e" * 54 + "-")
    assert manifests.label_value("short-tier1") == "short-tier1"


def test_a_pdb_only_when_the_shard_can_run_two_replicas() -> None:
    ctx = context()
    one = dataclasses.replace(ctx, shard=ctx.shard.model_copy(update={"replicas": 1}))
    two = dataclasses.replace(ctx, shard=ctx.shard.model_copy(update={"replicas": 2}))
    assert manifests.connector_pdb(one) is None
    pdb = manifests.connector_pdb(two)
    assert pdb is not None and pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
