"""The Pulumi stack's own settings (`Pulumi.<stack>.yaml`, namespace `ssmd:`), as a pydantic model.

Pure apart from reading the stack file to find line numbers: it takes the raw key → value
mapping, so it is testable without Pulumi, and every problem is reported at once as
`Pulumi.<stack>.yaml:<line>: ssmd:<key>: <why>` before any resource is declared.

The Kalshi private key is only checked here (present, set as a secret, a PEM RSA private key);
its text is never stored in `StackConfig` nor put in a message — the program reads it again as
a Pulumi secret (`pulumi.Config.require_secret`) and it goes into the Kubernetes Secret only.
The NATS and Redis URLs are kept (the program needs them to validate and the stream provider to
connect) but they reach Kubernetes only through a Secret, never a ConfigMap, args or an output.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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
NATS_ADMIN_URL = "natsAdminUrl"
NATS_URL = "natsUrl"
FEEDS_NEEDING_KALSHI_CREDENTIALS = frozenset({"kalshi"})

KEYS: dict[str, str] = {
    "environment": "environment name under exchanges/environments/, or a path to its YAML",
    "namespace": f"Kubernetes namespace (default {DEFAULT_NAMESPACE})",
    "createNamespace": "true to create the namespace (default false: it must exist)",
    "protect": "false to let Pulumi delete streams and the namespace (default true)",
    "imageRepository": "registry repository the runtime image is pushed to",
    "imageTag": "tag pushed with the image (default latest; pods use the digest)",
    "image": "a pre-built, digest-pinned image reference: skips the build",
    NATS_URL: "NATS URL the pods connect to (NATS ≥ 2.10 with JetStream)",
    NATS_ADMIN_URL: "NATS URL where `pulumi up` manages streams (default natsUrl)",
    "natsNamespace": "namespace of the NATS Helm release: where the Secret "
    "ssmd-nats-authorization is created for it to include (default: namespace)",
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
_STORAGE_CLASS = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PINNED_IMAGE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
_SET_SECRET = "`pulumi config set --secret ssmd:kalshiPrivateKey < key.pem`"


def _problem(message: str) -> PydanticCustomError:
    """A validation error whose message is shown verbatim (no "Value error, " prefix)."""
    return PydanticCustomError("ssmd_stack", "{message}", {"message": message})


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context if isinstance(info.context, dict) else {}


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise _problem(f"must be true or false, got {value!r}")
    return value.lower() == "true"


class StackConfig(BaseModel):
    """Validated stack settings. Field aliases are the stack keys (`ssmd:<alias>`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    stack: str = Field(exclude=True)
    environment: str = Field(validate_default=True, default="")
    namespace: str = DEFAULT_NAMESPACE
    create_namespace: bool = Field(False, alias="createNamespace")
    protect: bool = True
    image: str | None = None
    image_repository: str | None = Field(None, alias="imageRepository", validate_default=True)
    image_tag: str = Field("latest", alias="imageTag")
    nats_url: str = Field("", alias=NATS_URL, validate_default=True)
    nats_admin_url: str = Field("", alias=NATS_ADMIN_URL)
    nats_namespace: str = Field("", alias="natsNamespace")
    redis_url: str = Field("", alias="redisUrl", validate_default=True)
    archive_storage_class: str | None = Field(None, alias="archiveStorageClass")
    archive_storage_size: str | None = Field(None, alias="archiveStorageSize")
    kalshi_api_key_id: str | None = Field(None, alias="kalshiApiKeyId", validate_default=True)
    # the key's presence only: its text is checked by the validator and never kept
    has_private_key: bool = Field(False, alias=PRIVATE_KEY, validate_default=True)
    kalshi_ws_url: str = Field(DEFAULT_KALSHI_WS_URL, alias="kalshiWsUrl")
    kalshi_rest_url: str = Field(DEFAULT_KALSHI_REST_URL, alias="kalshiRestUrl")
    metrics_port: int = Field(DEFAULT_METRICS_PORT, alias="metricsPort")

    @property
    def file(self) -> str:
        return stack_file(self.stack)

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if not value:
            raise _problem("required: the environment to deploy, e.g. kalshi-prod")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise _problem(f"{value!r} is not a valid Kubernetes namespace name")
        return value

    @field_validator("create_namespace", "protect", mode="before")
    @classmethod
    def _flag(cls, value: object) -> object:
        return _boolean(value) if isinstance(value, str) else value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not _PINNED_IMAGE.match(value):
            raise _problem(f"must be a digest-pinned reference repo@sha256:<64 hex>, got {value!r}")
        return value

    @field_validator("image_repository")
    @classmethod
    def _image_repository(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if not _context(info)["image_given"]:
                raise _problem("required: where to push the runtime image (or set ssmd:image)")
        elif not _IMAGE_REPO.match(value):
            raise _problem(f"{value!r} is not a valid image repository")
        return value

    @field_validator("image_tag")
    @classmethod
    def _image_tag(cls, value: str) -> str:
        if not _IMAGE_TAG.match(value):
            raise _problem(f"{value!r} is not a valid image tag")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        why = nats_url_problem(value) if value else "required: the NATS URL the pods use"
        if why:
            raise _problem(why)
        return value

    @field_validator("nats_admin_url")
    @classmethod
    def _nats_admin_url(cls, value: str) -> str:
        why = nats_url_problem(value)
        if why:
            raise _problem(why)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value:
            raise _problem("required: the Redis URL the pods use, e.g. redis://redis.ssmd:6379/0")
        why = _redis_url_problem(value)
        if why:
            raise _problem(why)
        return value

    @field_validator("archive_storage_class")
    @classmethod
    def _storage_class(cls, value: str | None) -> str | None:
        if value is not None and not _STORAGE_CLASS.match(value):
            raise _problem(f"{value!r} is not a valid StorageClass name")
        return value

    @field_validator("archive_storage_size")
    @classmethod
    def _storage_size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return canonical_quantity(value)
        except ValueError as exc:
            raise _problem(str(exc)) from None

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, value: object) -> object:
        text = str(value)
        if not text.isdigit() or not 1024 <= int(text) <= 65535:
            raise _problem(f"must be a port number 1024-65535 (non-root), got {text!r}")
        return int(text)

    @field_validator("kalshi_ws_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not re.match(r"^wss?://[^\s/]+(/\S*)?$", value):
            raise _problem(f"must be a ws:// or wss:// URL, got {value!r}")
        return value

    @field_validator("kalshi_rest_url")
    @classmethod
    def _rest_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise _problem(f"must be an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("kalshi_api_key_id")
    @classmethod
    def _api_key_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        feed = _context(info)["feed"]
        if value is None and feed in FEEDS_NEEDING_KALSHI_CREDENTIALS:
            raise _problem(f"required: the {feed} feed's connectors sign in with it")
        return value

    @field_validator("has_private_key", mode="before")
    @classmethod
    def _private_key(cls, value: object, info: ValidationInfo) -> bool:
        context = _context(info)
        feed = context["feed"]
        if not isinstance(value, str) or not value.strip():
            if feed in FEEDS_NEEDING_KALSHI_CREDENTIALS:
                raise _problem(
                    f"required: the {feed} feed's connectors sign in with it; {_SET_SECRET}"
                )
            return False
        reasons = []
        if PRIVATE_KEY not in context["secret_keys"]:
            reasons.append(f"is stored in clear text; set it as a secret: {_SET_SECRET}")
        why = _private_key_problem(value)
        if why:
            reasons.append(why)
        if reasons:
            raise _problem("; ".join(reasons))
        return True

    @field_validator("nats_namespace")
    @classmethod
    def _nats_namespace(cls, value: str) -> str:
        if value and not _DNS_LABEL.match(value):
            raise _problem(f"{value!r} is not a valid Kubernetes namespace name")
        return value

    @model_validator(mode="after")
    def _admin_url_defaults_to_the_pods_url(self) -> StackConfig:
        if not self.nats_admin_url:
            object.__setattr__(self, "nats_admin_url", self.nats_url)
        if not self.nats_namespace:
            object.__setattr__(self, "nats_namespace", self.namespace)
        return self


def stack_file(stack: str) -> str:
    return f"Pulumi.{stack}.yaml"


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
        return f"{why}; set it with {_SET_SECRET}"
    return why


def _key_lines(file: str, directory: Path | None) -> dict[str, int]:
    """Line of each `ssmd:<key>:` in the stack file (when it is there to read)."""
    try:
        text = ((directory or Path.cwd()) / file).read_text(encoding="utf-8")
    except OSError:
        return {}
    lines: dict[str, int] = {}
    pattern = re.compile(rf"^\s*{PREFIX}:([A-Za-z0-9_]+)\s*:")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.match(line)
        if match:
            lines.setdefault(match.group(1), number)
    return lines


def _field_keys() -> dict[str, str]:
    return {name: field.alias or name for name, field in StackConfig.model_fields.items()}


def parse_stack_config(
    stack: str,
    values: Mapping[str, object],
    *,
    secret_keys: Collection[str] = (),
    feed: str | None = None,
    directory: Path | None = None,
) -> StackConfig:
    """Validate `values` (keys without the `ssmd:` prefix); `ConfigError` lists every problem.

    `feed` is the environment's feed once known: the Kalshi feed needs credentials.
    `directory` holds the stack file (default: the working directory, where Pulumi runs the
    program); the problems carry its line numbers when it is there.
    """
    file = stack_file(stack)
    raw: dict[str, object] = {}
    for key, value in values.items():
        text = None if value is None else str(value).strip()
        if text:  # an empty value is the same as an absent one
            raw[key] = text if key != PRIVATE_KEY else str(value)
    keys = _field_keys()
    context = {"secret_keys": set(secret_keys), "feed": feed, "image_given": "image" in raw}
    try:
        return StackConfig.model_validate({"stack": stack, **raw}, context=context)
    except ValidationError as exc:
        lines = _key_lines(file, directory)
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            key = keys.get(field, field)
            if error["type"] == "extra_forbidden":
                message = f"unknown stack config key (known: {', '.join(sorted(KEYS))})"
            elif error["type"] == "ssmd_stack":
                message = str(error["msg"])
            else:
                message = f"{error['msg']} (got {error.get('input')!r})"
            problems.append(
                Problem(message, file=file, line=lines.get(key), path=f"{PREFIX}:{key}")
            )
        problems.sort(key=lambda p: (p.line or 0, p.path or ""))
        raise ConfigError(problems) from None
