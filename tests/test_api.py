"""The HTTP server API (tornws.api) over real sockets: keys, bodies, every endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import tornado.httpclient

import tornws

from wsclient import recv_json, recv_until_closed

KEY = "an api key for the tests, long enough"


def user_from_query(handler: Any) -> str | None:
    return handler.get_query_argument("user", None)


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornws.make_app(
        registry=registry, handler_options={"user_loader": user_from_query}, api_key=KEY
    )


async def call(
    http_url: str, path: str, body: Any = None, *, key: str | None = KEY, raw: bytes | None = None
) -> tuple[int, Any]:
    headers = {"X-API-Key": key} if key is not None else {}
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"{http_url}{path}",
        method="POST" if payload is not None else "GET",
        body=payload,
        headers=headers,
        raise_error=False,
    )
    return response.code, json.loads(response.body) if response.body else None


async def live(ws_connect: Any, ws_url: str, user: str | None = None) -> Any:
    query = f"?user={user}" if user else ""
    return await ws_connect(f"{ws_url}/live{query}", subprotocols=["tornws.v1"])


async def subscribe(connection: Any, channel: str) -> dict[str, Any]:
    await connection.write_message(json.dumps({"id": 1, "type": "subscribe", "channel": channel}))
    reply: dict[str, Any] = await recv_json(connection)
    return reply["result"]  # type: ignore[no-any-return]


@pytest.mark.gen_test
async def test_publish_reaches_subscribers_and_says_where(
    http_url: str, ws_url: str, ws_connect: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    reader = await live(ws_connect, ws_url)
    position = await subscribe(reader, "news")
    status, body = await call(http_url, "/api/publish", {"channel": "news", "data": {"n": 1}})
    assert status == 200
    assert body == {"epoch": position["epoch"], "offset": position["offset"] + 1}
    push = await recv_json(reader)
    assert (push["channel"], push["offset"], push["data"]) == ("news", body["offset"], {"n": 1})
    # Broadcast: one publication per channel, in order.
    other = await live(ws_connect, ws_url)
    await subscribe(other, "weather")
    status, body = await call(
        http_url, "/api/broadcast", {"channels": ["news", "weather"], "data": "both"}
    )
    assert status == 200
    assert [p["channel"] for p in body["publications"]] == ["news", "weather"]
    assert (await recv_json(reader))["data"] == "both"
    assert (await recv_json(other))["data"] == "both"
    # Presence and channels.
    status, body = await call(http_url, "/api/presence?channel=news")
    assert status == 200 and body["count"] == 1 and body["members"][0]["user"] is None
    status, body = await call(http_url, "/api/channels")
    assert (status, body) == (200, {"channels": {"news": 1, "weather": 1}})
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in everything and KEY[:12] not in everything


@pytest.mark.gen_test
async def test_a_retried_publish_with_its_idempotency_key_is_published_once(
    http_url: str, ws_url: str, ws_connect: Any
) -> None:
    reader = await live(ws_connect, ws_url)
    await subscribe(reader, "orders")
    request = {"channel": "orders", "data": {"order": 7}, "idempotency_key": "order-7"}
    first = await call(http_url, "/api/publish", request)
    again = await call(http_url, "/api/publish", request)
    assert first[0] == again[0] == 200
    assert (again[1]["epoch"], again[1]["offset"]) == (first[1]["epoch"], first[1]["offset"])
    assert again[1]["repeated"] is True
    other = await call(http_url, "/api/publish", {**request, "idempotency_key": "order-8"})
    assert other[1]["offset"] == first[1]["offset"] + 1
    pushes = [await recv_json(reader) for _ in range(2)]
    assert [p["offset"] for p in pushes] == [first[1]["offset"], other[1]["offset"]]


@pytest.mark.gen_test
async def test_disconnect_and_publish_to_a_user(
    http_url: str, ws_url: str, ws_connect: Any, node: tornws.Node
) -> None:
    ann = await live(ws_connect, ws_url, "ann")
    bob = await live(ws_connect, ws_url, "bob")
    status, body = await call(http_url, "/api/publish", {"channel": "#ann", "data": "hi ann"})
    assert status == 200
    assert (await recv_json(ann))["data"] == "hi ann"
    status, body = await call(http_url, "/api/disconnect", {"user": "ann", "reason": "signed out"})
    assert (status, body) == (200, {})
    await recv_until_closed(ann)
    assert (ann.close_code, ann.close_reason) == (3000, "signed out")
    for _ in range(200):  # (the client sees the close before the server has counted it)
        if "ann" not in node.users():
            break
        await asyncio.sleep(0.01)
    assert node.users() == {"bob": 1}
    await bob.write_message(json.dumps({"id": 5, "type": "presence", "channel": "x"}))
    assert (await recv_json(bob))["id"] == 5  # bob kept his connection, heard nothing of ann's


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("path", "body", "key", "status", "code"),
    [
        ("/api/publish", {"channel": "x", "data": 1}, None, 401, "unauthorized"),
        ("/api/publish", {"channel": "x", "data": 1}, "wrong" * 8, 401, "unauthorized"),
        ("/api/channels", None, None, 401, "unauthorized"),
        ("/api/publish", {"channel": "a/b", "data": 1}, KEY, 400, "bad_channel"),
        ("/api/publish", {"channel": "x"}, KEY, 400, "bad_request"),
        ("/api/publish", [1, 2], KEY, 400, "bad_request"),
        (
            "/api/publish",
            {"channel": "x", "data": 1, "idempotency_key": 5},
            KEY,
            400,
            "bad_request",
        ),
        ("/api/broadcast", {"channels": [], "data": 1}, KEY, 400, "bad_request"),
        ("/api/broadcast", {"channels": ["ok", "a b"], "data": 1}, KEY, 400, "bad_channel"),
        ("/api/disconnect", {"user": ""}, KEY, 400, "bad_request"),
        ("/api/disconnect", {"user": "ann", "code": 1000}, KEY, 400, "bad_request"),
        ("/api/presence?channel=", None, KEY, 400, "bad_channel"),
    ],
)
async def test_bad_requests_get_their_status_and_a_json_error(  # noqa: PLR0917 (parameters)
    http_url: str, path: str, body: Any, key: str | None, status: int, code: str
) -> None:
    got, answer = await call(http_url, path, body, key=key)
    assert got == status, answer
    assert answer["error"]["code"] == code and answer["error"]["message"]


@pytest.mark.gen_test
async def test_malformed_json_and_a_body_over_the_limit(http_url: str) -> None:
    status, answer = await call(http_url, "/api/publish", raw=b"{not json")
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    big = json.dumps({"channel": "x", "data": "x" * (64 * 1024)}).encode()
    status, answer = await call(http_url, "/api/publish", raw=big)
    assert (status, answer["error"]["code"]) == (413, "too_large")


class TestNotEnabled:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornws.make_app(registry=registry)

    @pytest.mark.gen_test
    async def test_without_a_key_the_api_is_404(self, http_url: str) -> None:
        status, answer = await call(http_url, "/api/publish", {"channel": "x", "data": 1})
        assert (status, answer["error"]["code"]) == (404, "not_found")
        assert "--api-key" in answer["error"]["message"]
