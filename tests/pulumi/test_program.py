"""The real `__main__.py` under Pulumi's mocks: what it declares, and what it refuses.

`ssmd_infra.pulumi.offline.run_program` stands in for the Pulumi engine (the CLI is not
installed here) and records every resource registration with its inputs and URN.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.shard_catalog import with_catalog
from ssmd_infra.pulumi import manifests
from ssmd_infra.pulumi.offline import SECRET_SIG, OfflineRun, run_program, unwrap_secrets

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "__main__.py"

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
SERVICE = "kubernetes:core/v1:Service"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
STREAM = "pulumi-python:dynamic/ssmd:NatsStream"
NATS_USER_KEY = "pulumi-python:dynamic/ssmd:NatsUserKey"
IMAGE = "docker-build:index:Image"

TEST_ENV = """\
# a test environment: carve-out, long-form resources, custom autoscaling, a pin
name: test-env
feed: kalshi
symbols:
  BTCUSD: {tier: 1, category: crypto}
  BTC-25DEC-T100000: {tier: 1, category: crypto}
  ETHUSD: {tier: 1, category: crypto}
  INXD-25-B4000: {tier: 1, category: financials}
  KXHIGHNY-24DEC05-B43.5: {tier: 2, category: climate}
  FED-25DEC-T4.25: {tier: 2, category: economics}
  PRES-2028-DEM: {tier: 3, category: politics}
assignments:
  FED-25DEC-T4.25: politics
streams:
  internal: {max_age: 48h, max_bytes: 20Gi, max_msgs: 1000000, duplicate_window: 5m}
  client: {max_age: 24h, max_bytes: 30Gi, duplicate_window: 2m}
archiver:
  storage: 20Gi
shards:
  btc:
    selector: {tier: 1, prefix: "BTC*"}
    replicas: 4
    min_replicas: 2
    resources:
      requests: {cpu: 250m, memory: 256Mi}
      limits: {cpu: "1", memory: 512Mi}
    autoscaling: {cpu_utilization: 60, message_rate: 5000}
    buffer: {capacity: 50000, drop_policy: block}
  tier1:
    selector: {tier: 1}
    replicas: 3
    resources: {cpu: 500m, memory: 512Mi}
  tier2:
    selector: {tier: 2}
    replicas: 1
  politics:
    selector: {tier: 3}
    replicas: 2
"""


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def private_key() -> str:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def key_body(private_key: str) -> str:
    """A distinctive line of the key's base64 body: must appear nowhere but the Secret."""
    return private_key.splitlines()[5]


@pytest.fixture
def base_config(private_key: str) -> dict[str, str]:
    return {
        "environment": "kalshi-prod",
        "namespace": "ssmd-prod",
        "createNamespace": "true",
        "imageRepository": "registry.example.com/ssmd/runtime",
        "imageTag": "v1",
        "natsUrl": "nats://nats.nats.svc:4222",
        "natsAdminUrl": "nats://127.0.0.1:4222",
        "redisUrl": "redis://redis.ssmd-prod.svc:6379/0",
        "archiveStorageClass": "fast-ssd",
        "kalshiApiKeyId": "key-id-123",
        "kalshiPrivateKey": private_key,
    }


def stack_line(key: str) -> int:
    """The line of `ssmd:<key>` in the committed stack file (problems point at it)."""
    lines = (REPO / "Pulumi.kalshi-prod.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(f"  ssmd:{key}:"))


def run(config: dict[str, str], **kwargs: Any) -> OfflineRun:
    return run_program(PROGRAM, config, secret_keys=("kalshiPrivateKey",), **kwargs)


@pytest.fixture
def test_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "test-env.yaml"
    path.write_text(TEST_ENV)
    return path


@pytest.fixture
def prod(base_config: dict[str, str]) -> OfflineRun:
    return run(base_config)


@pytest.fixture
def four(base_config: dict[str, str], test_env_file: Path) -> OfflineRun:
    return run({**base_config, "environment": str(test_env_file)})


def by_name(run_: OfflineRun, type_: str) -> dict[str, dict[str, Any]]:
    return {r.name: r.manifest() for r in run_.of_type(type_)}


# ----------------------------------------------------------------------------- what is declared


def test_kalshi_prod_declares_one_set_of_workloads_per_shard(prod: OfflineRun) -> None:
    counts = Counter(r.type for r in prod.resources)
    assert counts == {
        "ssmd:index:Environment": 1,
        "ssmd:index:Shard": 2,
        "kubernetes:core/v1:Namespace": 1,
        "kubernetes:core/v1:ServiceAccount": 1,
        "pulumi:providers:kubernetes": 2,  # the program's; the mutable-Secret one
        # endpoints, Kalshi credentials, the NATS authorization, and one seed Secret per
        # role in a pod: client, each shard's connector and archiver
        SECRET: 8,
        NATS_USER_KEY: 6,  # admin, client, connector-{shard} and archiver-{shard} per shard
        IMAGE: 1,
        CONFIGMAP: 3,  # one per shard, the shard catalog
        DEPLOYMENT: 2,
        HPA: 2,
        PDB: 1,  # tier2 has replicas: 1
        SERVICE: 2,
        PVC: 2,
        STATEFULSET: 2,
        STREAM: 3,
    }
    assert sorted(by_name(prod, DEPLOYMENT)) == ["tier1-connector", "tier2-connector"]


def test_every_child_is_parented_to_its_component(four: OfflineRun) -> None:
    parents = Counter((r.parent_type, r.type) for r in four.resources)
    env, shard = "ssmd:index:Environment", "ssmd:index:Shard"
    assert parents == {
        ("pulumi:pulumi:Stack", env): 1,
        (env, "kubernetes:core/v1:Namespace"): 1,
        (env, "kubernetes:core/v1:ServiceAccount"): 1,
        (env, "pulumi:providers:kubernetes"): 2,
        (env, SECRET): 4,  # endpoints, Kalshi, the NATS authorization, client's seed
        (env, NATS_USER_KEY): 2,  # admin, client
        (env, CONFIGMAP): 1,  # the shard catalog
        (env, IMAGE): 1,
        (env, shard): 4,
        (env, STREAM): 1,  # the client stream
        (shard, CONFIGMAP): 4,
        (shard, DEPLOYMENT): 4,
        (shard, HPA): 4,
        (shard, PDB): 3,  # tier2 has replicas: 1
        (shard, SERVICE): 4,
        (shard, PVC): 4,
        (shard, STATEFULSET): 4,
        (shard, STREAM): 4,
        (shard, NATS_USER_KEY): 8,  # its connector's and its archiver's
        (shard, SECRET): 8,  # their seeds
    }
    assert four.named(STREAM, "client-stream").parent_type == env


def test_hpa_scales_the_connector_on_cpu_and_message_rate(four: OfflineRun) -> None:
    hpas = by_name(four, HPA)
    btc = hpas["btc-connector-hpa"]["spec"]
    assert btc["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ssmd-connector-btc",
    }
    assert (btc["minReplicas"], btc["maxReplicas"]) == (2, 4)
    assert btc["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 60},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "ssmd_connector_message_rate"},
                "target": {"type": "AverageValue", "averageValue": "5000"},
            },
        },
    ]
    tier2 = hpas["tier2-connector-hpa"]["spec"]  # defaults: 70 %, 10000 msg/s, min 1
    assert (tier2["minReplicas"], tier2["maxReplicas"]) == (1, 1)
    assert tier2["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert tier2["metrics"][1]["pods"]["target"]["averageValue"] == "10000"


def test_connector_deployment_leaves_the_replica_count_to_the_hpa(four: OfflineRun) -> None:
    for deployment in by_name(four, DEPLOYMENT).values():
        assert "replicas" not in deployment["spec"]


def test_resources_short_form_sets_requests_equal_to_limits(four: OfflineRun) -> None:
    def resources(name: str) -> dict[str, Any]:
        spec = by_name(four, DEPLOYMENT)[name]["spec"]["template"]["spec"]
        return spec["containers"][0]["resources"]  # type: ignore[no-any-return]

    short = {"cpu": "500m", "memory": "512Mi"}
    assert resources("tier1-connector") == {"requests": short, "limits": short}
    assert resources("btc-connector") == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    default = {"cpu": "250m", "memory": "256Mi"}
    assert resources("tier2-connector") == {"requests": default, "limits": default}


def pod_specs(run_: OfflineRun) -> dict[str, dict[str, Any]]:
    specs = {}
    for type_ in (DEPLOYMENT, STATEFULSET):
        for name, obj in by_name(run_, type_).items():
            specs[name] = obj["spec"]["template"]["spec"]
    return specs


def test_pods_run_non_root_read_only_with_probes_on_healthz(four: OfflineRun) -> None:
    specs = pod_specs(four)
    assert len(specs) == 8
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "ssmd"
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name


def test_containers_run_the_runtime_commands_with_the_mounted_environment(four: OfflineRun) -> None:
    specs = pod_specs(four)
    connector = specs["btc-connector"]["containers"][0]
    assert connector["command"] == ["python", "-m", "runtime"]
    assert connector["args"] == [
        "connector",
        "/etc/ssmd/environment.yaml",
        "btc",
        "--metrics-port",
        "9100",
        "--kalshi-ws-url",
        "wss://api.elections.kalshi.com/trade-api/ws/v2",
        "--kalshi-rest-url",
        "https://api.elections.kalshi.com/trade-api/v2",
    ]
    env = {e["name"]: e for e in connector["env"]}
    kalshi = env["KALSHI_API_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert kalshi["key"] == "api-key-id"
    assert kalshi["name"].startswith("ssmd-kalshi-credentials-")
    assert env["SSMD_SHARDS_FILE"]["value"] == "/etc/ssmd-shards/shards.json"
    assert env["KALSHI_PRIVATE_KEY_PATH"]["value"] == "/var/run/secrets/kalshi/private-key.pem"
    assert env["NATS_NKEY_SEED"] == {
        "name": "NATS_NKEY_SEED",
        "value": "/var/run/secrets/nats/connector-btc.nk",
    }
    archiver = specs["btc-archiver"]["containers"][0]
    assert archiver["args"] == [
        "archiver",
        "/etc/ssmd/environment.yaml",
        "btc",
        "--metrics-port",
        "9100",
        "--data-dir",
        "/var/lib/ssmd/archive",
    ]
    # the endpoints only: the archiver needs no Kalshi credentials
    assert [e["name"] for e in archiver["env"]] == ["NATS_URL", "REDIS_URL", "NATS_NKEY_SEED"]
    assert archiver["env"][2]["value"] == "/var/run/secrets/nats/archiver-btc.nk"
    mounts = {m["name"]: m["mountPath"] for m in archiver["volumeMounts"]}
    assert mounts == {
        "config": "/etc/ssmd",
        "tmp": "/tmp",
        "archive": "/var/lib/ssmd/archive",
        "nats-seed": "/var/run/secrets/nats",
    }


def test_archiver_keeps_its_archive_on_a_persistent_volume(four: OfflineRun) -> None:
    sts = by_name(four, STATEFULSET)["btc-archiver"]["spec"]
    assert sts["replicas"] == 1
    assert sts["serviceName"] == "ssmd-archiver-btc"
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "archive"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "20Gi"}},  # the environment's archiver.storage
    }
    services = by_name(four, SERVICE)
    assert services["btc-archiver-svc"]["spec"]["clusterIP"] == "None"


def test_labels_follow_the_recommended_scheme(four: OfflineRun) -> None:
    deployment = by_name(four, DEPLOYMENT)["politics-connector"]
    expected = {
        "app.kubernetes.io/name": "ssmd",
        "app.kubernetes.io/instance": "test-env-politics",
        "app.kubernetes.io/component": "connector",
        "app.kubernetes.io/part-of": "ssmd",
        "app.kubernetes.io/managed-by": "pulumi",
        "ssmd.io/environment": "test-env",
        "ssmd.io/shard": "politics",
    }
    assert deployment["metadata"]["labels"] == expected
    assert deployment["spec"]["template"]["metadata"]["labels"] == expected
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        k: expected[k]
        for k in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        )
    }
    pdb = by_name(four, PDB)["politics-connector-pdb"]["spec"]
    assert pdb == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    for obj in (r.manifest() for r in four.resources if r.type.startswith("kubernetes:")):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pulumi"


def assignment_of(run_: OfflineRun, shard: str) -> dict[str, Any]:
    data = by_name(run_, CONFIGMAP)[f"{shard}-config"]["data"]
    return json.loads(data["assignment.json"])  # type: ignore[no-any-return]


def test_config_map_holds_the_shard_assignment(four: OfflineRun, test_env_file: Path) -> None:
    configmap = by_name(four, CONFIGMAP)["btc-config"]
    checksum = manifests.checksum(configmap["data"])
    assert configmap["metadata"]["name"] == f"ssmd-shard-btc-config-{checksum[:10]}"
    assert configmap["immutable"] is True
    assert configmap["metadata"]["namespace"] == "ssmd-prod"
    shard_env = parse_environment(configmap["data"]["environment.yaml"], "environment.yaml")
    assert shard_env.name == "test-env"
    assert list(shard_env.symbols) == ["BTC-25DEC-T100000", "BTCUSD"]
    btc = assignment_of(four, "btc")
    assert btc["shard"] == "btc" and btc["feed"] == "kalshi" and btc["environment"] == "test-env"
    assert btc["selector"] == {"tier": "1", "prefix": "BTC*"}
    assert btc["symbols"] == ["BTC-25DEC-T100000", "BTCUSD"]  # the carve-out won over tier1
    assert btc["symbol_count"] == 2
    assert btc["stream"] == "ssmd-internal-btc"
    assert btc["client_stream"] == "ssmd-client"
    assert btc["subjects"] == {
        "internal": "internal.btc.>",
        "internal_feed": "internal.btc.kalshi.>",
        "client": "md.kalshi.>",
    }
    assert btc["buffer"] == {"capacity": 50000, "drop_policy": "block"}
    assert assignment_of(four, "tier1")["symbols"] == ["ETHUSD", "INXD-25-B4000"]
    politics = assignment_of(four, "politics")
    assert politics["pins"] == {"FED-25DEC-T4.25": "politics"}
    assert politics["symbols"] == ["FED-25DEC-T4.25", "PRES-2028-DEM"]
    assert assignment_of(four, "tier2")["symbols"] == ["KXHIGHNY-24DEC05-B43.5"]


def test_each_shard_environment_resolves_to_exactly_its_symbols(four: OfflineRun) -> None:
    """The pods resolve from the shard's own environment.yaml (this shard only), with the
    shard catalog added for the other shards' selectors and pins: it must agree with the plan."""
    catalog = by_name(four, CONFIGMAP)["shard-catalog"]
    assert catalog["metadata"]["name"] == "ssmd-shards"
    for shard in ("btc", "tier1", "tier2", "politics"):
        text = by_name(four, CONFIGMAP)[f"{shard}-config"]["data"]["environment.yaml"]
        own = parse_environment(text, f"{shard}/environment.yaml")
        assert list(own.shards) == [shard]
        assert (
            resolve(own, merge_symbols(own)).by_shard[shard]
            == assignment_of(four, shard)["symbols"]
        )
        env = with_catalog(own, shard, catalog["data"]["shards.json"], "shards.json")
        assert sorted(env.shards) == ["btc", "politics", "tier1", "tier2"]
        layout = resolve(env, merge_symbols(env), complete_universe=False)
        assert layout.by_shard[shard] == assignment_of(four, shard)["symbols"]


def test_pod_templates_carry_the_checksum_of_their_config_map(four: OfflineRun) -> None:
    configmaps = by_name(four, CONFIGMAP)
    checksums = {}
    for shard in ("btc", "tier1", "tier2", "politics"):
        data = configmaps[f"{shard}-config"]["data"]
        digest = hashlib.sha256()
        for key in sorted(data):
            digest.update(key.encode() + b"\0" + data[key].encode() + b"\0")
        checksums[shard] = digest.hexdigest()
        for type_, name in ((DEPLOYMENT, f"{shard}-connector"), (STATEFULSET, f"{shard}-archiver")):
            annotations = by_name(four, type_)[name]["spec"]["template"]["metadata"]["annotations"]
            assert annotations["ssmd.io/config-checksum"] == checksums[shard]
            assert annotations["prometheus.io/port"] == "9100"
    assert len(set(checksums.values())) == 4


def test_moving_a_symbol_changes_the_checksum_so_pods_roll(
    base_config: dict[str, str], test_env_file: Path, four: OfflineRun
) -> None:
    test_env_file.write_text(
        TEST_ENV.replace("FED-25DEC-T4.25: politics", "FED-25DEC-T4.25: tier2")
    )
    moved = run({**base_config, "environment": str(test_env_file)})

    def checksum(run_: OfflineRun, shard: str) -> str:
        template = by_name(run_, DEPLOYMENT)[f"{shard}-connector"]["spec"]["template"]
        return template["metadata"]["annotations"]["ssmd.io/config-checksum"]  # type: ignore[no-any-return]

    for shard in ("politics", "tier2"):
        assert checksum(moved, shard) != checksum(four, shard)
    assert assignment_of(moved, "tier2")["symbols"] == ["FED-25DEC-T4.25", "KXHIGHNY-24DEC05-B43.5"]


def test_streams_are_declared_from_the_environment(four: OfflineRun) -> None:
    streams = {r.name: unwrap_secrets(r.inputs) for r in four.of_type(STREAM)}
    assert sorted(streams) == [
        "btc-stream",
        "client-stream",
        "politics-stream",
        "tier1-stream",
        "tier2-stream",
    ]
    btc = streams["btc-stream"]
    assert btc["name"] == "ssmd-internal-btc"
    assert btc["subjects"] == ["internal.btc.>"]
    assert (btc["max_age"], btc["max_bytes"], btc["max_msgs"]) == (48 * 3600, 20 * 2**30, 1000000)
    assert btc["duplicate_window"] == 300
    # where NATS is, is the provider's configuration, never a property of the stream
    assert "nats_url" not in btc
    client = streams["client-stream"]
    assert client["name"] == "ssmd-client"
    assert client["duplicate_window"] == 120
    assert client["sources"] == [
        {
            "name": f"ssmd-internal-{s}",
            "filter_subject": f"internal.{s}.kalshi.>",
            "transform_src": f"internal.{s}.kalshi.>",
            "transform_dest": "md.kalshi.>",
        }
        for s in ("btc", "tier1", "tier2", "politics")
    ]


def test_workloads_run_the_digest_pinned_image_built_from_the_dockerfile(prod: OfflineRun) -> None:
    (image,) = prod.of_type(IMAGE)
    assert image.inputs["push"] is True
    assert image.inputs["tags"] == ["registry.example.com/ssmd/runtime:v1"]
    assert image.inputs["dockerfile"]["location"] == "runtime/Dockerfile"
    assert image.inputs["context"]["location"] == "."
    assert image.inputs["buildOnPreview"] is False
    ref = prod.outputs["image"]
    assert re.fullmatch(r"registry\.example\.com/ssmd/runtime@sha256:[0-9a-f]{64}", ref)
    for name, spec in pod_specs(prod).items():
        assert spec["containers"][0]["image"] == ref, name


def test_a_prebuilt_image_skips_the_build(base_config: dict[str, str]) -> None:
    pinned = "registry.example.com/ssmd/runtime@sha256:" + "ab" * 32
    config = {k: v for k, v in base_config.items() if k != "imageRepository"}
    result = run({**config, "image": pinned})
    assert result.of_type(IMAGE) == []
    for spec in pod_specs(result).values():
        assert spec["containers"][0]["image"] == pinned


def test_stack_outputs_summarise_every_shard(four: OfflineRun) -> None:
    outputs = four.outputs
    assert outputs["client_subjects"] == "md.kalshi.>"
    assert outputs["client_stream"] == "ssmd-client"
    assert outputs["namespace"] == "ssmd-prod"
    shards = outputs["shards"]
    assert {name: s["symbols"] for name, s in shards.items()} == {
        "btc": 2,
        "tier1": 2,
        "tier2": 1,
        "politics": 2,
    }
    assert shards["btc"]["subjects"] == "internal.btc.>"
    assert shards["btc"]["stream"] == "ssmd-internal-btc"
    assert shards["btc"]["replicas"] == {"min": 2, "max": 4}


def test_kalshi_prod_outputs_say_the_symbol_list_is_resolved_at_runtime(prod: OfflineRun) -> None:
    tier1 = prod.outputs["shards"]["tier1"]
    assert tier1["symbols"] == 5  # the manual symbols; the Kalshi secmaster adds the rest live
    assert tier1["symbols_complete"] is False


def test_preview_declares_the_same_resources_as_up(
    base_config: dict[str, str], prod: OfflineRun
) -> None:
    """`pulumi preview` is the shard plan: it must show exactly what `up` would do."""
    plan = run(base_config, preview=True)
    assert sorted((r.type, r.name) for r in plan.resources) == sorted(
        (r.type, r.name) for r in prod.resources
    )


def test_the_committed_kalshi_prod_stack_file_deploys(private_key: str) -> None:
    """Pulumi.kalshi-prod.yaml as committed, plus the secret key an operator sets."""
    stack = yaml.safe_load((REPO / "Pulumi.kalshi-prod.yaml").read_text())["config"]
    config = {key.removeprefix("ssmd:"): str(value) for key, value in stack.items()}
    assert "kalshiPrivateKey" not in config  # never committed in clear
    result = run({**config, "kalshiPrivateKey": private_key})
    assert result.outputs["namespace"] == config["namespace"]
    assert sorted(result.outputs["shards"]) == ["tier1", "tier2"]
    streams = {r.name: r.inputs for r in result.of_type(STREAM)}
    assert not any("nats_url" in s for s in streams.values())


# ----------------------------------------------------------------------------- the private key


def test_private_key_goes_into_the_secret_only(
    four: OfflineRun, private_key: str, key_body: str
) -> None:
    secret = four.named(SECRET, "ssmd-kalshi-credentials")
    assert secret.inputs["stringData"][SECRET_SIG]  # still a Pulumi secret at registration
    data = secret.manifest()["stringData"]
    assert data == {"api-key-id": "key-id-123", "private-key.pem": private_key}
    for r in four.resources:
        if r.type == SECRET:
            continue
        text = json.dumps(unwrap_secrets(r.inputs))
        assert key_body not in text, f"private key material in {r.type} {r.name}"
        assert "BEGIN PRIVATE KEY" not in text
    assert key_body not in json.dumps(four.outputs)
    assert all(
        "PRIVATE KEY" not in json.dumps(by_name(four, CONFIGMAP)[n])
        for n in by_name(four, CONFIGMAP)
    )


def test_the_key_never_appears_in_log_output(
    base_config: dict[str, str], key_body: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("DEBUG"):
        run(base_config)
        with pytest.raises(pulumi.RunError):
            run({**base_config, "natsUrl": "http://bad"})
    assert key_body not in caplog.text


# ----------------------------------------------------------------------------- bad inputs


def refused(config: dict[str, str], secret_keys: tuple[str, ...] = ("kalshiPrivateKey",)) -> str:
    """Run and expect a Pulumi error that declared nothing; returns its message."""
    with pytest.raises(pulumi.RunError) as err:
        run_program(PROGRAM, config, secret_keys=secret_keys)
    declared = err.value.offline_run.resources  # type: ignore[attr-defined]
    assert declared == [], f"resources declared before the error: {declared}"
    return str(err.value)


def test_missing_environment_key_is_refused(base_config: dict[str, str]) -> None:
    config = {k: v for k, v in base_config.items() if k != "environment"}
    assert (
        f"Pulumi.kalshi-prod.yaml:{stack_line('environment')}: ssmd:environment: required"
        in refused(config)
    )


def test_an_environment_that_does_not_exist_is_refused(base_config: dict[str, str]) -> None:
    message = refused({**base_config, "environment": "kalshi-nowhere"})
    assert "unknown environment 'kalshi-nowhere'" in message
    assert "kalshi-prod" in message  # lists the available ones
    message = refused({**base_config, "environment": "missing/file.yaml"})
    assert "environment file missing/file.yaml does not exist" in message


def test_an_invalid_environment_fails_with_file_line_and_key(
    base_config: dict[str, str], test_env_file: Path
) -> None:
    test_env_file.write_text(TEST_ENV.replace("memory: 512Mi}\n  tier2", "memory: 512Mb}\n  tier2"))
    message = refused({**base_config, "environment": str(test_env_file)})
    line = TEST_ENV.splitlines().index("    resources: {cpu: 500m, memory: 512Mi}") + 1
    assert f"{test_env_file}:{line}" in message
    assert "shards.tier1.resources" in message
    assert "512Mb" in message


def test_an_ambiguous_environment_is_refused(
    base_config: dict[str, str], test_env_file: Path
) -> None:
    test_env_file.write_text(
        TEST_ENV + "  crypto:\n    selector: {category: crypto}\n    replicas: 1\n"
    )
    message = refused({**base_config, "environment": str(test_env_file)})
    assert "overlap: symbol 'ETHUSD' matches shards tier1, crypto" in message


@pytest.mark.parametrize("limit", ["max_bytes: 0", "max_age: 0s", "max_msgs: 0", "max_msgs: -5"])
def test_a_stream_limit_of_zero_or_below_is_refused(
    base_config: dict[str, str], test_env_file: Path, limit: str
) -> None:
    key = limit.split(":")[0]
    internal = "internal: {max_age: 48h, max_bytes: 20Gi, max_msgs: 1000000, duplicate_window: 5m}"
    fields = dict(item.split(": ") for item in internal[11:-1].split(", "))
    fields[key] = limit.split(": ")[1]
    replaced = "internal: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"
    test_env_file.write_text(TEST_ENV.replace(internal, replaced))
    message = refused({**base_config, "environment": str(test_env_file)})
    assert f"streams.internal.{key}" in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://nats:4222", "scheme must be one of"),
        ("nats://nats:99999", "malformed NATS URL"),
        ("nats//nats:4222", "scheme must be one of"),
    ],
)
def test_a_malformed_nats_url_is_refused(base_config: dict[str, str], url: str, why: str) -> None:
    message = refused({**base_config, "natsUrl": url})
    assert f"Pulumi.kalshi-prod.yaml:{stack_line('natsUrl')}: ssmd:natsUrl: " in message
    assert why in message


def test_a_missing_private_key_is_refused_for_the_kalshi_feed(base_config: dict[str, str]) -> None:
    config = {k: v for k, v in base_config.items() if k != "kalshiPrivateKey"}
    message = refused(config)
    assert "ssmd:kalshiPrivateKey: required" in message
    assert "pulumi config set --secret ssmd:kalshiPrivateKey < key.pem" in message


def test_a_private_key_in_clear_text_is_refused_without_echoing_it(
    base_config: dict[str, str], key_body: str
) -> None:
    message = refused(base_config, secret_keys=())
    assert "ssmd:kalshiPrivateKey: is stored in clear text" in message
    assert key_body not in message


def test_a_private_key_that_is_not_rsa_pem_is_refused(base_config: dict[str, str]) -> None:
    message = refused({**base_config, "kalshiPrivateKey": "not a key"})
    assert "is not an unencrypted PEM private key" in message
    ec_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    message = refused({**base_config, "kalshiPrivateKey": ec_key})
    assert "must be an RSA private key" in message


def test_an_unknown_stack_key_is_refused(base_config: dict[str, str]) -> None:
    message = refused({**base_config, "natsURL": "nats://x:4222"})
    assert "ssmd:natsURL: unknown stack config key" in message


def test_stack_and_environment_problems_are_reported_together(
    base_config: dict[str, str], test_env_file: Path
) -> None:
    test_env_file.write_text(TEST_ENV.replace("replicas: 3\n", "replicas: three\n"))
    config = {**base_config, "environment": str(test_env_file), "redisUrl": "mysql://db"}
    message = refused(config)
    assert message.startswith("2 problems:")
    assert (
        f"Pulumi.kalshi-prod.yaml:{stack_line('redisUrl')}: ssmd:redisUrl: malformed Redis URL"
        in message
    )
    assert f"{test_env_file}:" in message and "shards.tier1.replicas" in message


def test_every_stack_config_problem_is_reported_at_once(base_config: dict[str, str]) -> None:
    config = {
        **base_config,
        "natsUrl": "http://x",
        "redisUrl": "mysql://db",
        "metricsPort": "80",
        "archiveStorageSize": "50GB",
    }
    message = refused(config)
    assert message.startswith("4 problems:")
    for key in ("natsUrl", "redisUrl", "metricsPort", "archiveStorageSize"):
        assert f"ssmd:{key}" in message
