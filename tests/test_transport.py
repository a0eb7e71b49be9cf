"""tornws's data plane over real sockets: what a client sees of it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import socket
import struct
from typing import Any, ClassVar

import pytest
import tornado.web
import tornado.websocket
from test_frames import client_frame

import tornws
from tornws.frames import Opcode
from tornws.transport import Transport

from wsclient import recv, recv_until_closed


class SlowEcho(tornws.WebSocketHandler):
    """A coroutine on_message that takes a random time: replies must keep the order."""

    async def on_message(self, message: str | bytes) -> None:
        await asyncio.sleep(random.random() / 200)
        await self.write_message(message)


class Bulk(tornws.WebSocketHandler):
    """Sends N bytes in one message when asked, and reports what it could measure."""

    def on_message(self, message: str | bytes) -> None:
        size = int(message)
        future = self.write_message(b"z" * size, binary=True)
        self.write_message(f"queued {self.ws_connection.buffered_amount > 0}")  # type: ignore[union-attr]
        future.add_done_callback(lambda f: self.write_message(f"flushed {f.result()}"))


class Closer(tornws.WebSocketHandler):
    def initialize(self, outcome: list[str], **options: Any) -> None:
        super().initialize(**options)
        self.outcome = outcome

    async def on_message(self, message: str | bytes) -> None:
        self.close(4000, "as asked")
        try:
            await self.write_message("too late")
        except tornado.websocket.WebSocketClosedError:
            self.outcome.append("WebSocketClosedError")
        else:
            self.outcome.append("sent after close")


class TornadoPlane(tornws.EchoHandler):
    tornado_data_plane = True


class SlowToUpgrade(tornws.ChatHandler):
    """A chat whose ``prepare`` takes a while (a busy server): the peer may be gone by then."""

    opened: ClassVar[list[str]] = []

    async def prepare(self) -> None:
        await asyncio.sleep(0.2)

    def open(self, room: str | None = None) -> Any:
        SlowToUpgrade.opened.append(room or "")
        return super().open(room)


@pytest.fixture
def outcome() -> list[str]:
    return []


@pytest.fixture
def app(registry: tornws.Registry, outcome: list[str]) -> Any:
    return tornado.web.Application(
        [
            (r"/slow", SlowEcho),
            (r"/bulk", Bulk, {"max_outgoing": 0}),
            (r"/closer", Closer, {"outcome": outcome}),
            (r"/tornado", TornadoPlane),
            (r"/slowchat/(.*)", SlowToUpgrade, {"registry": registry}),
            *tornws.routes(registry=registry),
        ]
    )


async def raw_upgrade(port: int, path: str = "/echo") -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


@pytest.mark.gen_test
async def test_protocol_is_tornws(
    ws_url: str, ws_connect: Any, registry: Any, node: tornws.Node
) -> None:
    """tornws handlers run on tornws's Transport; tornado_data_plane=True keeps Tornado's."""
    await ws_connect(f"{ws_url}/broadcast")
    await asyncio.sleep(0.05)
    (handler,) = node.connections
    assert type(handler.ws_connection) is Transport
    connection = await ws_connect(f"{ws_url}/tornado")
    await connection.write_message("old plane")
    assert await recv(connection) == "old plane"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(Opcode.TEXT, b"hi", masked=False), 1002),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1004)), 1002),
        (client_frame(Opcode.TEXT, b"\xc3\x28"), 1007),
        (client_frame(0x5, b""), 1002),
    ],
    ids=["unmasked", "invalid-close-code", "invalid-utf8", "reserved-opcode"],
)
async def test_protocol_violations_fail_with_the_code(
    http_port: int, http_server: Any, frame: bytes, code: int
) -> None:
    """A peer breaking RFC 6455 gets a close frame with 1002/1007, then TCP is closed."""
    reader, writer = await raw_upgrade(http_port)
    writer.write(frame)
    opcode, payload = await read_frame(reader)
    assert opcode == Opcode.CLOSE
    assert struct.unpack("!H", payload[:2])[0] == code
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed TCP
    writer.close()


@pytest.mark.gen_test
async def test_protocol_pipelined_frames_in_one_packet(http_port: int, http_server: Any) -> None:
    """Many frames arriving in one TCP segment, with the handshake, are all answered in order."""
    reader, writer = await raw_upgrade(http_port)
    writer.write(b"".join(client_frame(Opcode.TEXT, str(i).encode()) for i in range(500)))
    replies = [await read_frame(reader) for _ in range(500)]
    assert [payload.decode() for _, payload in replies] == [str(i) for i in range(500)]
    writer.close()


@pytest.mark.gen_test
async def test_protocol_answers_pings(http_port: int, http_server: Any) -> None:
    """A ping gets a pong with the same payload, between messages, in order."""
    reader, writer = await raw_upgrade(http_port)
    writer.write(
        client_frame(Opcode.TEXT, b"a")
        + client_frame(Opcode.PING, b"are you there")
        + client_frame(Opcode.TEXT, b"b")
    )
    frames = [await read_frame(reader) for _ in range(3)]
    assert frames == [(Opcode.TEXT, b"a"), (Opcode.PONG, b"are you there"), (Opcode.TEXT, b"b")]
    writer.close()


@pytest.mark.gen_test(timeout=20)
async def test_protocol_coroutine_on_message_keeps_order(ws_url: str, ws_connect: Any) -> None:
    """A coroutine on_message holds reading: replies come back in the order sent."""
    connection = await ws_connect(f"{ws_url}/slow")
    for i in range(100):
        connection.write_message(str(i))
    assert [await recv(connection) for _ in range(100)] == [str(i) for i in range(100)]


@pytest.mark.gen_test(timeout=20)
async def test_protocol_queues_what_the_kernel_does_not_take(
    http_port: int, http_server: Any
) -> None:
    """A 20 MB message to a peer that is not reading is queued, then delivered whole
    (``max_outgoing=0``: no slow-consumer bound)."""
    reader, writer = await raw_upgrade(http_port, "/bulk")
    writer.write(client_frame(Opcode.TEXT, b"20000000"))
    await asyncio.sleep(0.3)  # not reading: the kernel buffers fill up
    opcode, payload = await read_frame(reader)
    assert opcode == Opcode.BINARY and payload == b"z" * 20_000_000
    assert await read_frame(reader) == (Opcode.TEXT, b"queued True")
    assert await read_frame(reader) == (Opcode.TEXT, b"flushed None")
    writer.close()


@pytest.mark.gen_test
async def test_protocol_server_close(ws_url: str, ws_connect: Any, outcome: list[str]) -> None:
    """close(code, reason) reaches the client; a write after it raises WebSocketClosedError."""
    connection = await ws_connect(f"{ws_url}/closer")
    await connection.write_message("close please")
    assert await recv_until_closed(connection) == []
    assert (connection.close_code, connection.close_reason) == (4000, "as asked")
    assert outcome == ["WebSocketClosedError"]


@pytest.mark.gen_test
async def test_protocol_client_close_code_reaches_handler(
    ws_url: str, ws_connect: Any, registry: Any, node: tornws.Node
) -> None:
    """The client's close code and reason become the handler's close_code/close_reason."""
    closed: list[tuple[Any, Any]] = []
    connection = await ws_connect(f"{ws_url}/broadcast")
    await asyncio.sleep(0.05)
    (handler,) = node.connections
    handler.on_close = lambda: closed.append((handler.close_code, handler.close_reason))
    connection.close(4321, "bye now")
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [(4321, "bye now")]


@pytest.mark.gen_test(timeout=20)
async def test_protocol_burst_broadcast_keeps_order(
    http_port: int, http_server: Any, ws_url: str, ws_connect: Any
) -> None:
    """A burst published from one read reaches every receiver complete and in order.

    (Frames from one read are coalesced per receiver into one send.)
    """
    receivers = [await ws_connect(f"{ws_url}/broadcast") for _ in range(3)]
    reader, writer = await raw_upgrade(http_port, "/broadcast")
    await asyncio.sleep(0.05)
    writer.write(b"".join(client_frame(Opcode.TEXT, f"m{i}".encode()) for i in range(300)))
    for receiver in receivers:
        assert [await recv(receiver) for _ in range(300)] == [f"m{i}" for i in range(300)]
    own = [await read_frame(reader) for _ in range(300)]
    assert [payload.decode() for _, payload in own] == [f"m{i}" for i in range(300)]
    writer.close()


def test_transport_finds_every_private_tornado_name_it_uses() -> None:
    """The installed Tornado has every private name tornws's transport relies on."""
    assert tornws.transport.missing_tornado_names() == []


def test_transport_names_a_private_tornado_name_that_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a Tornado that lacks one of them, the check names it, and the error a
    handshake would meet says which, with the Tornado version and what to do."""
    monkeypatch.delattr(tornado.websocket.WebSocketHandler, "_detach_stream")
    monkeypatch.setattr(tornws.transport, "_stream_fields", lambda: {"_read_buffer", "other"})
    missing = tornws.transport.missing_tornado_names()
    assert missing == [
        "tornado.websocket.WebSocketHandler._detach_stream",
        "tornado.iostream.IOStream._read_buffer_size",
    ]
    message = tornws.transport._unsupported(missing)
    assert "tornado.iostream.IOStream._read_buffer_size" in message
    assert f"Tornado {tornado.version}" in message and "supports" in message


def test_transport_is_the_only_module_with_private_tornado_names() -> None:
    """Outside tornws/transport.py no tornws module reaches into a private Tornado
    name (of a module, a stream, a request or a handler), and tornws's own handler
    fields never shadow one of Tornado's handler fields."""
    import inspect
    import pathlib
    import re

    private = re.compile(
        r"\btornado\.\w+\._\w|\b(?:stream|request|handler|connection|io_loop)\._[a-z]\w*"
    )
    package = pathlib.Path(tornws.__file__).parent
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "transport.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []
    tornado_fields = set()
    for cls in (tornado.web.RequestHandler, tornado.websocket.WebSocketHandler):
        tornado_fields |= set(re.findall(r"self\.(_\w+)", inspect.getsource(cls)))
        tornado_fields |= {name for name in dir(cls) if name.startswith("_")}
    ours = set()
    for module in (tornws.handlers, tornws.chat, tornws.demo):
        ours |= set(re.findall(r"self\.(_\w+)", inspect.getsource(module)))
    assert ours & tornado_fields == set()


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is; what the server answers before it closes (or 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return answer


def upgrade_request(
    key: str = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "HTTP/1.1", path: str = "/echo"
) -> bytes:
    return (
        f"GET {path} {version}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("abc", b"Sec-WebSocket-Key 'abc' is not base64 of 16 bytes"),
        ("c2hvcnQ=", b"Sec-WebSocket-Key 'c2hvcnQ=' is not base64 of 16 bytes"),
        ("", b"Sec-WebSocket-Key '' is not base64 of 16 bytes"),
        ("dGhlIHNhbXBsZSBub25jZQ", b"is not base64 of 16 bytes"),  # padding missing
    ],
)
async def test_handshake_with_a_bad_key_is_400_with_the_reason(
    http_port: int, http_server: Any, node: Any, caplog: Any, *, key: str, reason: bytes
) -> None:
    """RFC 6455 4.2.1: a Sec-WebSocket-Key that is not base64 of 16 bytes is refused
    with 400 and a one-line reason, logged and counted; the server goes on serving."""
    caplog.set_level(logging.INFO, logger="tornws.handlers")
    answer = await raw_request(http_port, upgrade_request(key))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert reason + b"\n" in answer
    assert "refused /echo peer=127.0.0.1 status=400" in caplog.text
    assert node.stats.rejections["handshake"] == 1
    _, writer = await raw_upgrade(http_port)  # everyone else is still served
    writer.close()


@pytest.mark.gen_test
async def test_handshake_over_http_1_0_is_505(http_port: int, http_server: Any) -> None:
    """An upgrade over HTTP/1.0 gets 505, not 101."""
    answer = await raw_request(http_port, upgrade_request(version="HTTP/1.0"))
    assert answer.startswith(b"HTTP/1.1 505 ")
    assert b"WebSocket needs HTTP/1.1 or later\n" in answer


@pytest.mark.gen_test
@pytest.mark.parametrize("part", ["headers", "url"])
async def test_handshake_over_tornados_header_limit_is_cut(
    http_port: int, http_server: Any, part: str
) -> None:
    """Request headers or a URL over Tornado's max_header_size (64 KiB) end the
    connection without a status: Tornado's HTTP parser closes it (documented in
    docs/comparison.md); the server goes on serving."""
    request = upgrade_request()
    if part == "headers":
        request = request.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    else:
        request = request.replace(b"/echo ", b"/echo?" + b"a" * 100_000 + b" ")
    assert await raw_request(http_port, request) == b""
    _, writer = await raw_upgrade(http_port)
    writer.close()


@pytest.mark.gen_test
async def test_transport_is_freed_without_the_collector(
    ws_url: str, ws_connect: Any, node: Any
) -> None:
    """A closed connection leaves no reference cycle: its transport is freed by reference
    counting alone (the collector is off), not left for a full collection."""
    import gc
    import weakref

    client = await ws_connect(f"{ws_url}/echo")
    await client.write_message("x")
    await recv(client)
    (handler,) = node.connections
    transport = weakref.ref(handler.ws_connection)
    del handler
    gc.disable()
    try:
        client.close()
        for _ in range(100):
            if not node.connections:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert transport() is None
    finally:
        gc.enable()


@pytest.mark.gen_test(timeout=20)
async def test_a_peer_gone_before_the_upgrade_is_through_is_never_opened(
    http_port: int, http_server: Any, node: Any, caplog: Any, *, ws_connect: Any, ws_url: str
) -> None:
    """A client that sends its upgrade and resets the connection while the server is still
    busy with it (a reconnect storm): no open(), no error logged, nothing left open, and
    the server goes on serving."""
    SlowToUpgrade.opened.clear()
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(
            upgrade_request(base64.b64encode(os.urandom(16)).decode(), path="/slowchat/hall")
        )
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, at once
    await asyncio.sleep(0.6)  # every prepare is over, and what follows it
    assert SlowToUpgrade.opened == []
    assert "Uncaught exception" not in caplog.text and "Traceback" not in caplog.text
    assert not node.connections
    chat = await ws_connect(f"{ws_url}/chat/hall?nick=ann")  # everyone else is still served
    assert (await recv(chat)).startswith("* you are ann in hall")
