"""/live over real sockets: the tornws.v1 commands, their errors, resume, presence, limits."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import tornado.httpclient
import tornado.web

import tornws
from tornws.live import LiveHandler

from wsclient import nothing_more, recv_json


class Live:
    """A tornws.v1 client: numbered commands, replies matched by id, pushes kept in order."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []

    async def command(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a command; return its reply (pushes that arrive first are kept)."""
        self.next_id += 1
        ident = self.next_id
        await self.connection.write_message(json.dumps({"id": ident, "type": kind, **fields}))
        return await self.reply(ident)

    async def reply(self, ident: int | None) -> dict[str, Any]:
        while True:
            message = await recv_json(self.connection)
            if "id" in message:
                assert message["id"] == ident, message
                return message
            self.pushes.append(message)

    async def push(self) -> dict[str, Any]:
        """The next push (one kept earlier, or the next to arrive)."""
        if self.pushes:
            return self.pushes.pop(0)
        message = await recv_json(self.connection)
        assert "id" not in message, message
        return message


@pytest.fixture
def live(ws_url: str, ws_connect: Any) -> Any:
    async def connect(path: str = "/live", **kwargs: Any) -> Live:
        connection = await ws_connect(f"{ws_url}{path}", subprotocols=["tornws.v1"], **kwargs)
        assert connection.selected_subprotocol == "tornws.v1"
        return Live(connection)

    return connect


@pytest.mark.gen_test
async def test_live_subscribe_publish_and_receive(live: Any) -> None:
    """Two subscribers of a channel receive each publication once, as a pub push with the
    channel, epoch and consecutive offsets; the publisher, subscribed, receives its own;
    subscribe answers the channel's latest position."""
    ann, bob = await live(), await live()
    first = await ann.command("subscribe", channel="news")
    assert set(first["result"]) == {"epoch", "offset"} and first["result"]["offset"] == 0
    await bob.command("subscribe", channel="news")
    one = await ann.command("publish", channel="news", data={"title": "héllo", "n": [1, 2]})
    two = await bob.command("publish", channel="news", data="second")
    epoch = first["result"]["epoch"]
    assert one["result"] == {"epoch": epoch, "offset": 1}
    assert two["result"] == {"epoch": epoch, "offset": 2}
    for client in (ann, bob):
        assert await client.push() == {
            "type": "pub",
            "channel": "news",
            "epoch": epoch,
            "offset": 1,
            "data": {"title": "héllo", "n": [1, 2]},
        }
        assert (await client.push())["data"] == "second"
    again = await bob.command("subscribe", channel="other")
    assert again["result"]["offset"] == 0


@pytest.mark.gen_test
async def test_live_publisher_not_subscribed_gets_no_push(live: Any) -> None:
    """A publisher that is not subscribed gets its result but no push; subscribers get it."""
    sub, pub = await live(), await live()
    await sub.command("subscribe", channel="feed")
    result = await pub.command("publish", channel="feed", data=1)
    assert result["result"]["offset"] == 1
    assert (await sub.push())["data"] == 1
    assert await nothing_more(pub.connection)


@pytest.mark.gen_test
async def test_live_many_channels_on_one_connection(live: Any) -> None:
    """One connection follows several channels; each push names its channel; after
    unsubscribe the channel's publications stop and the others go on."""
    reader, writer = await live(), await live()
    for channel in ("a", "b", "c"):
        assert "result" in await reader.command("subscribe", channel=channel)
    for channel in ("a", "b", "c"):
        await writer.command("publish", channel=channel, data=channel)
    assert [(await reader.push())["channel"] for _ in range(3)] == ["a", "b", "c"]
    assert await reader.command("unsubscribe", channel="b") == {"id": 4, "result": {}}
    for channel in ("a", "b", "c"):
        await writer.command("publish", channel=channel, data=channel)
    assert [(await reader.push())["data"] for _ in range(2)] == ["a", "c"]
    assert await nothing_more(reader.connection)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"type": "subscribe", "channel": "x"}', "bad_request"),
        ('{"id": "7", "type": "subscribe", "channel": "x"}', "bad_request"),
        ('{"id": true, "type": "subscribe", "channel": "x"}', "bad_request"),
    ],
)
async def test_live_frames_without_an_integer_id_get_id_null(
    live: Any, frame: str, code: str
) -> None:
    """A frame that is not a JSON object with an integer id: bad_request with id null;
    the connection stays open."""
    client = await live()
    await client.connection.write_message(frame)
    reply = await client.reply(None)
    assert reply["error"]["code"] == code and reply["error"]["message"]
    assert "result" in await client.command("subscribe", channel="still-open")


@pytest.mark.gen_test
async def test_live_binary_frame_is_bad_request(live: Any) -> None:
    client = await live()
    await client.connection.write_message(b"\x00\x01", binary=True)
    assert (await client.reply(None))["error"]["code"] == "bad_request"
    assert "result" in await client.command("presence", channel="x")


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"type": "dance"}, "unknown_type"),
        ({"type": None}, "unknown_type"),
        ({"type": "subscribe"}, "bad_channel"),
        ({"type": "subscribe", "channel": ""}, "bad_channel"),
        ({"type": "subscribe", "channel": "x" * 129}, "bad_channel"),
        ({"type": "subscribe", "channel": "sp ace"}, "bad_channel"),
        ({"type": "subscribe", "channel": "#ann"}, "forbidden"),  # another user's
        ({"type": "subscribe", "channel": "##ann"}, "bad_channel"),
        ({"type": "publish", "channel": "#ann", "data": 1}, "forbidden"),
        ({"type": "publish", "channel": "a/b", "data": 1}, "bad_channel"),
        ({"type": "publish", "channel": "ok"}, "bad_request"),
        ({"type": "subscribe", "channel": "ok", "since": 5}, "bad_request"),
        ({"type": "subscribe", "channel": "ok", "since": "nonsense"}, "bad_request"),
        ({"type": "subscribe", "channel": "ok", "presence": "yes"}, "bad_request"),
        ({"type": "unsubscribe", "channel": "never"}, "not_subscribed"),
    ],
)
async def test_live_command_errors_keep_the_connection(
    live: Any, fields: dict[str, Any], code: str
) -> None:
    """Each bad command gets its error code and a message for people, with its id; the
    connection stays open and serves the next command."""
    client = await live()
    reply = await client.command(**{"kind": fields.pop("type"), **fields})
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert "result" in await client.command("subscribe", channel="after")


@pytest.mark.gen_test
async def test_live_already_subscribed_and_the_cap(live: Any) -> None:
    """A second subscribe to a channel is already_subscribed; past 100 subscriptions,
    too_many_subscriptions; an unsubscribe frees a place."""
    client = await live()
    assert "result" in await client.command("subscribe", channel="c0")
    assert (await client.command("subscribe", channel="c0"))["error"]["code"] == (
        "already_subscribed"
    )
    for i in range(1, 100):
        assert "result" in await client.command("subscribe", channel=f"c{i}")
    refused = await client.command("subscribe", channel="c100")
    assert refused["error"]["code"] == "too_many_subscriptions"
    assert "100" in refused["error"]["message"]
    await client.command("unsubscribe", channel="c5")
    assert "result" in await client.command("subscribe", channel="c100")


@pytest.mark.gen_test
async def test_live_resume_gets_exactly_what_was_missed(live: Any) -> None:
    """subscribe with since=<epoch>:<offset> answers recovered: true with exactly the
    publications after it, in order, then live ones follow without a duplicate."""
    reader, writer = await live(), await live()
    await reader.command("subscribe", channel="log")
    for i in range(3):
        await writer.command("publish", channel="log", data=i)
    seen = [await reader.push() for _ in range(3)]
    reader.connection.close()
    for i in range(3, 6):
        await writer.command("publish", channel="log", data=i)
    back = await live()
    last = seen[1]  # as if the last one it saw was offset 2
    reply = await back.command("subscribe", channel="log", since=f"{last['epoch']}:2")
    result = reply["result"]
    assert result["recovered"] is True and result["offset"] == 6
    assert [p["offset"] for p in result["publications"]] == [3, 4, 5, 6]
    assert [p["data"] for p in result["publications"]] == [2, 3, 4, 5]
    assert all(p["type"] == "pub" and p["channel"] == "log" for p in result["publications"])
    await writer.command("publish", channel="log", data="live")
    assert (await back.push())["offset"] == 7
    assert await nothing_more(back.connection)


@pytest.mark.gen_test
async def test_live_resume_that_cannot_be_proven_is_recovered_false(live: Any) -> None:
    """Another epoch, or an offset from the future: recovered false and no publications
    (never a partial list); the subscription is live anyway."""
    writer = await live()
    await writer.command("publish", channel="gone", data=1)
    client = await live()
    for since in ("00000000:0", "ffffffff:5"):
        reply = await client.command("subscribe", channel="gone", since=since)
        assert reply["result"]["recovered"] is False
        assert "publications" not in reply["result"]
        await client.command("unsubscribe", channel="gone")
    current = await client.command("subscribe", channel="gone")
    epoch = current["result"]["epoch"]
    await client.command("unsubscribe", channel="gone")
    future = await client.command("subscribe", channel="gone", since=f"{epoch}:99")
    assert future["result"]["recovered"] is False


@pytest.mark.gen_test
async def test_live_resume_with_nothing_missed_is_recovered_true_and_empty(live: Any) -> None:
    client = await live()
    first = await client.command("publish", channel="quiet", data=1)
    position = f"{first['result']['epoch']}:{first['result']['offset']}"
    reply = await client.command("subscribe", channel="quiet", since=position)
    assert reply["result"]["recovered"] is True and reply["result"]["publications"] == []


@pytest.mark.gen_test
async def test_live_presence_count_members_and_pushes(live: Any) -> None:
    """presence answers count and members (connection id, user, info); join and leave
    pushes reach only the subscriptions that asked for them."""
    watcher = await live()
    await watcher.command("subscribe", channel="room", presence=True)
    own = await watcher.push()  # its own join
    assert own["type"] == "join"
    quiet = await live()
    await quiet.command("subscribe", channel="room")
    joined = await watcher.push()
    assert joined["type"] == "join" and joined["channel"] == "room"
    assert [m["user"] for m in joined["members"]] == [None]
    reply = await quiet.command("presence", channel="room")
    assert reply["result"]["count"] == 2
    ids = {m["id"] for m in reply["result"]["members"]}
    assert joined["members"][0]["id"] in ids and len(ids) == 2
    assert all(set(m) == {"id", "user", "info"} for m in reply["result"]["members"])
    quiet.connection.close()
    left = await watcher.push()
    assert (left["type"], left["members"][0]["id"]) == ("leave", joined["members"][0]["id"])
    assert (await watcher.command("presence", channel="room"))["result"]["count"] == 1


@pytest.mark.gen_test(timeout=20)
async def test_live_join_storm_is_coalesced(live: Any) -> None:
    """Fifty subscriptions joining at once reach a presence listener in a few pushes,
    not fifty, and every join is in them."""
    watcher = await live()
    await watcher.command("subscribe", channel="storm", presence=True)
    own = await watcher.push()  # a listener hears its own join too
    assert own["type"] == "join" and len(own["members"]) == 1
    clients = [await live() for _ in range(50)]
    for client in clients:
        await client.command("subscribe", channel="storm")
    members: list[str] = []
    pushes = 0
    while len(members) < 50:
        push = await watcher.push()
        assert push["type"] == "join"
        members += [m["id"] for m in push["members"]]
        pushes += 1
    assert len(set(members)) == 50 and pushes <= 5


class Guarded(LiveHandler):
    """Only users may publish; nobody sees presence of "secret"; and info is attached."""

    def get_current_user(self) -> Any:
        return self.get_query_argument("user", None)

    def member_info(self) -> Any:
        return {"color": "teal"}


def guard(user: Any, channel: str, action: str) -> bool:
    if action == "publish":
        return user is not None
    return not (action == "presence" and channel == "secret")


class TestAuthorization:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornado.web.Application(
            [(r"/live", Guarded, {"registry": registry, "authorizer": guard})],
            **{"tornws.registry": registry},
        )

    @pytest.mark.gen_test
    async def test_the_hook_is_asked_per_channel_and_action(self, live: Any) -> None:
        """The authorizer sees the user, the channel and the action of every command;
        a refusal is forbidden and the connection stays open; member_info shows in
        presence."""
        anonymous, ann = await live(), await live("/live?user=ann")
        assert "result" in await anonymous.command("subscribe", channel="secret")
        refused = await anonymous.command("publish", channel="secret", data=1)
        assert refused["error"]["code"] == "forbidden"
        assert "result" in await ann.command("publish", channel="secret", data=1)
        assert (await anonymous.push())["data"] == 1
        hidden = await ann.command("presence", channel="secret")
        assert hidden["error"]["code"] == "forbidden"
        await ann.command("subscribe", channel="open")
        shown = await anonymous.command("presence", channel="open")
        assert shown["result"]["members"][0]["user"] == "ann"
        assert shown["result"]["members"][0]["info"] == {"color": "teal"}


@pytest.mark.gen_test
async def test_live_requires_its_subprotocol(http_url: str) -> None:
    """No subprotocol, or only unknown ones: HTTP 400 naming tornws.v1."""
    client = tornado.httpclient.AsyncHTTPClient()
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    for offer in (None, "chat, mqtt"):
        if offer:
            headers["Sec-WebSocket-Protocol"] = offer
        response = await client.fetch(f"{http_url}/live", headers=headers, raise_error=False)
        assert response.code == 400
        assert b"tornws.v1" in response.body


@pytest.mark.gen_test
async def test_live_channel_and_chat_room_side_by_side(
    live: Any, ws_url: str, ws_connect: Any
) -> None:
    """A channel and a chat room of the same name are separate: neither hears the other."""
    client = await live()
    await client.command("subscribe", channel="lobby")
    chat = await ws_connect(f"{ws_url}/chat/lobby?nick=ann")
    await chat.read_message()  # the welcome line
    await chat.write_message("hello room")
    await client.command("publish", channel="lobby", data="hello channel")
    assert (await client.push())["data"] == "hello channel"
    assert await nothing_more(client.connection)
    assert await nothing_more(chat)


@pytest.mark.gen_test
async def test_live_subscribers_are_on_the_direct_path(live: Any, registry: Any) -> None:
    """A channel's subscriptions are delivered by the registry's direct fan-out once
    their subscribe is answered."""
    clients = [await live() for _ in range(3)]
    for client in clients:
        await client.command("subscribe", channel="fast")
    plan = registry._rooms["live:fast"].get_plan()  # white box: the delivery plan itself
    assert sum(len(group.senders) for group in plan.direct) == 3 and plan.others == ()


class TestWhatEveryHandlerGuarantees:
    """/live is a tornws handler like the others: origin, message size, rate limit,
    logging and drain apply to it, through the same options."""

    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornws.make_app(
            registry=registry,
            handler_options={"rate_limit": (30, 1.0), "origins": ["https://app.example"]},
        )

    @pytest.mark.gen_test(timeout=20)
    async def test_origin_rate_logging_and_drain(
        self, live: Any, ws_url: str, node: tornws.Node, caplog: Any
    ) -> None:
        caplog.set_level(logging.INFO)
        request = tornado.httpclient.HTTPRequest(
            f"{ws_url}/live",
            headers={"Origin": "https://evil.example", "Sec-WebSocket-Protocol": "tornws.v1"},
        )
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await tornado.websocket.websocket_connect(request)
        assert refused.value.code == 403
        assert node.stats.rejections == {"origin": 1}

        reader, flood = await live(), await live()
        await reader.command("subscribe", channel="news")
        for i in range(60):  # over 30 a second: closed 1008, the reader unaffected
            flood.connection.write_message(
                json.dumps({"id": i, "type": "presence", "channel": "x"})
            )
        while (await flood.connection.read_message()) is not None:
            pass
        assert flood.connection.close_code == 1008
        assert node.stats.rate_limited == 1
        await reader.command("publish", channel="news", data="still here")
        assert (await reader.push())["data"] == "still here"
        assert any("open /live" in r.getMessage() for r in caplog.records)

        # Drain: what was published is flushed, then 1001.
        for i in range(20):
            await reader.command("publish", channel="news", data=i)
        assert await tornws.drain(node, window=0.2, timeout=5) == 1
        got = []
        while (message := await reader.connection.read_message()) is not None:
            got.append(json.loads(message))
        pushes = reader.pushes + got
        assert [p["data"] for p in pushes] == list(range(20))
        assert reader.connection.close_code == 1001


class TestLiveMessageSize:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        return tornado.web.Application(
            tornws.routes(registry=registry, live={"max_message_size": 512})
        )

    @pytest.mark.gen_test
    async def test_a_command_over_the_size_limit_is_closed_1009(self, live: Any) -> None:
        client = await live()
        big = json.dumps({"id": 1, "type": "publish", "channel": "x", "data": "x" * 600})
        client.connection.write_message(big)
        assert await client.connection.read_message() is None
        assert client.connection.close_code == 1009
        again = await live()  # the server goes on
        assert "result" in await again.command("publish", channel="x", data="small")
