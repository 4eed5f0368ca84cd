"""The stack configuration model: every problem at once, as `file:line: ssmd:key: why`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssmd_infra.core.errors import ConfigError
from ssmd_infra.pulumi.stack_config import StackConfig, parse_stack_config

STACK_FILE = """\
config:
  ssmd:environment: kalshi-prod
  ssmd:natsUrl: http://nats:4222
  ssmd:imageRepository: Not/Valid
  ssmd:metricsPort: "80"
  ssmd:protect: maybe
  ssmd:colour: blue
"""
GOOD = {
    "environment": "kalshi-prod",
    "imageRepository": "registry.example.com/ssmd",
    "natsUrl": "nats://nats:4222",
    "redisUrl": "redis://redis:6379/0",
}


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def problems(values: dict[str, str], directory: Path | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_stack_config("test", values, directory=directory, **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in exc.value.problems]


def test_a_valid_stack_is_a_frozen_model_with_defaults(tmp_path: Path) -> None:
    config = parse_stack_config("test", GOOD, directory=tmp_path)
    assert isinstance(config, StackConfig)
    assert config.namespace == "ssmd" and config.protect is True
    assert config.nats_admin_url == "nats://nats:4222"  # defaults to the pods' URL
    assert config.metrics_port == 9100 and config.image_tag == "latest"
    assert config.has_private_key is False
    with pytest.raises(ValueError, match="frozen"):
        config.namespace = "other"  # type: ignore[misc]


def test_every_problem_is_reported_at_once_with_the_stack_files_lines(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.test.yaml").write_text(STACK_FILE)
    values = {
        "environment": "kalshi-prod",
        "natsUrl": "http://nats:4222",
        "imageRepository": "Not/Valid",
        "metricsPort": "80",
        "protect": "maybe",
        "colour": "blue",
    }
    known = (
        "archiveStorageClass, archiveStorageSize, createNamespace, environment, image, "
        "imageRepository, imageTag, kalshiApiKeyId, kalshiPrivateKey, kalshiRestUrl, "
        "kalshiWsUrl, metricsPort, namespace, natsAdminUrl, natsNamespace, natsUrl, protect, "
        "redisUrl"
    )
    assert problems(values, tmp_path) == [
        # absent from the file: no line to point at
        "Pulumi.test.yaml: ssmd:redisUrl: required: the Redis URL the pods use, e.g. "
        "redis://redis.ssmd:6379/0",
        "Pulumi.test.yaml:3: ssmd:natsUrl: malformed NATS URL 'http://nats:4222': "
        "scheme must be one of nats://, tls://",
        "Pulumi.test.yaml:4: ssmd:imageRepository: 'Not/Valid' is not a valid image repository",
        "Pulumi.test.yaml:5: ssmd:metricsPort: must be a port number 1024-65535 (non-root), "
        "got '80'",
        "Pulumi.test.yaml:6: ssmd:protect: must be true or false, got 'maybe'",
        f"Pulumi.test.yaml:7: ssmd:colour: unknown stack config key (known: {known})",
    ]


def test_a_prebuilt_image_needs_no_repository_and_a_bad_one_no_second_complaint() -> None:
    image = "registry.example.com/ssmd@sha256:" + "a" * 64
    values = {k: v for k, v in GOOD.items() if k != "imageRepository"}
    assert parse_stack_config("test", {**values, "image": image}).image == image
    found = problems({**values, "image": "registry.example.com/ssmd:latest"})
    assert found == [
        "Pulumi.test.yaml: ssmd:image: must be a digest-pinned reference "
        "repo@sha256:<64 hex>, got 'registry.example.com/ssmd:latest'"
    ]
    assert problems(values) == [
        "Pulumi.test.yaml: ssmd:imageRepository: required: where to push the runtime image "
        "(or set ssmd:image)"
    ]


def test_the_private_key_is_checked_never_kept_nor_echoed() -> None:
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    config = parse_stack_config(
        "test",
        {**GOOD, "kalshiApiKeyId": "id", "kalshiPrivateKey": rsa_pem},
        secret_keys={"kalshiPrivateKey"},
        feed="kalshi",
    )
    assert config.has_private_key is True
    assert rsa_pem not in config.model_dump_json()
    body = rsa_pem.splitlines()[3]
    clear = problems({**GOOD, "kalshiApiKeyId": "id", "kalshiPrivateKey": rsa_pem}, feed="kalshi")
    assert clear == [
        "Pulumi.test.yaml: ssmd:kalshiPrivateKey: is stored in clear text; set it as a secret: "
        "`pulumi config set --secret ssmd:kalshiPrivateKey < key.pem`"
    ]
    ec_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    wrong = problems(
        {**GOOD, "kalshiApiKeyId": "id", "kalshiPrivateKey": ec_pem},
        secret_keys={"kalshiPrivateKey"},
        feed="kalshi",
    )
    assert wrong == [
        "Pulumi.test.yaml: ssmd:kalshiPrivateKey: must be an RSA private key "
        "(Kalshi signs requests with RSA-PSS)"
    ]
    assert all(body not in p for p in clear + wrong)
    missing = problems(GOOD, feed="kalshi")
    assert [p.split(": ")[1] for p in missing] == ["ssmd:kalshiApiKeyId", "ssmd:kalshiPrivateKey"]
