"""The chat over real sockets: subprotocols, rooms, both formats together, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
import tornado.httpclient

from tornws.frames import CloseCode

from wsclient import nothing_more, recv, recv_json, recv_until_closed


async def text_user(
    ws_connect: Any,
    ws_url: str,
    nick: str,
    room: str = "lobby",
    subprotocols: list[str] | None = None,
) -> Any:
    """A plain-text chat user, past its welcome line."""
    connection = await ws_connect(f"{ws_url}/chat/{room}?nick={nick}", subprotocols=subprotocols)
    welcome = await recv(connection)
    assert isinstance(welcome, str) and welcome.startswith(f"* you are {nick} in {room}")
    return connection


async def json_user(ws_connect: Any, ws_url: str, nick: str, room: str = "lobby") -> Any:
    """A chat.json user, past its presence and own join events."""
    connection = await ws_connect(f"{ws_url}/chat/{room}?nick={nick}", subprotocols=["chat.json"])
    presence = await recv_json(connection)
    assert presence["type"] == "presence" and nick in presence["members"]
    assert presence["you"] == nick  # (own join: the first join with that nick)
    join = await recv_json(connection)
    assert join["type"] == "join" and join["nick"] == nick
    return connection


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["chat.json", "chat"], "chat.json"),
        (["chat", "chat.json"], "chat.json"),  # the server's preference wins
        (["chat"], "chat"),
        (["other", "chat"], "chat"),
        (None, None),
    ],
)
async def test_chat_subprotocol_by_server_preference(
    ws_url: str, ws_connect: Any, offered: list[str] | None, selected: str | None
) -> None:
    """The server picks chat.json over chat among what the client offers; no offer → none."""
    connection = await ws_connect(f"{ws_url}/chat", subprotocols=offered)
    assert connection.selected_subprotocol == selected


@pytest.mark.gen_test
async def test_unknown_subprotocols_get_400_listing_supported(http_url: str) -> None:
    """Offering only unknown subprotocols is refused with 400 and a body naming the supported."""
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(
        f"{http_url}/chat",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "xmpp, mqtt",
        },
        raise_error=False,
    )
    assert response.code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert (
        response.body
        == b"unsupported subprotocol xmpp, mqtt; this endpoint supports: chat.json, chat\n"
    )


@pytest.mark.gen_test
async def test_text_users_see_each_others_lines_and_notices(ws_url: str, ws_connect: Any) -> None:
    """Plain text: others get `<nick>: <text>` and `* <nick> joined/left`; not their own."""
    ann = await text_user(ws_connect, ws_url, "ann")
    bob = await text_user(ws_connect, ws_url, "bob")
    assert await recv(ann) == "* bob joined"
    await ann.write_message("hello bob")
    assert await recv(bob) == "ann: hello bob"
    await bob.write_message("hi ann\n")
    assert await recv(ann) == "bob: hi ann"
    assert await nothing_more(ann) and await nothing_more(bob)  # no echo of own lines
    bob.close()
    assert await recv(ann) == "* bob left"


@pytest.mark.gen_test
async def test_welcome_line_names_who_is_here(ws_url: str, ws_connect: Any) -> None:
    """A plain-text user learns its nick, room and who is present on arrival."""
    await text_user(ws_connect, ws_url, "ann", room="r1")
    carl = await ws_connect(f"{ws_url}/chat/r1?nick=carl")
    assert await recv(carl) == "* you are carl in r1; here: ann, carl"


@pytest.mark.gen_test
async def test_text_and_json_users_share_a_room(ws_url: str, ws_connect: Any) -> None:
    """A chat.json user and a plain-text user in one room see each other's messages."""
    term = await text_user(ws_connect, ws_url, "term")
    web = await json_user(ws_connect, ws_url, "web")
    assert await recv(term) == "* web joined"
    await term.write_message("from the terminal")
    event = await recv_json(web)
    assert event["type"] == "message" and event["sender"] == "term"
    assert event["text"] == "from the terminal" and event["room"] == "lobby"
    await web.write_message('{"type": "message", "text": "from the browser"}')
    assert await recv(term) == "web: from the browser"
    own = await recv_json(web)  # JSON users get their own message back, with its id
    assert own["sender"] == "web" and own["id"] == event["id"] + 1


@pytest.mark.gen_test
async def test_json_ids_increase_per_room_and_time_is_set(ws_url: str, ws_connect: Any) -> None:
    """Every event of a room carries the next id; rooms count separately."""
    a = await json_user(ws_connect, ws_url, "a", room="ids")
    first_join_seen = []
    for i in range(5):
        await a.write_message(f'{{"type": "message", "text": "m{i}"}}')
        first_join_seen.append(await recv_json(a))
    ids = [event["id"] for event in first_join_seen]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert all(isinstance(event["time"], float) for event in first_join_seen)
    other = await json_user(ws_connect, ws_url, "b", room="ids-other")
    await other.write_message('{"type": "message", "text": "x"}')
    assert (await recv_json(other))["id"] == 2  # its own join was 1


@pytest.mark.gen_test
async def test_rooms_are_separate(ws_url: str, ws_connect: Any) -> None:
    """A message in one room never reaches another room."""
    red = await text_user(ws_connect, ws_url, "red", room="red")
    blue = await text_user(ws_connect, ws_url, "blue", room="blue")
    red2 = await text_user(ws_connect, ws_url, "red2", room="red")
    assert await recv(red) == "* red2 joined"
    await red.write_message("only red")
    assert await recv(red2) == "red: only red"
    assert await nothing_more(blue)


@pytest.mark.gen_test
async def test_chat_without_room_is_lobby(ws_url: str, ws_connect: Any) -> None:
    """/chat is the room lobby."""
    plain = await ws_connect(f"{ws_url}/chat?nick=p")
    assert await recv(plain) == "* you are p in lobby; here: p"
    other = await text_user(ws_connect, ws_url, "q", room="lobby")
    await other.write_message("hi")
    assert await recv(plain) == "* q joined"
    assert await recv(plain) == "q: hi"


@pytest.mark.gen_test
async def test_generated_guest_nicks(ws_url: str, ws_connect: Any) -> None:
    """Without ?nick= the user is guest-N, distinct per connection."""
    first = await ws_connect(f"{ws_url}/chat/g", subprotocols=["chat.json"])
    second = await ws_connect(f"{ws_url}/chat/g", subprotocols=["chat.json"])
    one = (await recv_json(first))["members"]
    two = (await recv_json(second))["members"]
    assert one[0].startswith("guest-") and len(set(two)) == 2


@pytest.mark.gen_test
@pytest.mark.parametrize("nick", ["a%20b", "x" * 33, "tab%09in", "nul%00x"])
async def test_invalid_nick_is_400(ws_url: str, ws_connect: Any, nick: str) -> None:
    """An invalid nick is refused before the upgrade with 400 and the rule."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{ws_url}/chat?nick={nick}")
    assert info.value.code == 400
    assert info.value.response is not None
    assert b"1 to 32 characters" in info.value.response.body


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("sent", "code"),
    [
        ("{oops", "invalid_json"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "message", "text": ""}', "invalid_message"),
        ('"just a string"', "invalid_message"),
    ],
)
async def test_json_bad_input_gets_error_event_and_keeps_connection(
    ws_url: str, ws_connect: Any, sent: str, code: str
) -> None:
    """Bad chat.json input gets an error event; the connection keeps working."""
    user = await json_user(ws_connect, ws_url, "err")
    await user.write_message(sent)
    error = await recv_json(user)
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    await user.write_message('{"type": "message", "text": "still fine"}')
    assert (await recv_json(user))["text"] == "still fine"


@pytest.mark.gen_test
async def test_json_binary_gets_error_event(ws_url: str, ws_connect: Any) -> None:
    """A binary message in chat.json gets an unsupported_data error; the connection stays."""
    user = await json_user(ws_connect, ws_url, "bin")
    await user.write_message(b"\x00", binary=True)
    assert (await recv_json(user))["code"] == "unsupported_data"
    await user.write_message('{"type": "presence"}')
    assert (await recv_json(user)) == {"type": "presence", "room": "lobby", "members": ["bin"]}


@pytest.mark.gen_test
async def test_text_binary_closes_1003(ws_url: str, ws_connect: Any) -> None:
    """A binary message in plain-text chat closes with 1003; others carry on."""
    bad = await text_user(ws_connect, ws_url, "bad")
    good = await text_user(ws_connect, ws_url, "good")
    assert await recv(bad) == "* good joined"
    await bad.write_message(b"\x00", binary=True)
    assert await recv_until_closed(bad) == []
    assert bad.close_code == CloseCode.UNSUPPORTED_DATA
    assert bad.close_reason == "the chat takes text messages only"
    assert await recv(good) == "* bad left"


@pytest.mark.gen_test
async def test_reconnect_with_since_gets_exactly_what_was_missed(
    ws_url: str, ws_connect: Any
) -> None:
    """A chat.json client that comes back with since=<epoch>:<id> first gets the events
    it missed, in order, then ``resumed``, then live events."""
    bob = await json_user(ws_connect, ws_url, "bob", "res")
    ann = await json_user(ws_connect, ws_url, "ann", "res")
    await recv_json(bob)  # ann's join
    await ann.write_message('{"type": "message", "text": "before"}')
    last = await recv_json(ann)  # the echo: what ann saw last
    await recv_json(bob)
    ann.close()
    assert (await recv_json(bob))["type"] == "leave"
    for i in range(3):
        await bob.write_message(json.dumps({"type": "message", "text": f"missed {i}"}))
        await recv_json(bob)

    url = f"{ws_url}/chat/res?nick=ann&since={last['epoch']}:{last['id']}"
    back = await ws_connect(url, subprotocols=["chat.json"])
    assert (await recv_json(back))["type"] == "presence"
    replayed = [await recv_json(back) for _ in range(4)]
    assert [(e["type"], e.get("text"), e["id"]) for e in replayed] == [
        ("leave", None, last["id"] + 1),
        ("message", "missed 0", last["id"] + 2),
        ("message", "missed 1", last["id"] + 3),
        ("message", "missed 2", last["id"] + 4),
    ]
    assert await recv_json(back) == {
        "type": "resumed",
        "room": "res",
        "recovered": True,
        "count": 4,
    }
    join = await recv_json(back)
    assert (join["type"], join["nick"], join["id"]) == ("join", "ann", last["id"] + 5)
    await bob.write_message('{"type": "message", "text": "live"}')
    assert (await recv_json(back))["text"] == "live"


@pytest.mark.gen_test
async def test_since_that_cannot_be_recovered_says_so(ws_url: str, ws_connect: Any) -> None:
    await json_user(ws_connect, ws_url, "bob", "gone")
    for since in ("00000000:1", "ffffffff:0"):
        url = f"{ws_url}/chat/gone?nick=ann&since={since}"
        back = await ws_connect(url, subprotocols=["chat.json"])
        assert (await recv_json(back))["type"] == "presence"
        assert await recv_json(back) == {
            "type": "resumed",
            "room": "gone",
            "recovered": False,
            "count": 0,
        }
        assert (await recv_json(back))["type"] == "join"  # then live, as a new client
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await ws_connect(f"{ws_url}/chat/gone?since=nonsense", subprotocols=["chat.json"])
    assert info.value.code == 400
    assert info.value.response is not None
    assert b"expected <epoch>:<id>" in info.value.response.body


def delivery_paths(registry: Any, room: str) -> tuple[int, int]:
    """(members on the registry's direct path, members called one by one) in ``room``."""
    plan = registry._rooms[room].get_plan()  # white box: the delivery plan itself
    return sum(len(group.senders) for group in plan.direct), len(plan.others)


@pytest.mark.gen_test
async def test_chat_members_take_the_direct_path(
    ws_url: str, ws_connect: Any, registry: Any
) -> None:
    """Greeted chat connections of both formats are delivered by the registry's direct
    fan-out; a plain-text sender still does not get its own line back."""
    ann = await text_user(ws_connect, ws_url, "ann", "fast")
    bob = await json_user(ws_connect, ws_url, "bob", "fast")
    assert await recv(ann) == "* bob joined"
    assert delivery_paths(registry, "fast") == (2, 0)
    await ann.write_message("hi from ann")
    assert (await recv_json(bob))["text"] == "hi from ann"
    await bob.write_message('{"type": "message", "text": "hi from bob"}')
    assert await recv(ann) == "bob: hi from bob"
    assert (await recv_json(bob))["text"] == "hi from bob"  # chat.json echoes
    await nothing_more(ann)  # its own line did not come back


@pytest.mark.gen_test
async def test_resumed_chat_member_joins_the_direct_path_past_its_replay(
    ws_url: str, ws_connect: Any, registry: Any
) -> None:
    """A chat.json client resuming with since= is delivered one by one only until it is
    past what was replayed to it, then by the direct path, without duplicates."""
    bob = await json_user(ws_connect, ws_url, "bob", "back")
    await bob.write_message('{"type": "message", "text": "one"}')
    last = await recv_json(bob)
    url = f"{ws_url}/chat/back?nick=ann&since={last['epoch']}:{last['id']}"
    ann = await ws_connect(url, subprotocols=["chat.json"])
    assert (await recv_json(ann))["type"] == "presence"
    assert (await recv_json(ann))["type"] == "resumed"
    assert (await recv_json(ann))["type"] == "join"
    assert delivery_paths(registry, "back") == (2, 0)
    await bob.write_message('{"type": "message", "text": "two"}')
    assert (await recv_json(ann))["text"] == "two"
    await nothing_more(ann)
