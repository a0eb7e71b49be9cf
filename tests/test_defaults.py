"""tornws's defaults, as a client observes them: limits, keepalive, compression, origins."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import pytest
import tornado.httpclient
import tornado.web

import tornws

from wsclient import recv, recv_until_closed


class ReportHandler(tornws.WebSocketHandler):
    """Scenario handler: sends its effective settings on open."""

    def open(self) -> None:
        self.write_message(
            {
                "max_message_size": self.max_message_size,
                "ping_interval": self.ping_interval,
                "ping_timeout": self.ping_timeout,
                "compression": self.get_compression_options(),
            }
        )


class TestDefaults:
    @pytest.fixture
    def app(self) -> Any:
        return tornado.web.Application(
            [
                (r"/default", ReportHandler),
                (r"/custom", ReportHandler, {"max_message_size": 10, "compression": {}}),
                *tornws.routes(
                    "/small",
                    max_message_size=100,
                    origins=["https://ok.example", "https://*.apps.example:8443"],
                ),
            ]
        )

    @pytest.mark.gen_test
    async def test_default_limits_and_keepalive(self, ws_url: str, ws_connect: Any) -> None:
        """1 MiB limit, ping every 20 s, 20 s pong timeout, no compression."""
        connection = await ws_connect(f"{ws_url}/default")
        assert await recv(connection) == (
            '{"max_message_size": 1048576, "ping_interval": 20.0, "ping_timeout": 20.0, '
            '"compression": null}'
        )

    @pytest.mark.gen_test
    async def test_handler_options_override(self, ws_url: str, ws_connect: Any) -> None:
        """Options given to a route replace the defaults for that route only."""
        connection = await ws_connect(f"{ws_url}/custom", compression_options={})
        assert await recv(connection) == (
            '{"max_message_size": 10, "ping_interval": 20.0, "ping_timeout": 20.0, '
            '"compression": {"compression_level": 1, "mem_level": 5, '
            '"server_max_window_bits": 12, "client_max_window_bits": 12}}'
        )

    @pytest.mark.gen_test
    async def test_max_message_size_option_closes_1009(self, ws_url: str, ws_connect: Any) -> None:
        """A route's max_message_size is enforced: one byte over closes with 1009."""
        connection = await ws_connect(f"{ws_url}/small/echo")
        await connection.write_message("x" * 100)
        assert await recv(connection) == "x" * 100
        connection.write_message("x" * 101)
        assert await recv_until_closed(connection) == []
        assert connection.close_code == 1009

    @pytest.mark.gen_test
    async def test_origins_allow_list(self, ws_url: str, ws_connect: Any) -> None:
        """An Origin in `origins` is accepted; another foreign one gets 403."""
        ok = tornado.httpclient.HTTPRequest(
            f"{ws_url}/small/echo", headers={"Origin": "https://ok.example"}
        )
        await ws_connect(ok)
        bad = tornado.httpclient.HTTPRequest(
            f"{ws_url}/small/echo", headers={"Origin": "https://evil.example"}
        )
        with pytest.raises(tornado.httpclient.HTTPClientError) as info:
            await ws_connect(bad)
        assert info.value.code == 403

    @pytest.mark.gen_test
    async def test_wildcard_origin_and_refusal_log(
        self, ws_url: str, ws_connect: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``https://*.apps.example:8443`` admits its subdomains only; a refusal is
        logged with the origin."""
        caplog.set_level(logging.INFO, logger="tornws")
        for origin in ("https://chat.apps.example:8443", "https://a.b.APPS.example:8443"):
            request = tornado.httpclient.HTTPRequest(
                f"{ws_url}/small/echo", headers={"Origin": origin}
            )
            await ws_connect(request)
        for origin in (
            "https://apps.example:8443",  # the domain itself
            "https://chat.apps.example",  # another port
            "http://chat.apps.example:8443",  # another scheme
            "https://evilapps.example:8443",  # not a subdomain
            "https://chat.apps.example.evil:8443",
        ):
            request = tornado.httpclient.HTTPRequest(
                f"{ws_url}/small/echo", headers={"Origin": origin}
            )
            with pytest.raises(tornado.httpclient.HTTPClientError) as info:
                await ws_connect(request)
            assert info.value.code == 403, origin
        assert "reason=\"origin 'https://chat.apps.example.evil:8443' not allowed\"" in caplog.text


def test_origin_allowed_patterns() -> None:
    from tornws.handlers import origin_allowed

    allowed = ["https://a.example", "https://*.b.example", "http://*.c.example:8080"]
    assert origin_allowed("https://a.example", allowed)
    assert not origin_allowed("https://x.a.example", allowed)
    assert origin_allowed("https://x.b.example", allowed)
    assert origin_allowed("https://X.B.example", allowed)
    assert not origin_allowed("https://b.example", allowed)
    assert not origin_allowed("https://x.b.example:443", allowed)
    assert origin_allowed("http://x.c.example:8080", allowed)
    assert not origin_allowed("http://x.c.example", allowed)
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("https://x.b.example:notaport", allowed)


class TestKeepalive:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornws.make_app(
            registry=registry, websocket_ping_interval=0.1, websocket_ping_timeout=0.3
        )

    @pytest.mark.gen_test
    async def test_silent_peer_is_pinged_then_dropped(
        self, http_port: int, http_server: Any, registry: tornws.Registry
    ) -> None:
        """A peer that never answers pings gets pings, then is closed and leaves its room."""
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /chat/ka?nick=silent HTTP/1.1\r\nHost: 127.0.0.1:{http_port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert registry.members("ka")
        opcodes = []
        while True:  # read frames until the server gives up on us
            try:
                header = await asyncio.wait_for(reader.readexactly(2), 5)
            except asyncio.IncompleteReadError:
                break
            opcodes.append(header[0] & 0x0F)
            await reader.readexactly(header[1] & 0x7F)
            if opcodes[-1] == 0x8:
                break
        writer.close()
        assert 0x9 in opcodes  # pinged
        for _ in range(100):
            if not registry.members("ka"):
                break
            await asyncio.sleep(0.01)
        assert registry.members("ka") == ()
