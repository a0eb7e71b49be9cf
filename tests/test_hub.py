"""Publishing from the application's own code (tornws.Hub), users' channels and disconnects,
over real sockets in one process."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import tornado.web

import tornws

from wsclient import recv, recv_json, recv_until_closed


def user_from_query(handler: Any) -> str | None:
    """The test's sign-in: ``?user=<name>`` (a real app reads its session)."""
    return handler.get_query_argument("user", None)


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornado.web.Application(
        tornws.routes(registry=registry, user_loader=user_from_query),
        **{"tornws.registry": registry},
    )


@pytest.fixture
def hub(app: Any) -> tornws.Hub:
    return tornws.Hub.for_application(app)


async def live(ws_connect: Any, ws_url: str, user: str | None = None) -> Any:
    query = f"?user={user}" if user else ""
    return await ws_connect(f"{ws_url}/live{query}", subprotocols=["tornws.v1"])


async def command(connection: Any, ident: int, kind: str, **fields: Any) -> dict[str, Any]:
    await connection.write_message(json.dumps({"id": ident, "type": kind, **fields}))
    while True:
        reply = await recv_json(connection)
        if reply.get("id") == ident:
            return reply


async def until_registered(hub: tornws.Hub, user: str, count: int) -> None:
    for _ in range(200):
        if hub.users().get(user) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{user} has {hub.users().get(user)} connections, not {count}")


@pytest.mark.gen_test
async def test_hub_publishes_to_a_channel_numbered_with_the_clients(
    hub: tornws.Hub, ws_connect: Any, ws_url: str
) -> None:
    """hub.publish: a pub push to every subscriber, numbered in the same sequence as a
    client's publication; the position's str() is what a since takes."""
    reader = await live(ws_connect, ws_url)
    subscribed = (await command(reader, 1, "subscribe", channel="news"))["result"]
    first = await hub.publish("news", {"title": "from the app"})
    assert isinstance(first, tornws.Position)
    assert (first.epoch, first.offset) == (subscribed["epoch"], subscribed["offset"] + 1)
    assert str(first) == f"{first.epoch}:{first.offset}"
    push = await recv_json(reader)
    assert push == {
        "type": "pub",
        "channel": "news",
        "epoch": first.epoch,
        "offset": first.offset,
        "data": {"title": "from the app"},
    }
    by_client = (await command(reader, 2, "publish", channel="news", data=2))["result"]
    assert by_client["offset"] == first.offset + 1
    # A later subscriber resumes across it.
    late = await live(ws_connect, ws_url)
    resumed = await command(late, 1, "subscribe", channel="news", since=f"{first.epoch}:0")
    assert [p["data"] for p in resumed["result"]["publications"]][:1] == [{"title": "from the app"}]
    with pytest.raises(ValueError, match="invalid channel"):
        await hub.publish("a/b", 1)
    with pytest.raises(ValueError, match="not JSON"):
        await hub.publish("news", object())
    assert await hub.channels() == {"news": 2}


@pytest.mark.gen_test
async def test_hub_say_posts_to_a_chat_room(hub: tornws.Hub, ws_connect: Any, ws_url: str) -> None:
    plain = await ws_connect(f"{ws_url}/chat/lobby?nick=ann", subprotocols=["chat"])
    assert await recv(plain) == "* you are ann in lobby; here: ann"
    position = await hub.say("lobby", "the deploy is done")
    assert await recv(plain) == "server: the deploy is done"
    structured = await ws_connect(
        f"{ws_url}/chat/lobby?nick=bob&since={position.epoch}:{position.offset - 1}",
        subprotocols=["chat.json"],
    )
    events = [await recv_json(structured) for _ in range(3)]
    message = next(e for e in events if e["type"] == "message")
    assert (message["sender"], message["text"], message["id"]) == (
        "server",
        "the deploy is done",
        position.offset,
    )


@pytest.mark.gen_test
async def test_hub_publish_threadsafe_from_worker_threads(
    hub: tornws.Hub, ws_connect: Any, ws_url: str
) -> None:
    """Four threads publish 25 each; every publication arrives once, each thread's in
    its order, and each thread got its positions back. (The hub was made outside the
    loop, as an application does at startup: its first connection binds it.)"""
    assert hub.loop is None
    reader = await live(ws_connect, ws_url)
    await command(reader, 1, "subscribe", channel="jobs")
    positions: dict[int, list[int]] = {}

    def work(worker: int) -> None:
        futures = [hub.publish_threadsafe("jobs", [worker, i]) for i in range(25)]
        positions[worker] = [f.result(timeout=10).offset for f in futures]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    got = [await recv_json(reader) for _ in range(100)]
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join(10) for t in threads])
    for worker in range(4):
        mine = [p for p in got if p["data"][0] == worker]
        assert [p["data"][1] for p in mine] == list(range(25))
        assert [p["offset"] for p in mine] == positions[worker]
    assert sorted(p["offset"] for p in got) == list(range(1, 101))


def test_hub_threadsafe_without_a_loop_says_how() -> None:
    hub = tornws.Hub()  # made outside any loop, never bound
    with pytest.raises(tornws.ConfigError, match="no event loop yet"):
        hub.publish_threadsafe("x", 1)


@pytest.mark.gen_test
async def test_a_users_channel_reaches_all_their_connections_only(
    hub: tornws.Hub, ws_connect: Any, ws_url: str
) -> None:
    """#<user>: subscribed at open on /live, reached by hub.publish; only that user may
    subscribe to it, and re-subscribing with a since resumes it."""
    ann1, ann2 = await live(ws_connect, ws_url, "ann"), await live(ws_connect, ws_url, "ann")
    bob = await live(ws_connect, ws_url, "bob")
    await until_registered(hub, "ann", 2)
    position = await hub.publish("#ann", {"unread": 3})
    for connection in (ann1, ann2):
        push = await recv_json(connection)
        assert (push["channel"], push["data"], push["offset"]) == ("#ann", {"unread": 3}, 1)
    refused = await command(bob, 1, "subscribe", channel="#ann")
    assert refused["error"]["code"] == "forbidden"
    assert (await command(bob, 2, "publish", channel="#ann", data=1))["error"][
        "code"
    ] == "forbidden"
    await hub.publish("#ann", {"unread": 4})
    # ann, back after a reconnect, resumes her channel from what she last saw.
    again = await live(ws_connect, ws_url, "ann")
    resumed = await command(again, 1, "subscribe", channel="#ann", since=str(position))
    assert resumed["result"]["recovered"] is True
    assert [p["data"] for p in resumed["result"]["publications"]] == [{"unread": 4}]
    await hub.publish("#ann", {"unread": 5})
    assert (await recv_json(again))["data"] == {"unread": 5}  # once, not twice
    await bob.write_message(json.dumps({"id": 3, "type": "presence", "channel": "x"}))
    assert (await recv_json(bob))["id"] == 3  # bob got none of ann's pushes


@pytest.mark.gen_test
async def test_disconnect_closes_every_connection_of_the_user_with_3000(
    hub: tornws.Hub, ws_connect: Any, ws_url: str, node: tornws.Node
) -> None:
    ann_live = await live(ws_connect, ws_url, "ann")
    ann_chat = await ws_connect(f"{ws_url}/chat/lobby?user=ann", subprotocols=["chat.json"])
    bob = await live(ws_connect, ws_url, "bob")
    await until_registered(hub, "ann", 2)
    await hub.disconnect("ann")
    for connection in (ann_live, ann_chat):
        await recv_until_closed(connection)
        assert (connection.close_code, connection.close_reason) == (
            tornws.DISCONNECT_CODE,
            "disconnected by the server",
        )
    for _ in range(200):  # (the client sees the close before the server has counted it)
        if "ann" not in hub.users():
            break
        await asyncio.sleep(0.01)
    assert "ann" not in hub.users() and hub.users() == {"bob": 1}
    assert "result" in await command(bob, 1, "subscribe", channel="still")
    with pytest.raises(ValueError, match="3000-4999"):
        await hub.disconnect("bob", code=1000)
