"""Small helpers over Tornado's WebSocket client for the tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import tornado.websocket

TIMEOUT = 5.0


async def recv(
    connection: tornado.websocket.WebSocketClientConnection, timeout: float = TIMEOUT
) -> str | bytes | None:
    """The next message (``None`` once closed); fails the test after ``timeout``."""
    return await asyncio.wait_for(connection.read_message(), timeout)


async def recv_json(connection: tornado.websocket.WebSocketClientConnection) -> Any:
    message = await recv(connection)
    assert isinstance(message, str), f"expected a JSON text message, got {message!r}"
    return json.loads(message)


async def recv_until_closed(
    connection: tornado.websocket.WebSocketClientConnection, timeout: float = TIMEOUT
) -> list[str | bytes]:
    """Every message until the server closes the connection."""
    messages: list[str | bytes] = []
    while (message := await recv(connection, timeout)) is not None:
        messages.append(message)
    return messages


async def nothing_more(
    connection: tornado.websocket.WebSocketClientConnection, wait: float = 0.2
) -> bool:
    """True if no message arrives within ``wait`` seconds."""
    try:
        message = await asyncio.wait_for(connection.read_message(), wait)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"unexpected message {message!r}")
