"""NATS least privilege in the Pulumi program: one NKEY per role, each seed in its own Secret
mounted into that role's pods only, the `ssmd-nats-authorization` Secret for the NATS
release, and the stream provider connecting as `admin`.

The program runs under Pulumi's mocks (`ssmd_infra.pulumi.offline`), where a role's key is
the same in every run, as a deployed key is across `pulumi up`s; the providers' methods run
against a real nats-server with the generated authorization.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider

from ssmd_infra.adapters import jetstream
from ssmd_infra.adapters.nats_auth import write_auth_dir
from ssmd_infra.core.environment import Environment, load_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.nats_auth import ADMIN_ROLE, nats_roles, render_authorization
from ssmd_infra.core.nkey_seeds import read_seed_file, seed_file_name, user_public_key
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.core.subjects import internal_stream
from ssmd_infra.local.servers import ServerProcess, start_nats
from ssmd_infra.pulumi.nkey_provider import NatsUserKeyProvider
from ssmd_infra.pulumi.offline import (
    SECRET_SIG,
    OfflineRun,
    run_program,
    stand_in_seed,
    unwrap_secrets,
)
from ssmd_infra.pulumi.stream_provider import (
    ADMIN_SEED_PROPERTY,
    NatsStreamProvider,
    props_from_spec,
)

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "__main__.py"
SECRET = "kubernetes:core/v1:Secret"
STREAM = "pulumi-python:dynamic/ssmd:NatsStream"
NATS_USER_KEY = "pulumi-python:dynamic/ssmd:NatsUserKey"


@pytest.fixture(scope="module")
def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def prod(private_key: str) -> OfflineRun:
    """The committed kalshi-prod stack."""
    stack = yaml.safe_load((REPO / "Pulumi.kalshi-prod.yaml").read_text())["config"]
    config = {key.removeprefix("ssmd:"): str(value) for key, value in stack.items()}
    return run_program(
        PROGRAM,
        {**config, "kalshiPrivateKey": private_key},
        secret_keys=("kalshiPrivateKey",),
    )


@pytest.fixture(scope="module")
def prod_env() -> Environment:
    return load_environment("kalshi-prod")


def users(authorization: str) -> dict[str, dict[str, Any]]:
    """role → {nkey, publish, subscribe} of a rendered `authorization` block."""
    out: dict[str, dict[str, Any]] = {}
    pattern = re.compile(
        r"# (?P<role>[\w-]+): .*?\n\s*\{\n\s*nkey: (?P<nkey>\"\w+\")\n\s*permissions: \{\n"
        r"\s*publish: \{allow: (?P<pub>\[.*?\])\}\n\s*subscribe: \{allow: (?P<sub>\[.*?\])\}"
    )
    for match in pattern.finditer(authorization):
        out[match["role"]] = {
            "nkey": json.loads(match["nkey"]),
            "publish": json.loads(match["pub"]),
            "subscribe": json.loads(match["sub"]),
        }
    return out


def test_the_authorization_gives_every_shard_of_kalshi_prod_exactly_its_subjects(
    prod: OfflineRun, prod_env: Environment
) -> None:
    secret = prod.named(SECRET, "ssmd-nats-authorization").manifest()
    assert secret["metadata"] == {
        "name": "ssmd-nats-authorization",
        "namespace": "nats",  # ssmd:natsNamespace: where the NATS release runs
        "labels": secret["metadata"]["labels"],
    }
    text = secret["stringData"]["authorization.conf"]
    keys = prod.outputs["nats_users"]
    assert text == render_authorization(prod_env, keys)  # the core's one rule
    granted = users(text)
    assert set(granted) == set(nats_roles(prod_env)) == set(keys)
    assert sorted(prod_env.shards) == ["tier1", "tier2"]
    for shard in prod_env.shards:
        stream = f"ssmd-internal-{shard}"
        assert granted[f"connector-{shard}"]["publish"] == [
            f"internal.{shard}.>",
            f"$JS.API.STREAM.INFO.{stream}",
        ]
        assert granted[f"connector-{shard}"]["subscribe"] == [f"_INBOX_connector-{shard}.>"]
        consumer = f"archiver-{shard}"
        assert granted[f"archiver-{shard}"]["publish"] == [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
        assert granted[f"archiver-{shard}"]["subscribe"] == [f"_INBOX_archiver-{shard}.>"]
        others = [s for s in prod_env.shards if s != shard]
        for role in (f"connector-{shard}", f"archiver-{shard}"):  # nothing of another shard
            rules = " ".join(granted[role]["publish"] + granted[role]["subscribe"])
            assert not any(f".{other}." in rules or other in rules for other in others)
    assert granted["admin"]["publish"] == ["$JS.API.>"]
    for role, key in keys.items():  # each user is the key the program generated for it
        assert granted[role]["nkey"] == key == user_public_key(stand_in_seed(role))


def test_seeds_appear_only_in_their_own_roles_secret(
    prod: OfflineRun, prod_env: Environment
) -> None:
    seeds = {role: stand_in_seed(role) for role in nats_roles(prod_env)}
    in_secrets: dict[str, str] = {}
    for resource in prod.resources:
        text = json.dumps(unwrap_secrets(resource.inputs))
        found = [role for role, seed in seeds.items() if seed in text]
        if resource.type == SECRET and found:
            (role,) = found  # one seed per Secret
            assert resource.name == f"ssmd-nats-seed-{role}"
            data = resource.manifest()["stringData"]
            assert data == {seed_file_name(role): seeds[role]}
            assert resource.inputs["stringData"][SECRET_SIG]  # a Pulumi secret
            in_secrets[role] = resource.name
        elif resource.type == STREAM and found:
            # the stream provider's admin seed: a secret input, nothing else
            assert found == [ADMIN_ROLE]
            assert resource.inputs[ADMIN_SEED_PROPERTY][SECRET_SIG]
            others = {k: v for k, v in resource.inputs.items() if k != ADMIN_SEED_PROPERTY}
            assert seeds[ADMIN_ROLE] not in json.dumps(unwrap_secrets(others))
        else:
            assert found == [], f"a seed in {resource.type} {resource.name}"
    # every role in a pod has its Secret; the admin's seed never reaches the cluster
    assert set(in_secrets) == set(seeds) - {ADMIN_ROLE}
    outputs = json.dumps(prod.outputs)
    assert not any(seed in outputs for seed in seeds.values())
    assert all(f'"{seed[:10]}' not in outputs for seed in seeds.values())


def test_a_roles_seed_is_mounted_read_only_into_that_roles_pods_only(prod: OfflineRun) -> None:
    secrets = {r.name: r.auto_name for r in prod.of_type(SECRET) if r.auto_name}
    workloads = {
        r.name: r.manifest()["spec"]["template"]["spec"]
        for r in prod.resources
        if r.type in ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet")
    }
    assert sorted(workloads) == [
        "tier1-archiver",
        "tier1-connector",
        "tier2-archiver",
        "tier2-connector",
    ]
    for name, pod in workloads.items():
        shard, kind = name.split("-")
        role = f"{kind}-{shard}"
        seed_volumes = [v for v in pod["volumes"] if "nats" in json.dumps(v)]
        assert seed_volumes == [
            {
                "name": "nats-seed",
                "secret": {
                    "secretName": secrets[f"ssmd-nats-seed-{role}"],
                    "defaultMode": 0o440,
                    "items": [{"key": f"{role}.nk", "path": f"{role}.nk"}],
                },
            }
        ]
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "nats-seed")
        assert mount == {
            "name": "nats-seed",
            "mountPath": "/var/run/secrets/nats",
            "readOnly": True,
        }
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NATS_NKEY_SEED"] == f"/var/run/secrets/nats/{role}.nk"


def test_the_seeds_never_appear_in_log_output(
    private_key: str, prod_env: Environment, caplog: pytest.LogCaptureFixture
) -> None:
    stack = yaml.safe_load((REPO / "Pulumi.kalshi-prod.yaml").read_text())["config"]
    config = {key.removeprefix("ssmd:"): str(value) for key, value in stack.items()}
    with caplog.at_level("DEBUG"):
        run_program(
            PROGRAM, {**config, "kalshiPrivateKey": private_key}, secret_keys=("kalshiPrivateKey",)
        )
    assert not any(stand_in_seed(role) in caplog.text for role in nats_roles(prod_env))


# ----------------------------------------------------------------------------- the providers


def test_a_user_key_is_drawn_at_create_and_never_again() -> None:
    provider = NatsUserKeyProvider()
    assert provider.check({}, {"role": "connector-tier1"}).failures == []
    assert provider.check({}, {"role": "tier1"}).failures[0].reason == (
        "not an ssmd NATS role: 'tier1'"
    )
    first = provider.create({"role": "connector-tier1"})
    second = provider.create({"role": "connector-tier1"})
    assert first.outs["seed"] != second.outs["seed"]  # from the CSPRNG, not from the role
    assert first.outs["public_key"] == user_public_key(first.outs["seed"])
    olds = first.outs
    same = provider.diff("connector-tier1", olds, {"role": "connector-tier1"})
    assert not same.changes and not same.replaces
    other = provider.diff("connector-tier1", olds, {"role": "connector-tier2"})
    assert other.changes and other.replaces == ["role"]
    assert provider.update("connector-tier1", olds, {"role": "connector-tier1"}).outs == olds
    assert provider.read("connector-tier1", olds).outs == olds
    # dill pickles it by reference, as the engine does
    revived = dill.loads(base64.b64decode(serialize_provider(NatsUserKeyProvider())))
    assert revived.create({"role": "admin"}).id == "admin"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("provider-auth")
    changes = write_auth_dir(load_environment("kalshi-prod"), root / "auth")
    server = start_nats(root / "nats", extra_config=changes.config.read_text())
    yield server, changes.directory
    server.stop()


def configured(url: str) -> NatsStreamProvider:
    provider = NatsStreamProvider()
    provider.configure(ConfigureRequest(Config({"ssmd:natsAdminUrl": url}, "ssmd")))
    return provider


@pytest.mark.servers
def test_the_stream_provider_manages_streams_as_admin(
    secured: tuple[ServerProcess, Path], prod_env: Environment
) -> None:
    server, auth = secured
    admin = (auth / seed_file_name(ADMIN_ROLE)).read_text().strip()
    spec = internal_stream_spec(prod_env, "tier1")
    props = {**props_from_spec(spec), ADMIN_SEED_PROPERTY: admin}
    provider = configured(server.url)
    created = provider.create(props)
    assert created.outs[ADMIN_SEED_PROPERTY] == admin  # kept for read and delete
    assert provider.read(created.id, created.outs).id == internal_stream("tier1")
    without = {k: v for k, v in props.items() if k != ADMIN_SEED_PROPERTY}
    with pytest.raises(SsmdError, match="Authorization Violation"):  # anonymous: refused
        configured(server.url).read(created.id, without)
    provider.delete(created.id, created.outs)
    seed = read_seed_file(auth / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)

    async def exists() -> bool:
        async with jetstream.connect(server.url, seed=seed) as nc:
            return await jetstream.stream_raw_info(nc, internal_stream("tier1")) is not None

    assert not asyncio.run(exists())


@pytest.mark.servers
def test_the_stream_provider_refuses_a_server_that_lets_anyone_in(
    nats_url: str, secured: tuple[ServerProcess, Path], prod_env: Environment
) -> None:
    _, auth = secured
    admin = (auth / seed_file_name(ADMIN_ROLE)).read_text().strip()
    spec = internal_stream_spec(prod_env, "tier2")
    with pytest.raises(SsmdError, match="accepts connections without credentials") as raised:
        configured(nats_url).create({**props_from_spec(spec), ADMIN_SEED_PROPERTY: admin})
    assert "ssmd-nats-authorization Secret in the NATS Helm release" in str(raised.value)
