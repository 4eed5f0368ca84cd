"""NATS server URLs: the one rule for what ssmd accepts, used by every consumer.

The stack configuration (`natsUrl`, `natsAdminUrl`), the local supervisor, the stream admin
client and the runtime's own NATS connection (`runtime/nats`) all parse URLs here, so a URL
the stack accepts is a URL the pods can connect to (a `tls://` URL once passed validation
while the pods' client refused it, and the pods crash-looped).

Accepted: a comma-separated list of `nats://` or `tls://` URLs, each
`scheme://[user:password@|token@]host[:port]` (port 4222 by default; percent-escapes in the
credentials are decoded). `tls://` means the client insists on TLS: as NATS does, the
server's INFO arrives in plaintext and the connection is upgraded before CONNECT (a
`nats://` URL is upgraded too when the server requires TLS). Anything else (another scheme,
a path, a query, no host, port 0) is a `ConfigError` that names the URL with its credentials
redacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ssmd_infra.core.errors import ConfigError

SCHEMES = ("nats", "tls")
DEFAULT_PORT = 4222


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """One NATS server to try, with the credentials its URL carried."""

    host: str
    port: int
    tls: bool = False
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"


def redact_url(url: str) -> str:
    """`url` without user:password or token, for messages and logs."""
    out = []
    for part in url.split(","):
        part = part.strip()
        try:
            parts = urlsplit(part)
            has_credentials = bool(parts.username or parts.password)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            has_credentials, host, port = "@" in part, "?", ""
        if has_credentials:
            part = f"{parts.scheme}://***@{host}{port}"
        out.append(part)
    return ",".join(out)


def parse_nats_urls(urls: object) -> list[ServerAddress]:
    """`urls` as server addresses, in order; a `ConfigError` saying what is wrong otherwise."""
    if not isinstance(urls, str) or not urls.strip():
        raise ConfigError("NATS URL must be a non-empty string such as nats://nats.nats.svc:4222")
    out: list[ServerAddress] = []
    for item in (part.strip() for part in urls.split(",")):
        if not item:
            raise ConfigError(f"malformed NATS URL list {redact_url(urls)!r}: an empty entry")
        shown = redact_url(item)
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"malformed NATS URL {shown!r}: {exc}") from None
        if parts.scheme not in SCHEMES:
            raise ConfigError(
                f"malformed NATS URL {shown!r}: scheme must be one of "
                f"{', '.join(s + '://' for s in SCHEMES)}"
            )
        if not parts.hostname:
            raise ConfigError(f"malformed NATS URL {shown!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"malformed NATS URL {shown!r}: unexpected path or query")
        if port == 0:
            raise ConfigError(f"malformed NATS URL {shown!r}: port 0")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        token = None
        if user is not None and password is None:
            token, user = user, None
        out.append(
            ServerAddress(
                host=parts.hostname,
                port=port or DEFAULT_PORT,
                tls=parts.scheme == "tls",
                user=user,
                password=password,
                token=token,
            )
        )
    return out


def nats_url_problem(urls: object) -> str | None:
    """Why `urls` is not a usable NATS URL (or comma-separated list), or None."""
    try:
        parse_nats_urls(urls)
    except ConfigError as exc:
        return str(exc)
    return None
