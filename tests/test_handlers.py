"""The demo app's WebSocket routes over real sockets, with Tornado's client."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from tornws.frames import CloseCode

from wsclient import recv, recv_until_closed

BOUNDARY_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 100_000]


@pytest.mark.gen_test
@pytest.mark.parametrize("size", BOUNDARY_SIZES)
async def test_echo_returns_text_as_text(ws_url: str, ws_connect: Any, size: int) -> None:
    """/echo sends a text message back unchanged, as text, at every length boundary."""
    connection = await ws_connect(f"{ws_url}/echo")
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    await connection.write_message(text)
    assert await recv(connection) == text


@pytest.mark.gen_test
@pytest.mark.parametrize("size", BOUNDARY_SIZES)
async def test_echo_returns_binary_as_binary(ws_url: str, ws_connect: Any, size: int) -> None:
    """/echo sends a binary message back unchanged, as bytes."""
    connection = await ws_connect(f"{ws_url}/echo")
    data = bytes(i % 256 for i in range(size))
    await connection.write_message(data, binary=True)
    assert await recv(connection) == data


@pytest.mark.gen_test
async def test_echo_keeps_order(ws_url: str, ws_connect: Any) -> None:
    """Many messages in flight come back in the order sent."""
    connection = await ws_connect(f"{ws_url}/echo")
    for i in range(200):
        connection.write_message(str(i))
    assert [await recv(connection) for _ in range(200)] == [str(i) for i in range(200)]


@pytest.mark.gen_test
async def test_broadcast_reaches_everyone_sender_included(ws_url: str, ws_connect: Any) -> None:
    """/broadcast relays each message, with its type, to every connection including the sender."""
    connections = [await ws_connect(f"{ws_url}/broadcast") for _ in range(4)]
    await connections[0].write_message("hi")
    await connections[2].write_message(b"\x00\x01", binary=True)
    for connection in connections:
        assert await recv(connection) == "hi"
        assert await recv(connection) == b"\x00\x01"


@pytest.mark.gen_test(timeout=20)
async def test_broadcast_member_vanishing_mid_stream(ws_url: str, ws_connect: Any) -> None:
    """A receiver that disconnects mid-stream costs the others nothing: they get every message."""
    receivers = [await ws_connect(f"{ws_url}/broadcast") for _ in range(5)]
    vanishing = await ws_connect(f"{ws_url}/broadcast")
    sender = await ws_connect(f"{ws_url}/broadcast")
    for i in range(300):
        if i == 100:
            vanishing.stream.close()  # abrupt: no close frame
        await sender.write_message(f"m{i}")
    for receiver in receivers:
        got = [await recv(receiver) for _ in range(300)]
        assert got == [f"m{i}" for i in range(300)]


@pytest.mark.gen_test
async def test_unknown_path_is_404_before_upgrade(ws_url: str, ws_connect: Any) -> None:
    """A WebSocket handshake on a path the app does not route gets HTTP 404."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{ws_url}/nope")
    assert info.value.code == 404


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/chat/", "/chat/a/b", "/chat/" + "x" * 65, "/echo/more"])
async def test_invalid_room_paths_are_404(ws_url: str, ws_connect: Any, path: str) -> None:
    """Room names outside [A-Za-z0-9_.~-]{1,64} and deeper paths are not routes."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{ws_url}{path}")
    assert info.value.code == 404


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/echo", "/broadcast", "/chat"])
async def test_plain_get_on_websocket_route_is_400(http_url: str, path: str) -> None:
    """A plain HTTP GET (no upgrade) on a WebSocket route is refused with 400 and says why."""
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"{http_url}{path}", raise_error=False)
    assert response.code == 400
    assert b"Upgrade" in response.body


@pytest.mark.gen_test
async def test_message_over_the_limit_closes_1009(ws_url: str, ws_connect: Any) -> None:
    """A message above the default 1 MiB limit closes the connection with 1009."""
    connection = await ws_connect(f"{ws_url}/echo")
    await connection.write_message(b"x" * (1024 * 1024), binary=True)
    assert await recv(connection) == b"x" * (1024 * 1024)  # the limit itself is fine
    connection.write_message(b"x" * (1024 * 1024 + 1), binary=True)
    assert await recv_until_closed(connection) == []
    assert connection.close_code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.gen_test
async def test_server_keeps_serving_after_bad_input(ws_url: str, ws_connect: Any) -> None:
    """After a connection is closed for bad input, others are served as before."""
    bad = await ws_connect(f"{ws_url}/echo")
    good = await ws_connect(f"{ws_url}/echo")
    bad.write_message(b"x" * (1024 * 1024 + 1), binary=True)
    await recv_until_closed(bad)
    await good.write_message("still here")
    assert await recv(good) == "still here"


@pytest.mark.gen_test
async def test_cross_origin_is_403(ws_url: str, ws_connect: Any) -> None:
    """A browser Origin from another host is refused with 403 before the upgrade."""
    request = tornado.httpclient.HTTPRequest(
        f"{ws_url}/echo", headers={"Origin": "http://evil.example"}
    )
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(request)
    assert info.value.code == 403
    same_host = tornado.httpclient.HTTPRequest(
        f"{ws_url}/echo", headers={"Origin": ws_url.replace("ws://", "http://")}
    )
    connection = await ws_connect(same_host)
    await connection.write_message("ok")
    assert await recv(connection) == "ok"


@pytest.mark.gen_test
async def test_connection_lifecycle_is_logged(
    ws_url: str, ws_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line on open and one on close, naming route, peer, subprotocol and code."""
    caplog.set_level(logging.INFO, logger="tornws.handlers")
    connection = await ws_connect(f"{ws_url}/chat?nick=loggy", subprotocols=["chat"])
    await recv(connection)
    connection.close(1000)
    for _ in range(100):
        if "close /chat" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "open /chat peer=127.0.0.1 subprotocol=chat" in caplog.text
    assert "close /chat peer=127.0.0.1 code=1000" in caplog.text


@pytest.mark.gen_test
async def test_closed_connections_leave_the_registry(
    ws_url: str, ws_connect: Any, registry: Any, node: Any
) -> None:
    """Once a client goes, its connection is out of the registry and of every room."""
    connection = await ws_connect(f"{ws_url}/broadcast")
    await connection.write_message("x")
    await recv(connection)
    assert len(node.connections) == 1
    assert len(registry.members("broadcast:/broadcast")) == 1
    connection.close()
    for _ in range(200):
        if not node.connections:
            break
        await asyncio.sleep(0.01)
    assert node.connections == set()
    assert registry.rooms() == []


@pytest.mark.gen_test
async def test_index_and_healthz(http_url: str) -> None:
    """/ is the chat page, which lists the endpoints; /healthz answers 200 ok."""
    client = tornado.httpclient.AsyncHTTPClient()
    index = await client.fetch(f"{http_url}/")
    assert b"/chat/&lt;room&gt;" in index.body and b"/broadcast" in index.body
    assert b'<form id="join"' in index.body and b'data-chat-path="/chat"' in index.body
    health = await client.fetch(f"{http_url}/healthz")
    assert health.code == 200 and health.body == b"ok\n"
