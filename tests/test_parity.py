"""One set of client scenarios against both servers: tornws and the asyncio version.

Each test runs twice, against ``tornws serve`` and against
``examples/asyncio_version/server.py``, and asserts the same observable behaviour.
The deliberate differences (docs/comparison.md) are asserted as differences.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from conftest import ROOT, Server, free_port
from wsclient import nothing_more, recv, recv_json, recv_until_closed

SERVERS = {
    "tornws": [sys.executable, "-m", "tornws", "serve", "--log-level", "warning"],
    "asyncio": [
        sys.executable,
        f"{ROOT}/examples/asyncio_version/server.py",
        "--log-level",
        "warning",
    ],
}


def start(kind: str, *args: str) -> Server:
    port = free_port()
    return Server([*SERVERS[kind], "--port", str(port), *args], port)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Either server, started once per module and kind."""
    started = start(request.param)
    started.kind = request.param  # type: ignore[attr-defined]
    yield started
    started.stop()


@pytest.fixture
def url(server: Server) -> str:
    return server.url


@pytest.fixture
def kind(server: Server) -> str:
    return server.kind  # type: ignore[attr-defined,no-any-return]


@pytest.mark.gen_test
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
async def test_parity_echo_text_and_binary(url: str, ws_connect: Any, size: int) -> None:
    """/echo returns each message unchanged and with its type, at every length boundary."""
    connection = await ws_connect(f"{url}/echo")
    text = "é" * (size // 2)
    await connection.write_message(text)
    assert await recv(connection) == text
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    await connection.write_message(data, binary=True)
    assert await recv(connection) == data


@pytest.mark.gen_test
async def test_parity_broadcast(url: str, ws_connect: Any) -> None:
    """/broadcast reaches every connection, the sender included, with the message's type."""
    connections = [await ws_connect(f"{url}/broadcast") for _ in range(3)]
    await connections[1].write_message("all")
    await connections[2].write_message(b"\x00bin", binary=True)
    for connection in connections:
        assert await recv(connection) == "all"
        assert await recv(connection) == b"\x00bin"


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/nope", "/chat/", "/chat/a/b", "/echo/x"])
async def test_parity_unknown_paths_404(url: str, ws_connect: Any, path: str) -> None:
    """Unknown paths are HTTP 404 before any upgrade."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{url}{path}")
    assert info.value.code == 404


@pytest.mark.gen_test
async def test_parity_unknown_subprotocols_400(url: str, ws_connect: Any) -> None:
    """Offering only unknown subprotocols: 400 with the same body listing the supported."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{url}/chat", subprotocols=["xmpp", "mqtt"])
    assert info.value.code == 400
    assert info.value.response is not None
    assert info.value.response.body == (
        b"unsupported subprotocol xmpp, mqtt; this endpoint supports: chat.json, chat\n"
    )


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["chat", "chat.json"], "chat.json"), (["chat"], "chat"), (None, None)],
)
async def test_parity_subprotocol_selection(
    url: str, ws_connect: Any, offered: list[str] | None, selected: str | None
) -> None:
    """Server preference picks chat.json over chat; no offer means plain text, no subprotocol."""
    connection = await ws_connect(f"{url}/chat/sel", subprotocols=offered)
    assert connection.selected_subprotocol == selected


@pytest.mark.gen_test
async def test_parity_text_chat(url: str, ws_connect: Any) -> None:
    """Plain text: welcome line, joins, `<nick>: <text>` to others only, leaves."""
    ann = await ws_connect(f"{url}/chat/pt?nick=ann")
    assert await recv(ann) == "* you are ann in pt; here: ann"
    bob = await ws_connect(f"{url}/chat/pt?nick=bob", subprotocols=["chat"])
    assert await recv(bob) == "* you are bob in pt; here: ann, bob"
    assert await recv(ann) == "* bob joined"
    await ann.write_message("hello\n")
    assert await recv(bob) == "ann: hello"
    assert await nothing_more(ann)
    bob.close()
    assert await recv(ann) == "* bob left"


@pytest.mark.gen_test
async def test_parity_json_chat(url: str, ws_connect: Any) -> None:
    """chat.json: presence, own join, ids increasing by one, own messages echoed, time set."""
    web = await ws_connect(f"{url}/chat/pj?nick=web", subprotocols=["chat.json"])
    assert await recv_json(web) == {
        "type": "presence",
        "room": "pj",
        "members": ["web"],
        "you": "web",
    }
    join = await recv_json(web)
    assert {k: join[k] for k in ("type", "room", "id", "nick")} == {
        "type": "join",
        "room": "pj",
        "id": 1,
        "nick": "web",
    }
    term = await ws_connect(f"{url}/chat/pj?nick=term")
    await recv(term)
    assert (await recv_json(web))["id"] == 2
    await term.write_message("from terminal")
    event = await recv_json(web)
    assert isinstance(event.pop("time"), float)
    assert event.pop("epoch") == join["epoch"] and len(join["epoch"]) == 8
    assert event == {
        "type": "message",
        "room": "pj",
        "id": 3,
        "sender": "term",
        "text": "from terminal",
    }
    await web.write_message('{"type": "message", "text": "from browser"}')
    assert (await recv_json(web))["id"] == 4
    assert await recv(term) == "web: from browser"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ("{", "invalid_json"),
        ("[]", "invalid_message"),
        ('{"type": "message", "text": ""}', "invalid_message"),
        ('{"type": "wave"}', "unknown_type"),
    ],
)
async def test_parity_json_errors(url: str, ws_connect: Any, sent: str, code: str) -> None:
    """Bad chat.json input: an error event with the same code; the connection stays open."""
    user = await ws_connect(f"{url}/chat/pe?nick=e", subprotocols=["chat.json"])
    await recv_json(user)
    await recv_json(user)
    await user.write_message(sent)
    assert (await recv_json(user))["code"] == code
    await user.write_message('{"type": "presence"}')
    assert (await recv_json(user))["type"] == "presence"


@pytest.mark.gen_test
async def test_parity_binary_in_chat(url: str, ws_connect: Any) -> None:
    """Binary: chat.json answers an unsupported_data error; plain text closes 1003 with a reason."""
    j = await ws_connect(f"{url}/chat/pb?nick=j", subprotocols=["chat.json"])
    await recv_json(j)
    await recv_json(j)
    await j.write_message(b"\x01", binary=True)
    assert (await recv_json(j))["code"] == "unsupported_data"
    t = await ws_connect(f"{url}/chat/pb?nick=t")
    await recv(t)
    await t.write_message(b"\x01", binary=True)
    assert await recv_until_closed(t) == []
    assert (t.close_code, t.close_reason) == (1003, "the chat takes text messages only")


@pytest.mark.gen_test
async def test_parity_oversize_closes_1009(url: str, ws_connect: Any) -> None:
    """A message over 1 MiB closes the connection with 1009 (the reason text differs)."""
    connection = await ws_connect(f"{url}/echo")
    connection.write_message(b"x" * (1024 * 1024 + 1), binary=True)
    assert await recv_until_closed(connection) == []
    assert connection.close_code == 1009


@pytest.mark.gen_test
async def test_parity_invalid_nick_400(url: str, ws_connect: Any) -> None:
    """An invalid nick is refused with 400 and the same rule in the body."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{url}/chat?nick=two%20words")
    assert info.value.code == 400
    assert info.value.response is not None
    assert info.value.response.body == (
        b"invalid nick 'two words': use 1 to 32 characters, no spaces or control characters\n"
    )


@pytest.mark.gen_test
async def test_parity_cross_origin_403(url: str, ws_connect: Any) -> None:
    """A foreign Origin is refused with 403; the same host is accepted."""
    foreign = tornado.httpclient.HTTPRequest(f"{url}/echo", headers={"Origin": "http://x.example"})
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(foreign)
    assert info.value.code == 403
    same = tornado.httpclient.HTTPRequest(
        f"{url}/echo", headers={"Origin": url.replace("ws://", "http://")}
    )
    await ws_connect(same)


@pytest.mark.gen_test
async def test_parity_healthz(url: str) -> None:
    """/healthz answers 200 ok."""
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        url.replace("ws://", "http://") + "/healthz"
    )
    assert response.body == b"ok\n"


# Deliberate differences, asserted as such (docs/comparison.md).


@pytest.mark.gen_test
async def test_difference_plain_get_status(url: str, kind: str) -> None:
    """A plain GET on a WebSocket route: Tornado answers 400, websockets 426 Upgrade Required."""
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        url.replace("ws://", "http://") + "/echo", raise_error=False
    )
    assert response.code == {"tornws": 400, "asyncio": 426}[kind]


@pytest.mark.gen_test
async def test_difference_index_page(url: str, kind: str) -> None:
    """`/` is tornws's page; the asyncio version serves WebSockets and /healthz only."""
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        url.replace("ws://", "http://") + "/", raise_error=False
    )
    assert response.code == {"tornws": 200, "asyncio": 404}[kind]


@pytest.mark.parametrize("kind", sorted(SERVERS))
@pytest.mark.gen_test
async def test_parity_sigterm_closes_1001(kind: str, ws_connect: Any) -> None:
    """SIGTERM: open connections are closed with 1001 and the server exits 0."""
    server = start(kind)
    try:
        connection = await ws_connect(f"{server.url}/echo")
        server.process.send_signal(signal.SIGTERM)
        assert await recv_until_closed(connection) == []
        assert connection.close_code == 1001
        assert server.process.wait(10) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("kind", sorted(SERVERS))
@pytest.mark.gen_test(timeout=30)
async def test_parity_crowded_room(kind: str, ws_connect: Any) -> None:
    """`--crowd 3`: from the third member on, who came and went within a second is one
    notice to everyone (plain text: one line), newcomers get the room as of the last
    notice, and lines still go to everyone at once."""
    server = start(kind, "--crowd", "3")
    try:
        url = server.url
        ann = await ws_connect(f"{url}/chat/hall?nick=ann")
        assert await recv(ann) == "* you are ann in hall; here: ann"
        bob = await ws_connect(f"{url}/chat/hall?nick=bob", subprotocols=["chat.json"])
        assert (await recv_json(bob))["members"] == ["ann", "bob"]
        assert (await recv_json(bob))["type"] == "join"
        assert await recv(ann) == "* bob joined"
        cy = await ws_connect(f"{url}/chat/hall?nick=cy")  # the third: crowded from now on
        assert await recv(cy) == "* you are cy in hall; here: ann, bob, cy"
        dee = await ws_connect(f"{url}/chat/hall?nick=dee", subprotocols=["chat.json"])
        assert await recv_json(dee) == {
            "type": "presence",
            "room": "hall",
            "members": ["ann", "bob"],
            "nick": "dee",
        }
        cy.close()
        assert await recv(ann) == "* 2 joined: cy, dee; 1 left: cy"
        for member in (bob, dee):
            diff = await recv_json(member)
            assert set(diff) == {"type", "room", "epoch", "id", "time", "joins", "leaves"}
            assert (diff["type"], diff["joins"], diff["leaves"]) == (
                "presence_diff",
                ["cy", "dee"],
                ["cy"],
            )
        await dee.write_message('{"type": "message", "text": "hi all"}')
        assert await recv(ann) == "dee: hi all"
        assert (await recv_json(bob))["text"] == "hi all"
        assert (await recv_json(dee))["text"] == "hi all"
        assert await nothing_more(ann)
    finally:
        server.stop()
