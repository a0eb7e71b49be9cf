"""Graceful drain: the ``drain()`` API, and ``tornws serve`` on SIGTERM with 500 clients."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from typing import Any

import pytest
import tornado.httpclient
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed

import tornws
from tornws.frames import Message

from conftest import Server, free_port
from wsclient import recv_until_closed


@pytest.mark.gen_test(timeout=30)
async def test_drain_flushes_then_closes_1001_and_refuses_newcomers(
    registry: tornws.Registry, node: tornws.Node, ws_url: str, http_url: str, ws_connect: Any
) -> None:
    clients = [await ws_connect(f"{ws_url}/broadcast") for _ in range(20)]
    while len(registry.members("broadcast:/broadcast")) < 20:
        await asyncio.sleep(0.01)
    for i in range(50):
        registry.publish("broadcast:/broadcast", Message(f"m{i}"))
    draining = asyncio.ensure_future(tornws.drain(node, window=0.5, timeout=5))
    await asyncio.sleep(0)  # drain has begun: node.draining is set
    http = tornado.httpclient.AsyncHTTPClient()
    health = await http.fetch(f"{http_url}/healthz", raise_error=False)
    assert (health.code, health.body) == (503, b"draining\n")
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await tornado.websocket.websocket_connect(f"{ws_url}/echo")
    assert refused.value.code == 503
    assert refused.value.response is not None
    assert refused.value.response.headers["Retry-After"] == "5"
    received = await asyncio.gather(*(recv_until_closed(c) for c in clients))
    assert await draining == 20
    for client, messages in zip(clients, received):
        assert messages == [f"m{i}" for i in range(50)]
        assert (client.close_code, client.close_reason) == (1001, "server shutting down")
    assert node.connections == set() and node.stats.rejections["draining"] == 1


def serve(*extra: str) -> Server:
    port = free_port()
    return Server([sys.executable, "-m", "tornws", "serve", "--port", str(port), *extra], port)


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_with_500_clients_mid_stream_loses_nothing() -> None:
    """500 clients on /broadcast while one streams numbered messages; SIGTERM after the
    50th came back. Every client got an unbroken run from 0 past 50, then 1001; exit 0."""
    server = serve("--drain-window", "1")
    url = f"{server.url}/broadcast"
    try:
        clients = []
        for _ in range(10):  # in groups, as a crowd arrives
            clients += await asyncio.gather(
                *(websockets.asyncio.client.connect(url) for _ in range(50))
            )
        publisher = clients[0]

        async def collect(client: Any) -> list[int]:
            numbers = []
            try:
                async for message in client:
                    numbers.append(int(message))
            except ConnectionClosed:
                pass
            return numbers

        collecting = [asyncio.ensure_future(collect(c)) for c in clients]
        signalled_after: list[int] = []

        async def stream() -> None:
            for n in range(100_000):
                try:
                    await publisher.send(str(n))
                except ConnectionClosed:
                    return
                if n == 50:
                    await asyncio.sleep(0.2)  # its echo is surely back by now
                    signalled_after.append(n)
                    server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.01)

        started = time.monotonic()
        await stream()
        results = await asyncio.gather(*collecting)
        elapsed = time.monotonic() - started
        code, log = server.stop(timeout=30)
    finally:
        server.stop()
    assert signalled_after == [50]
    for client, numbers in zip(clients, results):
        assert numbers == list(range(len(numbers))), "a gap or a reordering"
        assert len(numbers) > 50
        assert (client.close_code, client.close_reason) == (1001, "server shutting down"), log
    assert code == 0, log
    assert "draining: closing 500 connection(s) with 1001 over 1.0 s" in log
    assert elapsed < 20


@pytest.mark.gen_test(timeout=30)
async def test_restart_closes_1012_and_the_client_exits_0() -> None:
    server = serve("--restart")
    try:
        async with websockets.asyncio.client.connect(f"{server.url}/echo") as client:
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                await client.recv()
            assert client.close_code == 1012
    finally:
        code, log = server.stop()
    assert code == 0, log


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_sends_no_request_is_cut_after_the_handshake_timeout() -> None:
    """``idle_connection_timeout`` (10 s in ``tornws serve``): here 0.5 s."""
    stop = asyncio.Event()
    port = free_port()
    serving = asyncio.ensure_future(
        tornws.serve(tornws.make_app(), "127.0.0.1", port, stop=stop, idle_connection_timeout=0.5)
    )
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.setblocking(False)
            started = time.monotonic()
            assert await asyncio.wait_for(loop.sock_recv(silent, 1), 5) == b""
            waited = time.monotonic() - started
    finally:
        stop.set()
        await serving
    assert 0.4 < waited < 3
