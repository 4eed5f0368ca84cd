"""Kalshi exchange access: request signing, the WebSocket v2 protocol (sans-I/O), its asyncio
transport, the REST secmaster source, and a simulator speaking the same protocol."""
