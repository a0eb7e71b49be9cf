"""permessage-deflate: the server's answer to offers, its settings, and the shared-compressor mode,
with the websockets client and Tornado's (Chromium: tests/test_browser.py)."""

from __future__ import annotations

import logging
import re
import zlib
from typing import Any

import pytest
import tornado.httpclient
import tornado.web
import tornado.websocket
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import tornws
from tornws import deflate
from tornws.frames import Message
from tornws.handlers import DEFAULT_COMPRESSION

# The answer to an offer


def test_default_answer_declares_the_server_window() -> None:
    """A bare offer gets the server's 12-bit window declared, nothing else."""
    assert deflate.negotiate({}, DEFAULT_COMPRESSION) == {"server_max_window_bits": "12"}


def test_a_client_that_may_be_limited_is_limited() -> None:
    assert deflate.negotiate({"client_max_window_bits": None}, DEFAULT_COMPRESSION) == {
        "server_max_window_bits": "12",
        "client_max_window_bits": "12",
    }
    assert deflate.negotiate({"client_max_window_bits": "10"}, DEFAULT_COMPRESSION) == {
        "server_max_window_bits": "12",
        "client_max_window_bits": "10",
    }


def test_a_client_asking_for_a_smaller_server_window_gets_it() -> None:
    answer = deflate.negotiate({"server_max_window_bits": "10"}, DEFAULT_COMPRESSION)
    assert answer == {"server_max_window_bits": "10"}
    answer = deflate.negotiate({"server_max_window_bits": "15"}, DEFAULT_COMPRESSION)
    assert answer == {"server_max_window_bits": "12"}


def test_without_window_settings_the_answer_echoes_the_offer() -> None:
    """Tornado's own behaviour, kept when no window is configured."""
    plain = {"compression_level": 6}
    assert deflate.negotiate({}, plain) == {}
    assert deflate.negotiate({"client_max_window_bits": None}, plain) == {}
    offer = {"server_no_context_takeover": None, "client_max_window_bits": "9"}
    assert deflate.negotiate(offer, plain) == offer


def test_no_context_takeover_is_declared_when_configured() -> None:
    options = {**DEFAULT_COMPRESSION, "server_no_context_takeover": True}
    answer = deflate.negotiate({}, options)
    assert answer == {"server_no_context_takeover": None, "server_max_window_bits": "12"}
    options = {"client_no_context_takeover": True}
    assert deflate.negotiate({}, options) == {"client_no_context_takeover": None}


def test_offers_are_read_with_their_flags_and_duplicates() -> None:
    header = (
        'permessage-deflate; server_no_context_takeover; client_max_window_bits="10", '
        "x-webkit-deflate-frame, PerMessage-Deflate;Client_Max_Window_Bits;client_max_window_bits"
    )
    assert deflate.parse_offers(header) == [
        (
            "permessage-deflate",
            [("server_no_context_takeover", None), ("client_max_window_bits", "10")],
        ),
        ("x-webkit-deflate-frame", []),
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("client_max_window_bits", None)],
        ),
    ]
    assert deflate.parse_offers("") == []


@pytest.mark.parametrize(
    "offer",
    [
        [("client_max_window_bits", None), ("client_max_window_bits", None)],
        {"server_max_window_bits": "8"},  # zlib cannot compress with an 8-bit window
        {"server_max_window_bits": None},  # a value is required
        {"server_max_window_bits": "16"},
        {"server_max_window_bits": "09"},
        {"client_max_window_bits": "abc"},
        {"server_no_context_takeover": "1"},  # a flag takes no value
        {"client_no_context_takeover": "yes"},
        {"x_unknown": None},
    ],
)
def test_offers_that_cannot_be_honoured_are_declined(offer: Any) -> None:
    assert deflate.negotiate(offer, DEFAULT_COMPRESSION) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"server_max_window_bits": 8}, "server_max_window_bits must be an int from 9 to 15"),
        ({"client_max_window_bits": "12"}, "client_max_window_bits must be an int"),
        ({"server_no_context_takeover": 1}, "server_no_context_takeover must be True or False"),
        ({"compression_level": 10}, "compression_level must be 0 to 9"),
        ({"mem_level": 0}, "mem_level must be 1 to 9"),
        ({"window_bits": 12}, "unknown option(s) window_bits"),
    ],
)
def test_bad_settings_are_refused_when_the_route_is_built(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tornws.routes(compression=options)


def test_a_shared_frame_is_compressed_once_per_setting_and_inflates_back() -> None:
    text = "a chat line, a chat line, a chat line " * 20
    message = Message(text)
    frame = message.deflated((1, 12, 5))
    assert message.deflated((1, 12, 5)) is frame  # the same bytes for every receiver
    assert frame[0] == 0x80 | 0x40 | 0x1  # FIN, RSV1 (compressed), text
    assert frame[1] < 126  # a one-byte length
    payload = frame[2:]
    assert len(payload) < len(text) // 4
    inflater = zlib.decompressobj(-12)
    assert inflater.decompress(payload + b"\x00\x00\xff\xff").decode() == text
    assert message.deflated((1, 9, 5)) is not frame


# Against real clients


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornado.web.Application(
        [
            *tornws.routes(registry=registry, compression={}),
            *tornws.routes(
                "/shared", registry=registry, compression={"server_no_context_takeover": True}
            ),
            *tornws.routes("/plain", registry=registry),
        ]
    )


TEXT = "compressible chat line " * 400  # 9.2 KB


@pytest.mark.gen_test
async def test_websockets_client_gets_the_default_windows(ws_url: str) -> None:
    async with connect(f"{ws_url}/echo") as websocket:  # offers client_max_window_bits
        assert websocket.response is not None
        answer = websocket.response.headers["Sec-WebSocket-Extensions"]
        assert answer == (
            "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12"
        )
        for message in (TEXT, TEXT.encode(), "short", b""):
            await websocket.send(message)
            assert await websocket.recv() == message


@pytest.mark.gen_test
async def test_an_offer_with_an_8_bit_window_is_declined_and_the_connection_works(
    ws_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    offer = ClientPerMessageDeflateFactory(server_max_window_bits=8)
    with caplog.at_level(logging.INFO, logger="tornws.transport"):
        async with connect(f"{ws_url}/echo", extensions=[offer], compression=None) as websocket:
            assert websocket.response is not None
            assert "Sec-WebSocket-Extensions" not in websocket.response.headers
            await websocket.send(TEXT)
            assert await websocket.recv() == TEXT
    assert "declined a permessage-deflate offer" in caplog.text


@pytest.mark.gen_test
async def test_a_malformed_offer_is_declined_for_tornados_client(ws_url: str) -> None:
    request = tornado.httpclient.HTTPRequest(
        f"{ws_url}/echo", headers={"Sec-WebSocket-Extensions": "permessage-deflate; foo=1"}
    )
    connection = await tornado.websocket.websocket_connect(request)
    try:
        assert "Sec-WebSocket-Extensions" not in connection.headers
        await connection.write_message(TEXT)
        assert await connection.read_message() == TEXT
    finally:
        connection.close()


@pytest.mark.gen_test(timeout=10)
async def test_shared_mode_broadcast_reaches_every_kind_of_receiver(ws_url: str) -> None:
    """server_no_context_takeover: websockets and Tornado clients (compressing) and an
    uncompressed client in one room all get every message, intact, in order."""
    room = "/broadcast"
    async with (
        connect(f"{ws_url}/shared{room}") as one,
        connect(f"{ws_url}/shared{room}", compression=None) as bare,
    ):
        assert one.response is not None
        assert one.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; client_max_window_bits=12; "
            "server_max_window_bits=12; server_no_context_takeover"
        )
        tornado_client = await tornado.websocket.websocket_connect(
            f"{ws_url}/shared{room}", compression_options={}
        )
        try:
            answer = tornado_client.headers["Sec-WebSocket-Extensions"]
            assert "server_no_context_takeover" in answer
            sent = [f"{i}: {TEXT}" for i in range(5)] + [b"\x00" * 3000]
            await one.send("ready")  # everyone is registered once this comes back to all
            assert await one.recv() == "ready"
            assert await bare.recv() == "ready"
            assert await tornado_client.read_message() == "ready"
            for message in sent:
                await one.send(message)
            for receiver in (one, bare):
                assert [await receiver.recv() for _ in sent] == sent
            assert [await tornado_client.read_message() for _ in sent] == sent
        finally:
            tornado_client.close()


@pytest.mark.gen_test
async def test_per_connection_mode_with_tornados_client(ws_url: str) -> None:
    connection = await tornado.websocket.websocket_connect(f"{ws_url}/echo", compression_options={})
    try:
        assert connection.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12"
        )
        for _ in range(3):  # the contexts carry over from message to message
            await connection.write_message(TEXT)
            assert await connection.read_message() == TEXT
    finally:
        connection.close()


@pytest.mark.gen_test
async def test_a_route_without_compression_declines_every_offer(ws_url: str) -> None:
    async with connect(f"{ws_url}/plain/echo") as websocket:
        assert websocket.response is not None
        assert "Sec-WebSocket-Extensions" not in websocket.response.headers
