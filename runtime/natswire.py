"""The parts of the NATS client protocol that the raw-socket clients share: server URLs, the
INFO checks and the CONNECT/SUB handshake, and the control lines (INFO, -ERR) of the parser.

Used by the connector's publisher (`runtime/publisher.py`) and the archiver's pull client
(`runtime/jspull.py`); each keeps its own message parsing and write path, which is where the
time goes. Only connection set-up lives here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_url import ServerAddress, parse_nats_urls

CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"


def parse_servers(urls: str) -> list[ServerAddress]:
    """`urls` → addresses, by the one URL rule (`ssmd_infra.core.nats_url`)."""
    servers = parse_nats_urls(urls)
    for server in servers:
        if server.tls:
            raise ConfigError(f"NATS URL {server}: TLS is not spoken by this client yet")
    return servers


def check_info(info: dict[str, Any], speaker: str) -> None:
    """Refuse a server this client cannot talk to: TLS required, or no message headers.
    `speaker` names the client in the TLS message ("the archiver", "this publisher")."""
    if info.get("tls_required"):
        raise ConnectionError(f"the server requires TLS, which {speaker} does not speak")
    if not info.get("headers", False):
        raise ConnectionError("the server does not support message headers (NATS ≥ 2.2)")


def connect_and_subscribe(server: ServerAddress, name: str, inbox: str) -> bytes:
    """`CONNECT {options}` (with the server's credentials) followed by `SUB {inbox}.* 1`."""
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "no_responders": True,
        "protocol": 1,
        "lang": "python-ssmd",
        "version": "1",
        "name": name,
    }
    if server.user is not None:
        options["user"] = server.user
        options["pass"] = server.password or ""
    if server.token is not None:
        options["auth_token"] = server.token
    return (
        b"CONNECT " + json.dumps(options).encode() + CRLF + b"SUB " + inbox.encode() + b".* 1\r\n"
    )


def set_info(future: asyncio.Future[dict[str, Any]], line: bytes) -> None:
    """Resolve `future` with the JSON of an `INFO {...}` line (the first one only)."""
    if not future.done():
        try:
            future.set_result(json.loads(line[5:]))
        except ValueError:
            future.set_exception(ConnectionError("malformed INFO from server"))


def error_text(line: bytes) -> str:
    """The message of a `-ERR 'message'` line."""
    return line[5:].strip(b" '").decode("utf-8", "replace")
