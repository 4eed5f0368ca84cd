"""An exact day roll: the program run twice under mocks, before and after one edit.

Each test diffs the registered resources by URN and inputs (`ssmd_infra.pulumi.preview`, with
the providers' replacement rules) and asserts the exact sets of resources that change in
place, are replaced (a new `metadata.name`: content-addressed ConfigMaps; new Secret data),
are created and are deleted — what `pulumi preview` would list after that edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd_infra.pulumi.offline import OfflineRun, run_program, unwrap_secrets
from ssmd_infra.pulumi.preview import Roll, render, roll

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "__main__.py"
IMAGE = "docker-build:index:Image"
SECRET = "kubernetes:core/v1:Secret"

ENV = """\
name: roll-env
feed: kalshi
symbols:
  BTCUSD: {tier: 1, category: crypto}
  BTC-25DEC-T100000: {tier: 1, category: crypto}
  ETHUSD: {tier: 1, category: crypto}
  KXHIGHNY-24DEC05-B43.5: {tier: 2, category: climate}
  FED-25DEC-T4.25: {tier: 2, category: economics}
shards:
  tier1:
    selector: {tier: 1}
    replicas: 3
  tier2:
    selector: {tier: 2}
    replicas: 2
"""

BTC_CARVE_OUT = """\
  btc:
    selector: {tier: 1, symbol: "BTC*"}
    replicas: 2
"""


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return _pem(), _pem()


def config_for(env_file: Path, private_key: str, **override: str) -> dict[str, str]:
    return {
        "environment": str(env_file),
        "namespace": "ssmd-roll",
        "imageRepository": "registry.example.com/ssmd/runtime",
        "natsUrl": "nats://ssmd:pods-s3cret@nats.nats.svc:4222",
        "natsAdminUrl": "nats://admin:admin-s3cret@127.0.0.1:4222",
        "redisUrl": "redis://:redis-s3cret@redis.ssmd.svc:6379/0",
        "kalshiApiKeyId": "key-id-123",
        "kalshiPrivateKey": private_key,
        **override,
    }


SECRET_KEYS = ("kalshiPrivateKey", "natsUrl", "natsAdminUrl", "redisUrl")


def run(env_text: str, tmp_path: Path, private_key: str, **override: str) -> OfflineRun:
    env_file = tmp_path / "roll-env.yaml"
    env_file.write_text(env_text)
    return run_program(
        PROGRAM, config_for(env_file, private_key, **override), secret_keys=SECRET_KEYS
    )


def _name(resource_inputs: dict[str, Any]) -> object:
    metadata = resource_inputs.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roll")


@pytest.fixture(scope="module")
def base(module_tmp: Path, keys: tuple[str, str]) -> OfflineRun:
    return run(ENV, module_tmp, keys[0])


def edited(
    tmp_path: Path, keys: tuple[str, str], env_text: str = ENV, **override: str
) -> OfflineRun:
    return run(env_text, tmp_path, keys[0], **override)


def test_one_shards_replicas_roll_only_that_shard(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, ENV.replace("replicas: 3", "replicas: 4"))
    assert roll(base, after) == Roll(
        changed={"tier1-connector-hpa", "tier1-connector", "tier1-archiver", "shard-catalog"},
        replaced={"tier1-config"},
        created=set(),
        deleted=set(),
    )


def test_a_symbol_added_to_one_shard_rolls_only_that_shard(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    text = ENV.replace(
        "  FED-25DEC-T4.25:", "  KXRAIN-25DEC-T2: {tier: 2, category: climate}\n  FED-25DEC-T4.25:"
    )
    after = edited(tmp_path, keys, text)
    assert roll(base, after) == Roll(
        changed={"tier2-connector", "tier2-archiver"},
        replaced={"tier2-config"},
        created=set(),
        deleted=set(),
    )


def nats_roles_of(shard: str) -> set[str]:
    """The NATS resources of a shard's roles: each role's NKEY and the Secret of its seed."""
    roles = (f"connector-{shard}", f"archiver-{shard}")
    return {f"{kind}-{role}" for role in roles for kind in ("nats-user", "ssmd-nats-seed")}


def test_a_carve_out_creates_the_new_shard_and_rolls_only_the_shard_it_takes_from(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, ENV + BTC_CARVE_OUT)
    assert roll(base, after) == Roll(
        changed={
            "tier1-connector",
            "tier1-archiver",
            "shard-catalog",
            "client-stream",
            "ssmd-nats-authorization",  # lists the new roles (in place: its name is fixed)
        },
        replaced={"tier1-config"},
        created={
            *nats_roles_of("btc"),
            "btc",
            "btc-config",
            "btc-stream",
            "btc-connector",
            "btc-connector-hpa",
            "btc-connector-pdb",
            "btc-archiver-svc",
            "btc-archive",
            "btc-archiver",
        },
        deleted=set(),
    )


def test_a_rename_deletes_the_old_shard_creates_the_new_and_touches_no_other_shard(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, ENV.replace("  tier2:", "  weather:"))
    parts = {
        "",
        "-config",
        "-stream",
        "-connector",
        "-connector-hpa",
        "-connector-pdb",
        "-archiver-svc",
        "-archive",
        "-archiver",
    }
    assert roll(base, after) == Roll(
        changed={"shard-catalog", "client-stream", "ssmd-nats-authorization"},
        replaced=set(),
        created={f"weather{p}" for p in parts} | nats_roles_of("weather"),
        # tier2's users revoked: no longer in the authorization, their keys and Secrets gone
        deleted={f"tier2{p}" for p in parts} | nats_roles_of("tier2"),
    )


def test_a_new_admin_url_alone_changes_nothing(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, natsAdminUrl="nats://admin:admin-s3cret@127.0.0.1:14222")
    assert roll(base, after) == Roll(set(), set(), set(), set())


def test_a_rotated_kalshi_key_replaces_its_secret_and_rolls_every_connector_only(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = run(ENV, tmp_path, keys[1])
    assert roll(base, after) == Roll(
        changed={"tier1-connector", "tier2-connector"},
        replaced={"ssmd-kalshi-credentials"},
        created=set(),
        deleted=set(),
    )


def test_a_rotated_nats_password_replaces_the_endpoints_secret_and_rolls_every_pod(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, natsUrl="nats://ssmd:new-s3cret@nats.nats.svc:4222")
    assert roll(base, after) == Roll(
        changed={"tier1-connector", "tier2-connector", "tier1-archiver", "tier2-archiver"},
        replaced={"ssmd-endpoints"},
        created=set(),
        deleted=set(),
    )


@pytest.mark.parametrize(
    "text",
    [
        ENV.replace("replicas: 3", "replicas: 4"),
        ENV + BTC_CARVE_OUT,
        ENV.replace("  tier2:", "  weather:"),
        ENV.replace("BTCUSD: {tier: 1", "BTCUSD: {tier: 2"),
    ],
    ids=["replicas", "carve-out", "rename", "move"],
)
def test_the_image_is_untouched_by_every_environment_edit(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str], text: str
) -> None:
    after = edited(tmp_path, keys, text)
    (image_before,) = base.of_type(IMAGE)
    (image_after,) = after.of_type(IMAGE)
    assert image_after.inputs == image_before.inputs
    assert image_after.inputs["buildOnPreview"] is False
    assert image_after.inputs["context"] == {"location": "."}
    assert image_after.inputs["dockerfile"] == {"location": "runtime/Dockerfile"}


def test_secret_urls_appear_only_in_secret_objects(base: OfflineRun) -> None:
    for resource in base.resources:
        text = json.dumps(unwrap_secrets(resource.inputs), default=str)
        for secret in ("pods-s3cret", "admin-s3cret", "redis-s3cret"):
            if resource.type == SECRET and secret != "admin-s3cret":
                continue
            assert secret not in text, f"{secret} in {resource.type} {resource.name}"
    (endpoints,) = [r for r in base.of_type(SECRET) if r.name == "ssmd-endpoints"]
    assert unwrap_secrets(endpoints.inputs)["stringData"] == {
        "nats-url": "nats://ssmd:pods-s3cret@nats.nats.svc:4222",
        "redis-url": "redis://:redis-s3cret@redis.ssmd.svc:6379/0",
    }
    assert "s3cret" not in json.dumps(base.outputs, default=str)


def test_pods_read_the_endpoints_from_the_secret(base: OfflineRun) -> None:
    deployment = base.named("kubernetes:apps/v1:Deployment", "tier1-connector").manifest()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert refs["NATS_URL"]["key"] == "nats-url"
    assert refs["REDIS_URL"]["key"] == "redis-url"
    assert refs["NATS_URL"]["name"].startswith("ssmd-endpoints-")
    assert not any(a.startswith(("nats://", "redis://")) for a in container["args"])
    assert container["command"] == ["python", "-m", "runtime"]


def test_a_bigger_archive_resizes_the_claims_in_place_and_keeps_the_statefulsets(
    base: OfflineRun, tmp_path: Path, keys: tuple[str, str]
) -> None:
    after = edited(tmp_path, keys, archiveStorageSize="200Gi")
    assert roll(base, after) == Roll(
        changed={"tier1-archive", "tier2-archive"}, replaced=set(), created=set(), deleted=set()
    )
    claim = after.named("kubernetes:core/v1:PersistentVolumeClaim", "tier1-archive").manifest()
    assert claim["metadata"]["name"] == "archive-ssmd-archiver-tier1-0"  # the StatefulSet's own
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    archiver = after.named("kubernetes:apps/v1:StatefulSet", "tier1-archiver")
    assert archiver.options.ignore_changes == ("spec.volumeClaimTemplates",)


def test_data_and_the_namespace_are_protected_by_default(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    result = edited(tmp_path, keys, createNamespace="true")
    kept = {
        r.name: (r.options.protect, r.options.retain_on_delete)
        for r in result.resources
        if r.options.protect or r.options.retain_on_delete
    }
    assert kept == {
        "namespace": (True, True),
        "tier1-stream": (True, False),
        "tier2-stream": (True, False),
        "client-stream": (True, False),
        "tier1-archive": (True, True),
        "tier2-archive": (True, True),
    }


def test_protect_false_lets_pulumi_delete_streams_and_the_namespace(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    result = edited(tmp_path, keys, createNamespace="true", protect="false")
    assert not any(r.options.protect for r in result.resources)
    # the namespace and the archives are still left in the cluster when the stack drops them
    retained = {r.name for r in result.resources if r.options.retain_on_delete}
    assert retained == {"namespace", "tier1-archive", "tier2-archive"}


def test_no_config_object_is_deleted_before_it_is_replaced(base: OfflineRun) -> None:
    assert not any(r.options.delete_before_replace for r in base.resources)
    configs = [r for r in base.resources if r.type in ("kubernetes:core/v1:ConfigMap", SECRET)]
    fixed = {r.name for r in configs if _name(r.inputs)}
    # fixed names: the content-addressed shard ConfigMaps, the catalog and the NATS
    # authorization (both edited in place)
    assert fixed == {"tier1-config", "tier2-config", "shard-catalog", "ssmd-nats-authorization"}
    providers = {r.name: r.inputs for r in base.of_type("pulumi:providers:kubernetes")}
    assert providers["kubernetes"]["enableConfigMapMutable"] == "true"
    assert "enableSecretMutable" not in providers["kubernetes"]  # rotations replace
    assert providers["kubernetes-mutable-secrets"]["enableSecretMutable"] == "true"
    authorization = base.named(SECRET, "ssmd-nats-authorization")
    assert authorization.options.provider.split("::")[-2] == "kubernetes-mutable-secrets"


def test_a_60_character_environment_name_keeps_every_selector_unique_and_valid(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    import kubernetes_validate

    name = "kalshi-" + "x" * 53
    assert len(name) == 60
    text = ENV.replace("name: roll-env", f"name: {name}").replace("  tier2:", "  tier1b:")
    result = edited(tmp_path, keys, text)
    selectors = []
    for obj in result.kubernetes_objects():
        kubernetes_validate.validate(obj, "1.35.0", strict=True)
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63
        match = obj.get("spec", {}).get("selector", {})
        match = match.get("matchLabels", match) if isinstance(match, dict) else {}
        if match:
            selectors.append((obj["kind"], json.dumps(match, sort_keys=True)))
    # per shard: the Deployment, its PDB, the archiver Service and StatefulSet
    assert len(selectors) == len(set(selectors)) == 8
    instances = {json.loads(s)["app.kubernetes.io/instance"] for _, s in selectors}
    assert len(instances) == 2


# ----------------------------------------------------------------------------- README preview

TIER1A = """\
  tier1a:
    selector:
      tier: 1
      prefix: "BTC*"
    replicas: 2
    resources:
      cpu: "500m"
      memory: "512Mi"

"""
README_BLOCK = ("<!-- preview: split of tier1 -->\n```text\n", "```\n<!-- /preview -->")


def seed_split_preview(tmp_path: Path, private_key: str) -> str:
    """`pulumi preview -s kalshi-prod` after the seed's split of tier1 (a `tier1a` carve-out
    of the BTC markets), with the committed stack file."""
    import yaml

    stack = yaml.safe_load((REPO / "Pulumi.kalshi-prod.yaml").read_text())["config"]
    config = {key.removeprefix("ssmd:"): str(value) for key, value in stack.items()}
    config["kalshiPrivateKey"] = private_key
    seed = (REPO / "exchanges" / "environments" / "kalshi-prod.yaml").read_text()
    split = seed.replace("  tier2:\n", TIER1A + "  tier2:\n", 1)
    assert split != seed
    runs = []
    for name, text in (("before", seed), ("after", split)):
        (tmp_path / name).mkdir()
        env_file = tmp_path / name / "kalshi-prod.yaml"
        env_file.write_text(text)
        runs.append(
            run_program(
                PROGRAM, {**config, "environment": str(env_file)}, secret_keys=("kalshiPrivateKey",)
            )
        )
    return render(runs[0], runs[1], stack="kalshi-prod")


def test_the_readme_shows_the_exact_preview_of_the_seeds_split_of_tier1(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    preview = seed_split_preview(tmp_path, keys[0])
    readme = (REPO / "README.md").read_text()
    start, end = README_BLOCK
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown == preview
