"""Kalshi facts shared by the backends: the official endpoints and what a usable API key is.

The stack configuration (`ssmd_infra.pulumi.stack_config`) and `ssmd local up` both point
connectors at an exchange and check the private key they are given, with these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class KalshiEndpoints:
    """The REST base URL (secmaster) and the WebSocket URL (market data) of one exchange."""

    rest_url: str
    ws_url: str


KALSHI_PROD = KalshiEndpoints(
    rest_url="https://api.elections.kalshi.com/trade-api/v2",
    ws_url="wss://api.elections.kalshi.com/trade-api/ws/v2",
)
KALSHI_DEMO = KalshiEndpoints(
    rest_url="https://demo-api.kalshi.co/trade-api/v2",
    ws_url="wss://demo-api.kalshi.co/trade-api/ws/v2",
)
KALSHI_ENVIRONMENTS = {"prod": KALSHI_PROD, "demo": KALSHI_DEMO}

REST_SCHEMES = ("http", "https")
WS_SCHEMES = ("ws", "wss")


def url_problem(url: str, schemes: tuple[str, ...], what: str) -> str | None:
    """Why `url` cannot be the `what` URL (wrong scheme, no host), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"malformed {what} URL {url!r}: {exc}"
    if parts.scheme not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        return f"{what} URL {url!r} has scheme {parts.scheme or '(none)'!r}; expected {wanted}"
    if not parts.hostname:
        return f"{what} URL {url!r} has no host"
    return None


def private_key_problem(pem: bytes) -> str | None:
    """Why `pem` is not a usable Kalshi key (an unencrypted PEM RSA private key), or None.

    Never echoes any of the key's text."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return "is not an unencrypted PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return "must be an RSA private key (Kalshi signs requests with RSA-PSS)"
    return None
