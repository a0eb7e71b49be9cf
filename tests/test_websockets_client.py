"""Handshake paths with a second real client: the asyncio ``websockets`` library."""

from __future__ import annotations

from typing import Any

import pytest
import tornado.web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

import tornws


@pytest.mark.gen_test
async def test_websockets_client_echo(ws_url: str) -> None:
    """The websockets client talks to /echo, text and binary."""
    async with connect(f"{ws_url}/echo", compression=None) as websocket:
        await websocket.send("hello")
        assert await websocket.recv() == "hello"
        await websocket.send(b"\x00\xff")
        assert await websocket.recv() == b"\x00\xff"


@pytest.mark.gen_test
async def test_seed_chat_client_chats_on_chat(ws_url: str) -> None:
    """The seed's chat client code (no subprotocol) chats on /chat in plain text."""
    async with (
        connect(f"{ws_url}/chat?nick=seed1") as one,
        connect(f"{ws_url}/chat?nick=seed2") as two,
    ):
        assert one.subprotocol is None
        assert (await one.recv()).startswith("* you are seed1 in lobby")
        assert (await two.recv()).startswith("* you are seed2 in lobby")
        assert await one.recv() == "* seed2 joined"
        await one.send("hi from the seed client")
        assert await two.recv() == "seed1: hi from the seed client"


@pytest.mark.gen_test
async def test_websockets_client_gets_404(ws_url: str) -> None:
    """An unknown path is an HTTP 404 for the websockets client too."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{ws_url}/missing"):
            pass
    assert info.value.response.status_code == 404


@pytest.mark.gen_test
async def test_websockets_client_unknown_subprotocol_400(ws_url: str) -> None:
    """Offering only unknown subprotocols: 400 whose body lists the supported ones."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{ws_url}/chat", subprotocols=["v2.bogus"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 400
    assert b"supports: chat.json, chat" in info.value.response.body


@pytest.mark.gen_test
async def test_websockets_client_negotiates_chat_json(ws_url: str) -> None:
    """Offered both, the server selects chat.json."""
    async with connect(f"{ws_url}/chat", subprotocols=["chat", "chat.json"]) as websocket:  # type: ignore[list-item]
        assert websocket.subprotocol == "chat.json"


@pytest.mark.gen_test
async def test_websockets_client_oversize_closes_1009(ws_url: str) -> None:
    """The websockets client sees close code 1009 for a message over the limit."""
    async with connect(f"{ws_url}/echo", max_size=None) as websocket:
        await websocket.send(b"x" * (1024 * 1024 + 1))
        with pytest.raises(ConnectionClosedError) as info:
            await websocket.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


class TestCompression:
    """permessage-deflate, when a route enables it."""

    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornado.web.Application(tornws.routes(registry=registry, compression={}))

    @pytest.mark.gen_test
    async def test_deflate_negotiated_with_websockets(self, ws_url: str) -> None:
        """The websockets client's default offer is accepted; messages round-trip."""
        async with connect(f"{ws_url}/echo") as websocket:
            assert websocket.response is not None
            assert "permessage-deflate" in websocket.response.headers["Sec-WebSocket-Extensions"]
            text = "compressible " * 1000
            await websocket.send(text)
            assert await websocket.recv() == text


@pytest.mark.gen_test
async def test_deflate_not_negotiated_by_default(ws_url: str) -> None:
    """The demo app does not compress unless asked (serve --compress)."""
    async with connect(f"{ws_url}/echo") as websocket:
        assert websocket.response is not None
        assert "Sec-WebSocket-Extensions" not in websocket.response.headers
