"""Authentication: tickets (examples/tickets.py), ``require_user``, per-room authorization."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.web

import tornws
from tornws.auth import TicketError, Tickets, redact

from conftest import ROOT
from wsclient import recv_json

SECRET = "a test secret of enough length"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "tickets_example", Path(ROOT) / "examples" / "tickets.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ticket_round_trip_expiry_reuse_and_forgery() -> None:
    clock = Clock()
    tickets = Tickets(SECRET, ttl=30, clock=clock)
    ticket = tickets.mint("ann")
    assert tickets.redeem(ticket) == "ann"
    with pytest.raises(TicketError, match="ticket already used"):
        tickets.redeem(ticket)
    late = tickets.mint("bob")
    clock.now += 30
    with pytest.raises(TicketError, match="ticket expired"):
        tickets.redeem(late)
    body, signature = tickets.mint("bob").split(".")
    other = Tickets(SECRET + "!", clock=clock).mint("bob").split(".")[1]
    for forged in (f"{body}.{other}", f"{body[:-2]}xx.{signature}", "garbage", "", "a.b.c"):
        with pytest.raises(TicketError, match="invalid ticket"):
            tickets.redeem(forged)
    assert tickets.redeem(f"{body}.{signature}") == "bob"  # the genuine one still works
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Tickets("short")


def test_used_tickets_are_forgotten_once_expired() -> None:
    clock = Clock()
    tickets = Tickets(SECRET, ttl=1, clock=clock)
    for _ in range(1100):
        tickets.redeem(tickets.mint("ann"))
    clock.now += 2
    tickets.redeem(tickets.mint("ann"))
    assert len(tickets._used) == 1


def test_redact() -> None:
    assert redact("/chat/x?ticket=abc.def&nick=a") == "/chat/x?ticket=…&nick=a"
    assert redact("/chat/x?nick=a&ticket=abc") == "/chat/x?nick=a&ticket=…"
    assert redact("/chat/x?nick=a") == "/chat/x?nick=a"


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    application = load_example().make_app()
    application.settings["tornws.registry"] = registry
    return application


async def login(http_url: str, name: str) -> str:
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"{http_url}/login?name={name}")
    return response.headers["Set-Cookie"].split(";")[0]


async def mint(http_url: str, cookie: str | None) -> tornado.httpclient.HTTPResponse:
    headers = {"Cookie": cookie} if cookie else {}
    return await tornado.httpclient.AsyncHTTPClient().fetch(
        f"{http_url}/ticket", method="POST", body=b"", headers=headers, raise_error=False
    )


async def closed(connection: Any, node: tornws.Node) -> None:
    """Close ``connection`` and wait until the server has closed its side."""
    connection.close()
    for _ in range(200):
        if not node.connections:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server kept the connection")


async def refusal(url: str) -> tuple[int, str]:
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await tornado.websocket.websocket_connect(url)
    assert info.value.response is not None
    return info.value.code, info.value.response.body.decode().strip()


@pytest.mark.gen_test
async def test_ticket_flow_with_real_sockets(
    http_url: str,
    ws_url: str,
    ws_connect: Any,
    node: tornws.Node,
    caplog: Any,
) -> None:
    caplog.set_level(logging.INFO)
    anonymous = await mint(http_url, None)
    assert anonymous.code == 401 and json.loads(anonymous.body) == {"error": "sign in first"}

    cookie = await login(http_url, "ann")
    minted = await mint(http_url, cookie)
    assert minted.code == 200 and minted.headers["Cache-Control"] == "no-store"
    answer = json.loads(minted.body)
    assert answer["expires_in"] == 30
    ticket = answer["ticket"]

    connection = await ws_connect(
        f"{ws_url}/chat/lobby?ticket={ticket}", subprotocols=["chat.json"]
    )
    assert (await recv_json(connection))["members"] == ["ann"]
    joined = await recv_json(connection)
    assert (joined["type"], joined["nick"]) == ("join", "ann")  # the ticket's user is the nick

    assert await refusal(f"{ws_url}/chat/lobby?ticket={ticket}") == (401, "ticket already used")
    assert await refusal(f"{ws_url}/chat/lobby") == (401, "ticket required")
    assert await refusal(f"{ws_url}/chat/lobby?ticket=x{ticket}") == (401, "invalid ticket")
    # The access log never shows a ticket.
    access = "\n".join(r.getMessage() for r in caplog.records if r.name == "tornado.access")
    assert "ticket=…" in access and ticket not in access and ticket[:20] not in access
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "close /chat/lobby" in everything or "open /chat/lobby" in everything
    assert ticket[:20] not in everything and cookie.split("=", 1)[1][:20] not in everything
    assert node.stats.rejections == {"ticket": 3}
    await closed(connection, node)


@pytest.mark.gen_test
async def test_room_authorization_refuses_with_403_before_the_upgrade(
    http_url: str, ws_url: str, ws_connect: Any, registry: tornws.Registry, node: tornws.Node
) -> None:
    bob = json.loads((await mint(http_url, await login(http_url, "bob"))).body)["ticket"]
    assert await refusal(f"{ws_url}/chat/staff?ticket={bob}") == (403, "not allowed in room staff")
    assert registry.members("staff") == ()
    ann = json.loads((await mint(http_url, await login(http_url, "ann"))).body)["ticket"]
    connection = await ws_connect(f"{ws_url}/chat/staff?ticket={ann}")
    await connection.write_message("hello staff")
    assert [type(m).__name__ for m in registry.members("staff")] == ["ChatHandler"]
    assert node.stats.rejections == {"room": 1}
    await closed(connection, node)


class TestExpiryAndRequiredUser:
    @pytest.fixture
    def app(self, registry: tornws.Registry) -> Any:
        self.tickets = Tickets(SECRET, ttl=0.2)
        return tornado.web.Application(
            [
                (r"/t", tornws.EchoHandler, {"tickets": self.tickets}),
                (r"/signed-in", tornws.EchoHandler, {"require_user": True}),
            ],
            **{"tornws.registry": registry},
        )

    @pytest.mark.gen_test
    async def test_expired_ticket_and_require_user(
        self, ws_url: str, ws_connect: Any, node: tornws.Node
    ) -> None:
        ticket = self.tickets.mint("ann")
        await asyncio.sleep(0.3)
        assert await refusal(f"{ws_url}/t?ticket={ticket}") == (401, "ticket expired")
        connection = await ws_connect(f"{ws_url}/t?ticket={self.tickets.mint('ann')}")
        await connection.write_message("in")
        assert await refusal(f"{ws_url}/signed-in") == (401, "authentication required")
        await closed(connection, node)


@pytest.mark.gen_test
async def test_live_takes_tickets_and_authorizes_per_channel(
    http_url: str, ws_url: str, ws_connect: Any, node: tornws.Node
) -> None:
    """/live with tickets (examples/tickets.py): no ticket or a used one is 401 before the
    upgrade; the ticket's user is the connection's, shown in presence; the authorizer
    answers ``forbidden`` on the channel it keeps for ann, and the connection goes on."""

    async def command(connection: Any, ident: int, kind: str, **fields: Any) -> Any:
        await connection.write_message(json.dumps({"id": ident, "type": kind, **fields}))
        while True:
            reply = await recv_json(connection)
            if reply.get("id") == ident:
                return reply

    assert await refusal(f"{ws_url}/live") == (401, "ticket required")
    bob_ticket = json.loads((await mint(http_url, await login(http_url, "bob"))).body)["ticket"]
    bob = await ws_connect(f"{ws_url}/live?ticket={bob_ticket}", subprotocols=["tornws.v1"])
    assert await refusal(f"{ws_url}/live?ticket={bob_ticket}") == (401, "ticket already used")
    refused = await command(bob, 1, "subscribe", channel="staff")
    assert refused["error"]["code"] == "forbidden"
    assert (await command(bob, 2, "publish", channel="staff", data=1))["error"][
        "code"
    ] == "forbidden"
    assert "result" in await command(bob, 3, "subscribe", channel="lobby")

    ann_ticket = json.loads((await mint(http_url, await login(http_url, "ann"))).body)["ticket"]
    ann = await ws_connect(f"{ws_url}/live?ticket={ann_ticket}", subprotocols=["tornws.v1"])
    assert "result" in await command(ann, 1, "subscribe", channel="staff")
    assert "result" in await command(ann, 2, "subscribe", channel="lobby")
    presence = (await command(bob, 4, "presence", channel="lobby"))["result"]
    assert sorted(m["user"] for m in presence["members"]) == ["ann", "bob"]
    assert node.stats.rejections == {"ticket": 2}
    bob.close()
    await closed(ann, node)
