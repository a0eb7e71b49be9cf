"""Writing your own handler on tornws.WebSocketHandler, the way Tornado users do."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import tornado.httpclient
import tornado.web

import tornws

from wsclient import recv


class GreeterHandler(tornws.WebSocketHandler):
    """Its own initialize(), without super().initialize(): defaults must still hold."""

    def initialize(self, greeting: str) -> None:
        self.greeting = greeting

    def open(self) -> None:
        self.registry.join("greeters", self)
        self.write_message(f"{self.greeting} ({self.max_message_size})")

    def on_message(self, message: str | bytes) -> None:
        self.registry.publish("greeters", tornws.Message(message))


class TunedHandler(tornws.WebSocketHandler):
    """Options as class attributes, its own initialize() without super(): they hold."""

    max_outgoing = 4096
    idle_timeout = 30.0

    def initialize(self) -> None:
        pass

    def open(self) -> None:
        self.write_message(f"{self.max_outgoing} {self.idle_timeout} {self.slow_consumer}")


class MainRoomChat(tornws.ChatHandler):
    """A chat whose default room is a class attribute, initialize() without super()."""

    default_room = "main"

    def initialize(self) -> None:
        pass


class VersionedHandler(tornws.WebSocketHandler):
    """Declares subprotocols with versions; requires one."""

    subprotocols = ("v2.api", "v1.api")
    subprotocol_required = True

    def open(self) -> None:
        self.write_message(f"speaking {self.selected_subprotocol}")


class QuietHandler(tornws.BroadcastHandler):
    """Overrides deliver (skips messages that start with "#"): it must be called for each."""

    def deliver(self, envelope: tornws.Envelope) -> None:
        message = envelope.payload
        if not (isinstance(message, tornws.Message) and message.payload.startswith(b"#")):
            super().deliver(envelope)


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornado.web.Application(
        [
            (r"/greet", GreeterHandler, {"greeting": "hello"}),
            (r"/tuned", TunedHandler),
            (r"/main", MainRoomChat),
            (r"/api", VersionedHandler),
            (r"/quiet", QuietHandler, {"room": "mixed"}),
            (r"/loud", tornws.BroadcastHandler, {"room": "mixed"}),
        ],
        **{"tornws.registry": registry},
    )


@pytest.mark.gen_test
async def test_subclass_without_super_initialize(
    ws_url: str, ws_connect: Any, registry: tornws.Registry, node: tornws.Node
) -> None:
    """A handler with its own initialize() gets the default registry, limits and cleanup."""
    first = await ws_connect(f"{ws_url}/greet")
    second = await ws_connect(f"{ws_url}/greet")
    assert await recv(first) == "hello (1048576)"
    await recv(second)
    await first.write_message("to all")
    assert await recv(first) == "to all" and await recv(second) == "to all"
    assert len(registry.members("greeters")) == 2
    first.close()
    second.close()
    for _ in range(200):
        if not node.connections:
            break
        await asyncio.sleep(0.01)
    assert registry.rooms() == [] and node.connections == set()


@pytest.mark.gen_test
async def test_options_set_as_class_attributes_hold(ws_url: str, ws_connect: Any) -> None:
    """A subclass's class attributes (max_outgoing, idle_timeout, a chat's default_room)
    are what its connections use when its initialize() does not call super()."""
    tuned = await ws_connect(f"{ws_url}/tuned")
    assert await recv(tuned) == "4096 30.0 close"
    chat = await ws_connect(f"{ws_url}/main", subprotocols=["chat"])
    greeting = await recv(chat)
    assert greeting.startswith("* you are guest-") and " in main; here: " in greeting, greeting
    tuned.close()
    chat.close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("offered", "answer"),
    [(["v1.api"], "speaking v1.api"), (["v1.api", "v2.api"], "speaking v2.api")],
)
async def test_declared_subprotocols(
    ws_url: str, ws_connect: Any, offered: list[str], answer: str
) -> None:
    """The most preferred declared subprotocol that the client offers is selected."""
    connection = await ws_connect(f"{ws_url}/api", subprotocols=offered)
    assert await recv(connection) == answer


@pytest.mark.gen_test
async def test_required_subprotocol_missing_is_400(
    ws_url: str, ws_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No subprotocol offered to a handler that requires one: 400 naming the choices, logged."""
    caplog.set_level(logging.INFO, logger="tornws.handlers")
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{ws_url}/api")
    assert info.value.code == 400
    assert info.value.response is not None
    assert info.value.response.body == (
        b"a subprotocol is required; this endpoint supports: v2.api, v1.api\n"
    )
    assert "refused /api peer=127.0.0.1 status=400 reason='a subprotocol is required" in (
        caplog.text
    )


@pytest.mark.gen_test
async def test_refusals_are_logged_with_a_reason(
    ws_url: str, http_url: str, ws_connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Tornado's own refusals (bad origin, plain GET) are logged by tornws with why."""
    caplog.set_level(logging.INFO, logger="tornws.handlers")
    request = tornado.httpclient.HTTPRequest(
        f"{ws_url}/greet", headers={"Origin": "http://other.example"}
    )
    with pytest.raises(tornado.httpclient.HTTPClientError):
        await ws_connect(request)
    await tornado.httpclient.AsyncHTTPClient().fetch(f"{http_url}/greet", raise_error=False)
    assert "status=403 reason=\"origin 'http://other.example' not allowed\"" in caplog.text
    assert "status=400 reason='not a WebSocket upgrade request'" in caplog.text


@pytest.mark.gen_test
async def test_an_overridden_deliver_is_called_beside_the_fast_path(
    ws_url: str, ws_connect: Any
) -> None:
    """In one room, plain BroadcastHandlers (delivered directly by the registry) and a
    subclass that filters in deliver(): each gets what its class says."""
    quiet = await ws_connect(f"{ws_url}/quiet")
    loud = await ws_connect(f"{ws_url}/loud")
    await loud.write_message("ready")  # both are members once it comes back to both
    assert await recv(loud) == "ready"
    assert await recv(quiet) == "ready"
    for text in ("#hidden", "shown"):
        await loud.write_message(text)
    assert [await recv(loud), await recv(loud)] == ["#hidden", "shown"]
    assert await recv(quiet) == "shown"
