"""Crowded chat rooms: joins and leaves announced together, once a CROWD_INTERVAL, in both
formats; small rooms as before; the notices kept for a resume; newcomers' member lists."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import tornado.web

import tornws
import tornws.chat
from tornws.chat import ROOM_PATTERN, ChatHandler

from wsclient import nothing_more, recv, recv_json

INTERVAL = 0.3


@pytest.fixture
def app(registry: tornws.Registry, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(tornws.chat, "CROWD_INTERVAL", INTERVAL)
    options = {"registry": registry, "crowd": 3}
    return tornado.web.Application([(rf"/chat/({ROOM_PATTERN})", ChatHandler, options)])


async def join_text(ws_connect: Any, ws_url: str, nick: str) -> tuple[Any, str]:
    connection = await ws_connect(f"{ws_url}/chat/hall?nick={nick}")
    return connection, await recv(connection)


async def join_json(ws_connect: Any, ws_url: str, nick: str, since: str = "") -> tuple[Any, Any]:
    query = f"?nick={nick}" + (f"&since={since}" if since else "")
    connection = await ws_connect(f"{ws_url}/chat/hall{query}", subprotocols=["chat.json"])
    return connection, await recv_json(connection)


@pytest.mark.gen_test(timeout=20)
async def test_a_crowded_room_announces_joins_and_leaves_together(
    ws_url: str, ws_connect: Any
) -> None:
    """Below the threshold each join is its own event; from the third member on, who
    came and went in one interval is one presence_diff (plain text: one line), in
    order, to every member, newcomers included; a newcomer's presence is the room as
    of the last notice, so that applying the next one gives who is here; lines still
    reach everyone at once."""
    ann, _ = await join_text(ws_connect, ws_url, "ann")
    bob, presence = await join_json(ws_connect, ws_url, "bob")
    assert presence["members"] == ["ann", "bob"]
    assert (await recv_json(bob))["type"] == "join"  # bob's own, a room of 2: as before
    assert await recv(ann) == "* bob joined"
    started = time.monotonic()
    cy, welcome = await join_text(ws_connect, ws_url, "cy")  # the 3rd: crowded from now on
    assert welcome == "* you are cy in hall; here: ann, bob, cy"
    dee, presence = await join_json(ws_connect, ws_url, "dee")
    # The room as of its last notice (cy and dee are in the next one), and who dee is.
    assert presence == {
        "type": "presence",
        "room": "hall",
        "members": ["ann", "bob"],
        "nick": "dee",
    }
    cy.close()
    line = await recv(ann)  # one notice for all three changes
    assert time.monotonic() - started >= INTERVAL * 0.9
    assert line == "* 2 joined: cy, dee; 1 left: cy"
    for member in (bob, dee):
        diff = await recv_json(member)
        assert {k: diff[k] for k in ("type", "room", "joins", "leaves")} == {
            "type": "presence_diff",
            "room": "hall",
            "joins": ["cy", "dee"],
            "leaves": ["cy"],
        }
        assert set(diff) == {"type", "room", "epoch", "id", "time", "joins", "leaves"}
    await dee.write_message(json.dumps({"type": "message", "text": "hi all"}))
    assert await recv(ann) == "dee: hi all"
    assert (await recv_json(bob))["text"] == "hi all"
    assert (await recv_json(dee))["text"] == "hi all"
    await nothing_more(ann, 0.1)


@pytest.mark.gen_test(timeout=20)
async def test_a_crowded_rooms_notice_is_kept_and_replayed_on_resume(
    ws_url: str, ws_connect: Any
) -> None:
    """presence_diff events are numbered and kept like joins: a chat.json client that
    resumes gets the notices it missed, then resumed."""
    members = [(await join_text(ws_connect, ws_url, nick))[0] for nick in ("ann", "bob", "cy")]
    watcher, _ = await join_json(ws_connect, ws_url, "dee")
    diff = await recv_json(watcher)
    assert diff["type"] == "presence_diff" and diff["joins"] == ["cy", "dee"]
    watcher.close()
    members[0].close()
    assert await recv(members[1]) == "* 2 joined: cy, dee"
    assert await recv(members[1]) == "* 2 left: dee, ann"
    back, _ = await join_json(ws_connect, ws_url, "dee", since=f"{diff['epoch']}:{diff['id']}")
    missed = await recv_json(back)
    assert missed["type"] == "presence_diff" and missed["leaves"] == ["dee", "ann"]
    resumed = await recv_json(back)
    assert resumed == {"type": "resumed", "room": "hall", "recovered": True, "count": 1}
