"""Every program in examples/ runs and does what examples/README.md says."""

from __future__ import annotations

import contextlib
import http.client
import sys
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import ROOT, Server, free_port
from processes import Interactive, run, tornws_command

TIMEOUT = 10


def example(name: str) -> str:
    return f"{ROOT}/examples/{name}.py"


@pytest.fixture
def start_example(start_server: Any) -> Any:
    def start(name: str) -> Server:
        port = free_port()
        return start_server([sys.executable, example(name), str(port)], port)

    return start


def test_example_echo_server(start_example: Any) -> None:
    """echo_server.py echoes text as text and binary as binary."""
    server = start_example("echo_server")
    with connect(f"{server.url}/", open_timeout=TIMEOUT) as ws:
        ws.send("hi")
        assert ws.recv(TIMEOUT) == "hi"
        ws.send(b"\x01\x02")
        assert ws.recv(TIMEOUT) == b"\x01\x02"


def test_example_client(start_example: Any) -> None:
    """client.py sends the name (argument or prompt) and prints the reply; refusal is one line."""
    server = start_example("echo_server")
    result = run([sys.executable, example("client"), f"{server.url}/", "Ann"])
    assert result.stdout == ">>> Ann\n<<< Ann\n"
    prompted = run([sys.executable, example("client"), f"{server.url}/"], stdin="Bo\n")
    assert prompted.stdout == "What's your name? >>> Bo\n<<< Bo\n"
    refused = run([sys.executable, example("client"), f"ws://127.0.0.1:{free_port()}/", "x"])
    assert refused.returncode == 1 and refused.stderr.startswith("cannot connect to")
    assert "Traceback" not in refused.stderr


def test_example_many_clients(start_example: Any) -> None:
    """many_clients.py answers 20 concurrent clients, each with its own receipt."""
    server = start_example("many_clients")
    replies: dict[int, str] = {}

    def talk(i: int) -> None:
        with connect(f"{server.url}/", open_timeout=TIMEOUT) as ws:
            ws.send(f"client {i}")
            replies[i] = str(ws.recv(TIMEOUT))

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert replies == {i: f"Server received: client {i}" for i in range(20)}
    deadline = time.monotonic() + TIMEOUT  # each close is logged once the handshake ends
    while server.output.count("closed") < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, log = server.stop()
    assert log.count("connected") == 20 and log.count("closed") == 20


def test_example_paths(start_example: Any) -> None:
    """paths.py routes /echo and /greet/<name>; any other path is 404 before the upgrade."""
    server = start_example("paths")
    with connect(f"{server.url}/echo", open_timeout=TIMEOUT) as ws:
        ws.send("routed")
        assert ws.recv(TIMEOUT) == "routed"
    with connect(f"{server.url}/greet/ann", open_timeout=TIMEOUT) as ws:
        assert ws.recv(TIMEOUT) == "hello, ann"
    with (
        pytest.raises(InvalidStatus) as info,
        connect(f"{server.url}/elsewhere", open_timeout=TIMEOUT),
    ):
        pass
    assert info.value.response.status_code == 404


def test_example_subprotocols(start_example: Any) -> None:
    """subprotocols.py accepts `chat` only; no or other subprotocols get 400 saying so."""
    server = start_example("subprotocols")
    with connect(f"{server.url}/", subprotocols=["chat"], open_timeout=TIMEOUT) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat"
        ws.send("hi")
        assert ws.recv(TIMEOUT) == "Chat server received: hi"
    for offered in (None, ["superchat"]):
        with (
            pytest.raises(InvalidStatus) as info,
            connect(
                f"{server.url}/",
                subprotocols=offered,
                open_timeout=TIMEOUT,  # type: ignore[arg-type]
            ),
        ):
            pass
        assert info.value.response.status_code == 400
        assert b"supports: chat" in info.value.response.body


def test_example_compression(start_example: Any) -> None:
    """compression.py negotiates permessage-deflate with the websockets client and tornws client."""
    server = start_example("compression")
    with connect(f"{server.url}/", open_timeout=TIMEOUT) as ws:
        assert ws.response is not None
        answer = ws.response.headers["Sec-WebSocket-Extensions"]
        assert answer == "permessage-deflate; client_max_window_bits=12; server_max_window_bits=10"
        ws.send("z" * 10000)
        assert ws.recv(TIMEOUT) == "z" * 10000
    with connect(f"{server.url}/all/echo", open_timeout=TIMEOUT) as ws:  # every setting
        assert ws.response is not None
        answer = ws.response.headers["Sec-WebSocket-Extensions"]
        assert answer == "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12"
        ws.send("z" * 10000)
        assert ws.recv(TIMEOUT) == "z" * 10000
    result = run(tornws_command("client", "--compress", f"{server.url}/"), stdin="squeeze\n")
    assert "extensions: permessage-deflate" in result.stderr
    assert result.stdout == "squeeze\n"


def test_example_chat_server(start_example: Any) -> None:
    """chat_server.py relays to all but the sender; a client vanishing mid-stream harms none."""
    server = start_example("chat_server")
    with contextlib.ExitStack() as stack:
        a, b, gone = (
            stack.enter_context(connect(f"{server.url}/?name={name}", open_timeout=TIMEOUT))
            for name in ("a", "b", "gone")
        )
        for i in range(50):
            if i == 10:
                gone.socket.close()  # abrupt, mid-stream
            a.send(f"m{i}")
        assert [b.recv(TIMEOUT) for _ in range(50)] == [f"a: m{i}" for i in range(50)]
        b.send("back")
        assert a.recv(TIMEOUT) == "b: back"
    _, log = server.stop()
    assert "Traceback" not in log


def test_example_chat_client_shows_messages_while_typing(tornws_serve: Server) -> None:
    """chat_client.py prints others' messages as they arrive, before its user types anything."""
    client = Interactive(
        [sys.executable, example("chat_client"), f"{tornws_serve.url}/chat/ex?nick=me"]
    )
    try:
        client.out.expect("Connected to chat server")
        client.out.expect("Received: * you are me in ex")
        with connect(f"{tornws_serve.url}/chat/ex?nick=other", open_timeout=TIMEOUT) as other:
            client.out.expect("Received: * other joined")
            other.send("are you there?")
            client.out.expect("Received: other: are you there?")  # nothing typed yet
            client.send("yes")
            other.recv(TIMEOUT)  # its welcome line
            assert other.recv(TIMEOUT) == "me: yes"
        assert client.finish() == 0
        client.out.expect("Connection to server closed.")
    finally:
        client.kill()


def test_example_embed(start_example: Any) -> None:
    """embed.py: the host app's login (signed cookie) is the chat nick on /ws/chat."""
    server = start_example("embed")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", "/login?name=ann")
    response = conn.getresponse()
    assert response.status == 302
    cookie = response.getheader("Set-Cookie", "").split(";")[0]
    conn.close()
    with connect(
        f"{server.url}/ws/chat/lobby", additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
    ) as ws:
        assert ws.recv(TIMEOUT) == "* you are ann in lobby; here: ann"


def test_example_live_server(start_example: Any) -> None:
    """live_server.py: anyone subscribes, only a signed-in user publishes, staff.* is staff
    only; a publication reaches the subscriber."""
    import json

    import tornado.web

    server = start_example("live_server")
    cookie = tornado.web.create_signed_value("change me", "user", "ann").decode()

    def command(ws: Any, ident: int, kind: str, **fields: Any) -> Any:
        ws.send(json.dumps({"id": ident, "type": kind, **fields}))
        while True:
            reply = json.loads(ws.recv(TIMEOUT))
            if reply.get("id") == ident:
                return reply

    url = f"{server.url}/live"
    with (
        connect(url, subprotocols=["tornws.v1"], open_timeout=TIMEOUT) as anonymous,
        connect(
            url,
            subprotocols=["tornws.v1"],
            additional_headers={"Cookie": f"user={cookie}"},
            open_timeout=TIMEOUT,
        ) as ann,
    ):
        assert "result" in command(anonymous, 1, "subscribe", channel="news")
        refused = command(anonymous, 2, "publish", channel="news", data=1)
        assert refused["error"]["code"] == "forbidden"
        assert command(ann, 1, "subscribe", channel="staff.room")["error"]["code"] == "forbidden"
        assert command(ann, 2, "publish", channel="news", data="hi")["result"]["offset"] == 1
        assert json.loads(anonymous.recv(TIMEOUT))["data"] == "hi"


def test_example_publishing(start_example: Any) -> None:
    """publishing.py: an HTTP handler publishes to "orders" and answers its position; a
    worker thread publishes the time to "clock" once a second."""
    import json

    server = start_example("publishing")
    with connect(f"{server.url}/live", subprotocols=["tornws.v1"], open_timeout=TIMEOUT) as ws:
        for ident, channel in ((1, "orders"), (2, "clock")):
            ws.send(json.dumps({"id": ident, "type": "subscribe", "channel": channel}))
        replies = [json.loads(ws.recv(TIMEOUT)) for _ in range(2)]
        assert [r["id"] for r in replies] == [1, 2]
        request = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        request.request("POST", "/orders", body=b'{"item": "tea"}')
        answer = json.loads(request.getresponse().read())
        request.close()
        epoch, offset = answer["published"].split(":")
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + TIMEOUT
        while len(seen) < 2 and time.monotonic() < deadline:
            push = json.loads(ws.recv(TIMEOUT))
            seen.setdefault(push["channel"], push)
        assert (seen["orders"]["epoch"], seen["orders"]["offset"]) == (epoch, int(offset))
        assert seen["orders"]["data"] == {"item": "tea"}
        assert isinstance(seen["clock"]["data"]["time"], int)


def test_example_worker_publishes_through_redis(start_server: Any) -> None:
    """worker.py: a process with no event loop publishes through Redis to a tornws serve
    --broker; it prints the position, the subscriber gets the data, ann her notice."""
    import json

    from services import REDIS, Redis

    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    pytest.importorskip("redis", reason="pip install 'tornws[redis]'")
    redis = Redis()
    try:
        port = free_port()
        server = start_server(
            [
                *tornws_command("serve", "--port", str(port), "--broker", redis.url),
                *("--app", "tests.user_app:make_app"),
            ],
            port,
        )
        live = f"{server.url}/live"
        with (
            connect(live, subprotocols=["tornws.v1"], open_timeout=TIMEOUT) as ws,
            connect(f"{live}?user=ann", subprotocols=["tornws.v1"], open_timeout=TIMEOUT) as ann,
        ):
            ws.send(json.dumps({"id": 1, "type": "subscribe", "channel": "orders"}))
            assert json.loads(ws.recv(TIMEOUT))["id"] == 1
            result = run(
                [sys.executable, example("worker"), redis.url, "orders", '{"item": "tea"}'],
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            push = json.loads(ws.recv(TIMEOUT))
            assert f"{push['epoch']}:{push['offset']}" == result.stdout.strip()
            assert push["data"] == {"item": "tea"}
            assert json.loads(ann.recv(TIMEOUT))["data"] == {"your order": {"item": "tea"}}
    finally:
        redis.stop()
