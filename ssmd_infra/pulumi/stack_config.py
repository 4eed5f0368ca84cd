"""The Pulumi stack's own settings (`Pulumi.<stack>.yaml`, namespace `ssmd:`), validated.

Pure: it takes the raw key → value mapping, so it is testable without Pulumi and every
problem is reported at once, naming the stack file and the key, before any resource is
declared. The Kalshi private key is only checked here (present, set as a secret, a PEM RSA
private key); its text is never stored in `StackConfig` nor put in a message — the program
reads it again as a Pulumi secret and it goes into the Kubernetes Secret only.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.kalshi import KALSHI_PROD, private_key_problem
from ssmd_infra.core.nats_url import nats_url_problem, redact_url
from ssmd_infra.core.quantity import canonical_quantity

PREFIX = "ssmd"
DEFAULT_NAMESPACE = "ssmd"
DEFAULT_METRICS_PORT = 9100
DEFAULT_KALSHI_WS_URL = KALSHI_PROD.ws_url
DEFAULT_KALSHI_REST_URL = KALSHI_PROD.rest_url
PRIVATE_KEY = "kalshiPrivateKey"
FEEDS_NEEDING_KALSHI_CREDENTIALS = frozenset({"kalshi"})

KEYS: dict[str, str] = {
    "environment": "environment name under exchanges/environments/, or a path to its YAML",
    "namespace": f"Kubernetes namespace (default {DEFAULT_NAMESPACE})",
    "createNamespace": "true to create the namespace (default false: it must exist)",
    "imageRepository": "registry repository the runtime image is pushed to",
    "imageTag": "tag pushed with the image (default latest; pods use the digest)",
    "image": "a pre-built, digest-pinned image reference: skips the build",
    "natsUrl": "NATS URL the pods connect to (NATS ≥ 2.10 with JetStream)",
    "natsAdminUrl": "NATS URL where `pulumi up` manages streams (default natsUrl)",
    "redisUrl": "Redis URL the pods use for replica membership and reports",
    "archiveStorageClass": "StorageClass of the archive volumes (default: the cluster's)",
    "archiveStorageSize": "archive volume size per shard (default: the environment's)",
    "kalshiApiKeyId": "Kalshi API key id",
    PRIVATE_KEY: "Kalshi RSA private key, PEM — set with --secret",
    "kalshiWsUrl": f"Kalshi WebSocket URL (default {DEFAULT_KALSHI_WS_URL})",
    "kalshiRestUrl": f"Kalshi REST URL (default {DEFAULT_KALSHI_REST_URL})",
    "metricsPort": f"port of /metrics and /healthz in the pods (default {DEFAULT_METRICS_PORT})",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PINNED_IMAGE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class StackConfig:
    """Validated stack settings; no secret values."""

    stack: str
    environment: str
    namespace: str
    create_namespace: bool
    image_repository: str | None
    image_tag: str
    image: str | None
    nats_url: str
    nats_admin_url: str
    redis_url: str
    archive_storage_class: str | None
    archive_storage_size: str | None
    kalshi_api_key_id: str | None
    has_private_key: bool
    kalshi_ws_url: str
    kalshi_rest_url: str
    metrics_port: int

    @property
    def file(self) -> str:
        return stack_file(self.stack)


def stack_file(stack: str) -> str:
    return f"Pulumi.{stack}.yaml"


def _text(values: Mapping[str, object], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _redis_url_problem(url: str) -> str | None:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"malformed Redis URL {shown!r}: {exc}"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return f"malformed Redis URL {shown!r}: expected redis://host:port/db"
    if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
        return f"malformed Redis URL {shown!r}: the path must be a database number"
    return None


def _private_key_problem(pem: str) -> str | None:
    """Why `pem` is not a usable Kalshi key; never echoes any of its text."""
    why = private_key_problem(pem.encode())
    if why == "is not an unencrypted PEM private key":
        return f"{why}; set it with `pulumi config set --secret ssmd:kalshiPrivateKey < key.pem`"
    return why


def parse_stack_config(
    stack: str,
    values: Mapping[str, object],
    *,
    secret_keys: Collection[str] = (),
    feed: str | None = None,
) -> StackConfig:
    """Validate `values` (keys without the `ssmd:` prefix); `ConfigError` lists every problem.

    `feed` is the environment's feed once known: the Kalshi feed needs credentials.
    """
    file = stack_file(stack)
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(message, file=file, path=f"{PREFIX}:{key}"))

    for key in sorted(values):
        if key not in KEYS:
            problem(key, f"unknown stack config key (known: {', '.join(sorted(KEYS))})")

    environment = _text(values, "environment")
    if environment is None:
        problem("environment", "required: the environment to deploy, e.g. kalshi-prod")

    namespace = _text(values, "namespace") or DEFAULT_NAMESPACE
    if not _DNS_LABEL.match(namespace):
        problem("namespace", f"{namespace!r} is not a valid Kubernetes namespace name")

    create_namespace = False
    raw_create = _text(values, "createNamespace")
    if raw_create is not None:
        if raw_create.lower() not in ("true", "false"):
            problem("createNamespace", f"must be true or false, got {raw_create!r}")
        create_namespace = raw_create.lower() == "true"

    image = _text(values, "image")
    image_repository = _text(values, "imageRepository")
    image_tag = _text(values, "imageTag") or "latest"
    if image is not None:
        if not _PINNED_IMAGE.match(image):
            problem(
                "image", f"must be a digest-pinned reference repo@sha256:<64 hex>, got {image!r}"
            )
    elif image_repository is None:
        problem("imageRepository", "required: where to push the runtime image (or set ssmd:image)")
    elif not _IMAGE_REPO.match(image_repository):
        problem("imageRepository", f"{image_repository!r} is not a valid image repository")
    if not _IMAGE_TAG.match(image_tag):
        problem("imageTag", f"{image_tag!r} is not a valid image tag")

    nats_url = _text(values, "natsUrl") or ""
    why = nats_url_problem(nats_url) if nats_url else "required: the NATS URL the pods use"
    if why:
        problem("natsUrl", why)
    nats_admin_url = _text(values, "natsAdminUrl") or nats_url
    if nats_admin_url != nats_url:
        why = nats_url_problem(nats_admin_url)
        if why:
            problem("natsAdminUrl", why)

    redis_url = _text(values, "redisUrl") or ""
    if not redis_url:
        problem("redisUrl", "required: the Redis URL the pods use, e.g. redis://redis.ssmd:6379/0")
    else:
        why = _redis_url_problem(redis_url)
        if why:
            problem("redisUrl", why)

    storage_class = _text(values, "archiveStorageClass")
    if storage_class is not None and not re.match(
        r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", storage_class
    ):
        problem("archiveStorageClass", f"{storage_class!r} is not a valid StorageClass name")
    storage_size = _text(values, "archiveStorageSize")
    if storage_size is not None:
        try:
            storage_size = canonical_quantity(storage_size)
        except ValueError as exc:
            problem("archiveStorageSize", str(exc))

    metrics_port = DEFAULT_METRICS_PORT
    raw_port = _text(values, "metricsPort")
    if raw_port is not None:
        if not raw_port.isdigit() or not 1024 <= int(raw_port) <= 65535:
            problem("metricsPort", f"must be a port number 1024-65535 (non-root), got {raw_port!r}")
        else:
            metrics_port = int(raw_port)

    ws_url = _text(values, "kalshiWsUrl") or DEFAULT_KALSHI_WS_URL
    if not re.match(r"^wss?://[^\s/]+(/\S*)?$", ws_url):
        problem("kalshiWsUrl", f"must be a ws:// or wss:// URL, got {ws_url!r}")
    rest_url = _text(values, "kalshiRestUrl") or DEFAULT_KALSHI_REST_URL
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", rest_url):
        problem("kalshiRestUrl", f"must be an http:// or https:// URL, got {rest_url!r}")

    api_key_id = _text(values, "kalshiApiKeyId")
    pem = values.get(PRIVATE_KEY)
    has_key = isinstance(pem, str) and bool(pem.strip())
    needs_credentials = feed in FEEDS_NEEDING_KALSHI_CREDENTIALS
    if has_key:
        if PRIVATE_KEY not in secret_keys:
            problem(
                PRIVATE_KEY,
                "is stored in clear text; set it as a secret: "
                "`pulumi config set --secret ssmd:kalshiPrivateKey < key.pem`",
            )
        why = _private_key_problem(str(pem))
        if why:
            problem(PRIVATE_KEY, why)
    elif needs_credentials:
        problem(
            PRIVATE_KEY,
            f"required: the {feed} feed's connectors sign in with it; "
            f"`pulumi config set --secret ssmd:kalshiPrivateKey < key.pem`",
        )
    if needs_credentials and api_key_id is None:
        problem("kalshiApiKeyId", f"required: the {feed} feed's connectors sign in with it")

    ConfigError.collect(problems)
    assert environment is not None
    return StackConfig(
        stack=stack,
        environment=environment,
        namespace=namespace,
        create_namespace=create_namespace,
        image_repository=image_repository,
        image_tag=image_tag,
        image=image,
        nats_url=nats_url,
        nats_admin_url=nats_admin_url,
        redis_url=redis_url,
        archive_storage_class=storage_class,
        archive_storage_size=storage_size,
        kalshi_api_key_id=api_key_id,
        has_private_key=has_key,
        kalshi_ws_url=ws_url,
        kalshi_rest_url=rest_url,
        metrics_port=metrics_port,
    )
