"""Slow consumers, connection limits and the outgoing budget, with real sockets.

A *stuck* client completes the upgrade and then never reads, with a small
receive buffer: whatever the server sends it piles up on the server's side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import sys
import time
from typing import Any

import pytest
import tornado.httpclient
import tornado.web
import websockets.asyncio.client

import tornws
from tornws.frames import Message

from conftest import Server, free_port
from wsclient import recv, recv_until_closed

BULK = b"b" * (512 * 1024)


class Feed(tornws.WebSocketHandler):
    """Joins the rooms named in ``?rooms=a,b``; receives what is published to them."""

    def open(self) -> None:
        for room in self.get_query_argument("rooms").split(","):
            self.registry.join(room, self)


class Stalled(tornws.WebSocketHandler):
    """A coroutine ``on_message`` that never finishes."""

    async def on_message(self, message: str | bytes) -> None:
        await asyncio.Event().wait()


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornado.web.Application(
        [
            (r"/stalled", Stalled, {"registry": registry}),
            (r"/feed", Feed, {"registry": registry}),
            (r"/feed-drop", Feed, {"registry": registry, "slow_consumer": "drop"}),
            (r"/feed-small", Feed, {"registry": registry, "max_outgoing": 64 * 1024}),
        ],
        **{"tornws.registry": registry},
    )


_stuck: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_stuck_clients() -> Any:
    yield
    while _stuck:
        _stuck.pop().close()


async def stuck_client(port: int, path: str) -> socket.socket:
    """Upgrade, then never read (receive buffer 4 KiB); closed at teardown."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    _stuck.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def stream_to_many(
    registry: tornws.Registry, ws_url: str, ws_connect: Any, path: str, count: int = 200
) -> list[Any]:
    """``count`` readers in room ``stream``; returns them once all have joined."""
    readers = await asyncio.gather(
        *(ws_connect(f"{ws_url}{path}?rooms=stream") for _ in range(count))
    )
    await wait_for(lambda: len(registry.members("stream")) >= count)
    return list(readers)


async def receive_all(reader: Any, count: int) -> list[str]:
    return [await recv(reader) for _ in range(count)]


@pytest.mark.gen_test(timeout=60)
async def test_slow_consumer_is_closed_while_200_others_receive_on_time(
    registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any, http_port: int
) -> None:
    """Policy ``close``: the stuck client is closed (1008, counted, its queue freed) and
    everyone else gets the whole stream, in order, promptly."""
    await stuck_client(http_port, "/feed?rooms=bulk,stream")
    readers = await stream_to_many(registry, ws_url, ws_connect, "/feed")
    stats = node.stats
    for _ in range(8):  # 4 MiB for the stuck client only
        registry.publish("bulk", Message(BULK))
    started = time.monotonic()
    for i in range(100):
        registry.publish("stream", Message(f"m{i}"))
    received = await asyncio.gather(*(receive_all(r, 100) for r in readers))
    elapsed = time.monotonic() - started
    assert all(messages == [f"m{i}" for i in range(100)] for messages in received)
    assert elapsed < 10, elapsed
    assert stats.slow_consumer_closes == 1 and stats.slow_consumer_drops == 0
    # Its unsent messages were freed at once; the one frame it was inside of may remain.
    assert stats.outgoing_bytes <= len(BULK) + 64
    # It never answers the close frame, so the socket is cut after the close timeout.
    timeout = tornws.transport.CLOSE_TIMEOUT + 5
    await wait_for(lambda: len(node.connections) == 200, timeout=timeout)
    assert registry.members("bulk") == ()


@pytest.mark.gen_test(timeout=60)
async def test_slow_consumer_misses_messages_under_drop(
    registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any, http_port: int
) -> None:
    """Policy ``drop``: the stuck client stays, its queue stays under the bound, the
    messages it cannot take are counted and skipped; the others get everything."""
    await stuck_client(http_port, "/feed-drop?rooms=bulk,stream")
    readers = await stream_to_many(registry, ws_url, ws_connect, "/feed-drop")
    for _ in range(8):
        registry.publish("bulk", Message(BULK))
    for i in range(100):
        registry.publish("stream", Message(f"m{i}"))
    received = await asyncio.gather(*(receive_all(r, 100) for r in readers))
    assert all(messages == [f"m{i}" for i in range(100)] for messages in received)
    stats = node.stats
    assert stats.slow_consumer_closes == 0
    # What did not fit was skipped (bulk frames); what fits under the bound is queued.
    assert stats.slow_consumer_drops >= 1
    assert 0 < stats.outgoing_bytes <= tornws.handlers.DEFAULT_MAX_OUTGOING
    assert len(node.connections) == 201  # still connected
    _stuck.pop().close()
    await wait_for(lambda: len(node.connections) == 200)  # the server saw it go


@pytest.mark.gen_test(timeout=30)
async def test_max_outgoing_option_and_write_message(
    registry: tornws.Registry, node: tornws.Node, http_server: Any, http_port: int
) -> None:
    """``max_outgoing`` per route; ``write_message`` over it on a closing policy raises."""
    await stuck_client(http_port, "/feed-small?rooms=bulk")
    await wait_for(lambda: len(node.connections) == 1)
    (handler,) = node.connections
    with pytest.raises(tornado.websocket.WebSocketClosedError):
        for _ in range(64):  # 32 MiB at most; the bound is 64 KiB past the kernel's buffers
            handler.write_message(BULK, binary=True)
    assert node.stats.slow_consumer_closes == 1
    _stuck.pop().close()
    await wait_for(lambda: not node.connections)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("policy", ["drop", "close"])
@pytest.mark.gen_test(timeout=60)
async def test_server_memory_stays_bounded_with_a_client_that_never_reads(policy: str) -> None:
    """`tornws serve --max-outgoing 256k`: 64 MiB broadcast past a stuck client grows
    the server's RSS by far less than 64 MiB, under either policy."""
    port = free_port()
    command = [sys.executable, "-m", "tornws", "serve", "--port", str(port)]
    server = Server([*command, "--max-outgoing", "256k", "--slow-consumer", policy], port)
    chunk = b"x" * (256 * 1024)
    try:
        await stuck_client(port, "/broadcast")
        async with websockets.asyncio.client.connect(
            f"ws://127.0.0.1:{port}/broadcast", max_size=None
        ) as publisher:
            await publisher.send(b"warm up")
            await publisher.recv()
            before = rss_kib(server.process.pid)
            for _ in range(256):  # 64 MiB, paced by reading our own copy back
                await publisher.send(chunk)
                assert await publisher.recv() == chunk
            growth = rss_kib(server.process.pid) - before
    finally:
        server.process.send_signal(signal.SIGTERM)
        code, log = server.stop()
    assert growth < 24 * 1024, f"RSS grew by {growth} KiB"
    if policy == "close":
        assert "closing slow consumer /broadcast" in log
    assert code == 0, log


async def refused(url: str) -> tornado.httpclient.HTTPResponse:
    try:
        await tornado.websocket.websocket_connect(url)
    except tornado.httpclient.HTTPClientError as error:
        assert error.response is not None
        return error.response
    raise AssertionError(f"{url} was not refused")


class TestConnectionLimits:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornws.make_app(
            registry=registry, tornws_max_connections=4, tornws_max_connections_per_ip=3
        )

    @pytest.mark.gen_test
    async def test_per_ip_then_global_limit_answer_503_before_the_upgrade(
        self, registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any
    ) -> None:
        first = [await ws_connect(f"{ws_url}/echo") for _ in range(3)]
        response = await refused(f"{ws_url}/echo")
        assert response.code == 503
        assert response.headers["Retry-After"] == "5"
        assert b"too many connections from your address (limit 3)" in response.body
        assert node.stats.rejections["connections_per_ip"] == 1
        # A closed connection frees its place.
        first[0].close()
        await wait_for(lambda: len(node.connections) == 2)
        again = await ws_connect(f"{ws_url}/echo")
        await again.write_message("in")
        assert await recv(again) == "in"

    @pytest.mark.gen_test
    async def test_global_limit(
        self, registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any, app: Any
    ) -> None:
        # Every test client is 127.0.0.1: lift the per-address limit to reach the global one.
        app.settings["tornws_max_connections_per_ip"] = None
        for _ in range(4):
            await ws_connect(f"{ws_url}/echo")
        response = await refused(f"{ws_url}/chat")
        assert response.code == 503 and b"too many connections (limit 4)" in response.body
        assert node.stats.rejections == {"connections": 1}


class TestOutgoingBudget:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornado.web.Application(
            [(r"/feed", Feed, {"registry": registry, "max_outgoing": 0})],
            **{"tornws.registry": registry, "tornws_outgoing_budget": 256 * 1024},
        )

    @pytest.mark.gen_test(timeout=30)
    async def test_upgrades_get_503_while_too_much_is_unsent(
        self,
        registry: tornws.Registry,
        node: tornws.Node,
        ws_url: str,
        ws_connect: Any,
        http_port: int,
    ) -> None:
        stuck = await stuck_client(http_port, "/feed?rooms=bulk")
        await wait_for(lambda: len(node.connections) == 1)
        for _ in range(16):
            registry.publish("bulk", Message(BULK))
        assert node.stats.outgoing_bytes > 256 * 1024
        response = await refused(f"{ws_url}/feed?rooms=x")
        assert response.code == 503 and b"server busy" in response.body
        stuck.close()  # the queue is freed with the connection
        await wait_for(lambda: node.stats.outgoing_bytes == 0)
        welcome = await ws_connect(f"{ws_url}/feed?rooms=x")
        registry.publish("x", Message("served again"))
        assert await recv(welcome) == "served again"


class TestRateAndIdle:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornws.make_app(
            registry=registry,
            handler_options={"rate_limit": (20, 1.0), "idle_timeout": 0.5},
        )

    @pytest.mark.gen_test(timeout=20)
    async def test_a_flood_is_closed_1008_and_others_keep_their_echo(
        self, registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any
    ) -> None:
        neighbour = await ws_connect(f"{ws_url}/echo")
        flood = await ws_connect(f"{ws_url}/echo")
        for i in range(100):
            flood.write_message(f"{i}")
        replies = await recv_until_closed(flood)
        assert replies == [f"{i}" for i in range(20)]  # the burst, then the close
        assert (flood.close_code, flood.close_reason) == (1008, "message rate limit")
        assert node.stats.rate_limited == 1
        await neighbour.write_message("still here")
        assert await recv(neighbour) == "still here"

    @pytest.mark.gen_test(timeout=20)
    async def test_within_the_rate_nothing_happens(
        self, registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any
    ) -> None:
        steady = await ws_connect(f"{ws_url}/echo")
        for i in range(30):  # 30 messages over 1.5 s: 20 per second, the limit
            await steady.write_message(f"{i}")
            assert await recv(steady) == f"{i}"
            await asyncio.sleep(0.05)
        assert node.stats.rate_limited == 0

    @pytest.mark.gen_test(timeout=20)
    async def test_idle_connection_is_closed_1000_but_a_talking_one_is_not(
        self, registry: tornws.Registry, node: tornws.Node, ws_url: str, ws_connect: Any
    ) -> None:
        idle = await ws_connect(f"{ws_url}/echo")
        talking = await ws_connect(f"{ws_url}/echo")
        started = time.monotonic()
        for _ in range(8):  # 0.8 s of talk, one message every 0.1 s
            await talking.write_message("hi")
            assert await recv(talking) == "hi"
            await asyncio.sleep(0.1)
        assert await recv_until_closed(idle) == []
        assert (idle.close_code, idle.close_reason) == (1000, "idle timeout")
        assert 0.45 < time.monotonic() - started < 2
        assert talking.close_code is None
        assert node.stats.idle_closes == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_stalled_coroutine_on_message_stops_reading(
    registry: tornws.Registry, node: tornws.Node, http_server: Any, http_port: int
) -> None:
    """Inbound flow control: while ``on_message`` has not finished, the server reads
    nothing more, so a client's flood stays in the kernel's buffers and then blocks,
    instead of piling up in the server's memory."""
    sock = await stuck_client(http_port, "/stalled")
    frame = b"\x82\xfe\xff\xff" + b"\x00" * 4 + b"s" * 65535  # masked binary, 64 KiB
    accepted = 0
    for _ in range(1024):  # up to 64 MiB
        try:
            accepted += sock.send(frame)
        except BlockingIOError:
            break
        await asyncio.sleep(0)  # let the server run
    await asyncio.sleep(0.2)
    with contextlib.suppress(BlockingIOError):
        accepted += sock.send(frame)
    assert accepted < 16 * 1024 * 1024, accepted  # kernel buffers only, not 64 MiB
    (handler,) = node.connections
    assert handler.ws_connection.messages_in == 1  # the first message, still being handled
    # Not reading, it would notice the client leaving only by keepalive: cut it.
    handler.abort()
    await wait_for(lambda: not node.connections)


@pytest.mark.gen_test(timeout=30)
async def test_xheaders_make_per_address_limits_see_the_client_behind_a_proxy() -> None:
    """`tornws serve --xheaders --max-connections-per-ip 1`: X-Real-IP is the address."""
    port = free_port()
    args = [sys.executable, "-m", "tornws", "serve", "--port", str(port), "--xheaders"]
    server = Server([*args, "--max-connections-per-ip", "1"], port)
    url = f"ws://127.0.0.1:{port}/echo"

    def behind_proxy(client: str) -> Any:
        request = tornado.httpclient.HTTPRequest(url, headers={"X-Real-IP": client})
        return tornado.websocket.websocket_connect(request)

    try:
        first = await behind_proxy("192.0.2.1")
        second = await behind_proxy("192.0.2.2")  # another client: accepted
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await behind_proxy("192.0.2.1")
        assert refused.value.code == 503
        first.close()
        second.close()
    finally:
        code, log = server.stop()
    assert "peer=192.0.2.2" in log and code == 0
