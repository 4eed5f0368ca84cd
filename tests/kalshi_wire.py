"""Talking to the Kalshi simulator from tests: JSON commands out, decoded frames in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection


async def send(ws: ClientConnection, **command: Any) -> None:
    await ws.send(json.dumps(command))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return data


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type `kind`, skipping others."""
    while True:
        message = await recv(ws)
        if message["type"] == kind:
            return message


async def get_json(url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return response.status, await response.json()
