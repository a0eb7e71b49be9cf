"""Embedding: tornws routes inside an existing Tornado app, sharing its auth and settings."""

from __future__ import annotations

import re
from typing import Any

import pytest
import tornado.httpclient
import tornado.web

import tornws

from wsclient import recv, recv_json

COOKIE_SECRET = "test-secret-not-for-production"


class BaseHandler(tornado.web.RequestHandler):
    """The host app's own authentication: a signed ``user`` cookie."""

    def get_current_user(self) -> str | None:
        user = self.get_signed_cookie("user")
        return user.decode() if user else None


class MainHandler(BaseHandler):
    def get(self) -> None:
        self.write(f"host app, user={self.current_user}")


class LoginHandler(BaseHandler):
    def get(self) -> None:
        self.set_signed_cookie("user", self.get_query_argument("name"))
        self.write("ok")


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    application = tornado.web.Application(
        [(r"/", MainHandler), (r"/login", LoginHandler)], cookie_secret=COOKIE_SECRET
    )
    added = tornws.add_routes(
        application, "/ws", user_loader=BaseHandler.get_current_user, page=True
    )
    assert added is tornws.Registry.for_application(application)
    return application


@pytest.mark.gen_test
async def test_host_handlers_and_tornws_routes_share_a_port(
    http_url: str, ws_url: str, ws_connect: Any
) -> None:
    """The host's RequestHandler and tornws's WebSocket routes answer on one port."""
    client = tornado.httpclient.AsyncHTTPClient()
    page = await client.fetch(f"{http_url}/")
    assert page.body == b"host app, user=None"
    connection = await ws_connect(f"{ws_url}/ws/echo")
    await connection.write_message("embedded")
    assert await recv(connection) == "embedded"
    missing = await client.fetch(f"{http_url}/echo", raise_error=False)
    assert missing.code == 404  # only under the prefix


@pytest.mark.gen_test
async def test_chat_nick_comes_from_the_host_login(
    http_url: str, ws_url: str, ws_connect: Any
) -> None:
    """A user logged in by the host app (signed cookie) is the chat nick; ?nick= cannot override."""
    client = tornado.httpclient.AsyncHTTPClient()
    login = await client.fetch(f"{http_url}/login?name=alice")
    cookie = login.headers["Set-Cookie"].split(";")[0]
    request = tornado.httpclient.HTTPRequest(
        f"{ws_url}/ws/chat/room1?nick=mallory", headers={"Cookie": cookie}
    )
    connection = await ws_connect(request, subprotocols=["chat.json"])
    presence = await recv_json(connection)
    assert presence["members"] == ["alice"]
    anonymous = await ws_connect(f"{ws_url}/ws/chat/room1?nick=bob", subprotocols=["chat.json"])
    assert (await recv_json(anonymous))["members"] == ["alice", "bob"]


def test_routes_prefix_is_checked() -> None:
    """A prefix must be empty or /like/this; the error says so."""
    assert [spec.regex.pattern for spec in tornws.routes("/x")][:2] == ["/x/echo$", "/x/broadcast$"]
    for bad in ["x", "/x/"]:
        with pytest.raises(ValueError, match="start with '/' and not end with '/'"):
            tornws.routes(bad)


def test_routes_share_one_registry_per_application() -> None:
    """Two add_routes calls on one app share its registry unless told otherwise."""
    application = tornado.web.Application()
    first = tornws.add_routes(application, "/a")
    assert tornws.add_routes(application, "/b") is first
    separate = tornws.Registry()
    assert tornws.add_routes(application, "/c", registry=separate) is separate


@pytest.mark.gen_test
async def test_chat_page_under_the_prefix_knows_the_signed_in_user(http_url: str) -> None:
    """``page=True``: the page at ``<prefix>/`` talks to ``<prefix>/chat``, its files are served
    under the prefix, and a signed-in user's name is the nick (read-only, HTML-escaped)."""
    client = tornado.httpclient.AsyncHTTPClient()
    login = await client.fetch(f"{http_url}/login?name=%3Cann%3E")
    cookie = login.headers["Set-Cookie"].split(";")[0]
    page = await client.fetch(f"{http_url}/ws/", headers={"Cookie": cookie})
    body = page.body.decode()
    assert 'data-chat-path="/ws/chat"' in body
    assert 'data-user="&lt;ann&gt;"' in body and 'value="&lt;ann&gt;" readonly' in body
    assert "<ann>" not in body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assets = re.findall(r'(?:src|href)="(/ws/_tornws/[^"]+)"', body)
    assert {a.split("?")[0] for a in assets} == {"/ws/_tornws/chat.css", "/ws/_tornws/chat.js"}
    types = {"css": "text/css", "js": "text/javascript"}
    for asset in [*assets, "/ws/_tornws/tornws.js"]:
        response = await client.fetch(f"{http_url}{asset}")
        assert response.headers["Content-Type"] == types[asset.split("?")[0].rsplit(".", 1)[1]]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    anonymous = await client.fetch(f"{http_url}/ws/")
    assert 'data-user=""' in anonymous.body.decode()
    outside = await client.fetch(f"{http_url}/ws/_tornws/../page.py", raise_error=False)
    assert outside.code in (403, 404)
