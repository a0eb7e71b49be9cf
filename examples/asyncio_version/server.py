"""The tornws demo app, written with the asyncio `websockets` library instead.

    python examples/asyncio_version/server.py [--host 127.0.0.1] [--port 8765]

The same contract as `tornws serve` (docs/comparison.md lists the deliberate
differences): /echo, /broadcast, /chat and /chat/<room> with the `chat.json`
and `chat` subprotocols, crowded rooms (from `--crowd` members, 1000, joins and
leaves are announced together once a second: docs/protocol.md), /healthz, 404
for unknown paths, 400 for offers of unknown subprotocols only. It uses the current asyncio API
(`websockets.asyncio.server.serve`, `process_request`, `broadcast`) and is
also the corrected form of the tutorial's programs: no `path` argument, no set
mutated while iterated, rejections answered before the handshake.

It depends on `websockets` only (not on tornws).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger("asyncio_version")

MAX_MESSAGE_SIZE = 1024 * 1024
CHAT_SUBPROTOCOLS = ("chat.json", "chat")
ROOM_RE = re.compile(r"/chat(?:/([A-Za-z0-9_.~-]{1,64}))?")
NICK_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,32}")
TEXT_MAX_LENGTH = 4096
CROWD_INTERVAL = 1.0  # seconds a crowded room's joins and leaves wait to be announced
ROUTES = ("/echo", "/broadcast")

BROADCAST: set[ServerConnection] = set()
guests = itertools.count(1)
crowd = 1000  # members from which a room is crowded (--crowd)


@dataclass
class Crowd:
    """A crowded room's joins and leaves since its last notice, and its members as of
    that notice (what a newcomer is told, sorted and encoded once per notice)."""

    joins: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    nicks: list[str] | None = None
    encoded: str = ""


@dataclass
class Room:
    members: dict[ServerConnection, Member] = field(default_factory=dict)
    last_id: int = 0
    # A new room (this version forgets a room when it empties) is a new epoch.
    epoch: str = field(default_factory=lambda: os.urandom(4).hex())
    crowd: Crowd | None = None  # while a notice is due


@dataclass
class Member:
    nick: str
    json: bool


ROOMS: dict[str, Room] = {}


# Before the handshake


def offered_subprotocols(headers: Headers) -> list[str]:
    return [
        name.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for name in value.split(",")
        if name.strip()
    ]


def same_origin(headers: Headers) -> bool:
    origin = headers.get("Origin")
    return origin is None or urlsplit(origin).netloc.lower() == headers.get("Host", "").lower()


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    """Route, and refuse with the right status before any upgrade."""
    url = urlsplit(request.path)
    if url.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    if url.path not in ROUTES and not ROOM_RE.fullmatch(url.path):
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    if not same_origin(request.headers):
        log.info("refused %s: origin %s", url.path, request.headers.get("Origin"))
        return connection.respond(HTTPStatus.FORBIDDEN, "Cross origin websockets not allowed\n")
    if ROOM_RE.fullmatch(url.path):
        offered = offered_subprotocols(request.headers)
        if offered and not set(offered) & set(CHAT_SUBPROTOCOLS):
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"unsupported subprotocol {', '.join(offered)}; "
                f"this endpoint supports: {', '.join(CHAT_SUBPROTOCOLS)}\n",
            )
        nick = parse_qs(url.query).get("nick", [""])[-1].strip()
        if nick and not NICK_RE.fullmatch(nick):
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"invalid nick {nick!r}: use 1 to 32 characters, no spaces or control characters\n",
            )
    return None


def select_subprotocol(connection: ServerConnection, subprotocols: list[str]) -> str | None:
    """Server preference among what the client offers; only the chat has subprotocols."""
    if not ROOM_RE.fullmatch(urlsplit(connection.request.path).path):
        return None
    for name in CHAT_SUBPROTOCOLS:
        if name in subprotocols:
            return name
    return None


# After the handshake


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def relay(websocket: ServerConnection) -> None:
    BROADCAST.add(websocket)
    try:
        async for message in websocket:
            broadcast(BROADCAST, message)
    finally:
        BROADCAST.discard(websocket)


def dumps(body: object) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def publish(
    room_name: str,
    kind: str,
    sender: ServerConnection | None,
    nick: str = "",
    text: str = "",
    *,
    changes: tuple[list[str], list[str]] = ([], []),
) -> None:
    """One event to the room: encoded once per format, the plain-text sender excluded;
    ``changes``: a crowded room's notice's (joins, leaves)."""
    room = ROOMS[room_name]
    room.last_id += 1
    event: dict[str, object] = {
        "type": kind,
        "room": room_name,
        "epoch": room.epoch,
        "id": room.last_id,
        "time": round(time.time(), 3),
    }
    if kind == "message":
        event.update(sender=nick, text=text)
        line = f"{nick}: {text}"
    elif kind == "presence_diff":
        event.update(joins=changes[0], leaves=changes[1])
        parts = [
            f"{len(nicks)} {verb}: {', '.join(nicks)}"
            for nicks, verb in zip(changes, ("joined", "left"))
            if nicks
        ]
        line = f"* {'; '.join(parts)}"
    else:
        event["nick"] = nick
        line = f"* {nick} {'joined' if kind == 'join' else 'left'}"
    members = list(room.members.items())  # a snapshot: never iterate what may change
    broadcast([ws for ws, m in members if m.json], dumps(event))
    broadcast([ws for ws, m in members if not m.json and ws is not sender], line)


def crowd_of(room_name: str, room: Room) -> Crowd | None:
    """The room's pending notice when it is crowded (made now, due in CROWD_INTERVAL,
    if the room just is), else None."""
    if room.crowd is None and len(room.members) >= crowd:
        room.crowd = Crowd()
        asyncio.get_running_loop().call_later(CROWD_INTERVAL, announce, room_name, room)
    return room.crowd


def announce(room_name: str, room: Room) -> None:
    """A crowded room's joins and leaves since its last notice, in one event."""
    pending, room.crowd = room.crowd, None
    if pending and (pending.joins or pending.leaves) and ROOMS.get(room_name) is room:
        publish(room_name, "presence_diff", None, changes=(pending.joins, pending.leaves))


def crowd_greeting(room_name: str, room: Room, pending: Crowd, nick: str, is_json: bool) -> str:
    """A newcomer's presence (or welcome line) in a crowded room: the room as of its
    last notice (the newcomer's own join is in the next one)."""
    if pending.nicks is None:
        now = collections.Counter(m.nick for m in room.members.values())
        now[nick] -= 1
        now.update(pending.leaves)
        now.subtract(pending.joins)
        pending.nicks = sorted(now.elements())
        pending.encoded = ",".join(dumps(n) for n in pending.nicks)
    if is_json:
        return (
            f'{{"type":"presence","room":{dumps(room_name)},'
            f'"members":[{pending.encoded}],"nick":{dumps(nick)}}}'
        )
    here = pending.nicks[:]
    bisect.insort(here, nick)
    return f"* you are {nick} in {room_name}; here: {', '.join(here)}"


def presence(room_name: str, you: str | None = None) -> str:
    nicks = sorted(m.nick for m in ROOMS[room_name].members.values())
    body = {"type": "presence", "room": room_name, "members": nicks}
    if you is not None:  # (on connecting: the client's own nick)
        body["you"] = you
    return dumps(body)


def error(code: str, detail: str) -> str:
    return dumps({"type": "error", "code": code, "detail": detail})


def decode_json(data: str) -> dict[str, object] | str:
    """The client's event, or an error event to send back."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        return error("invalid_json", f"not JSON: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return error(
            "invalid_message",
            'expected an object with a "type", e.g. {"type": "message", "text": "hi"}',
        )
    if body["type"] == "message":
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return error("invalid_message", '"text" must be a non-empty string')
        if len(text) > TEXT_MAX_LENGTH:
            return error("invalid_message", f'"text" is longer than {TEXT_MAX_LENGTH} characters')
    elif body["type"] != "presence":
        return error("unknown_type", f'unknown type {body["type"]!r}; known: "message", "presence"')
    return body


async def chat(websocket: ServerConnection) -> None:
    url = urlsplit(websocket.request.path)
    match = ROOM_RE.fullmatch(url.path)
    assert match is not None  # process_request refused other paths
    room_name = match.group(1) or "lobby"
    nick = parse_qs(url.query).get("nick", [""])[-1].strip() or f"guest-{next(guests)}"
    is_json = websocket.subprotocol == "chat.json"
    room = ROOMS.setdefault(room_name, Room())
    room.members[websocket] = Member(nick, is_json)
    joined = False
    try:
        await greet(websocket, room_name, room, nick, is_json)
        joined = True
        async for message in websocket:
            if isinstance(message, bytes):
                if is_json:
                    await websocket.send(error("unsupported_data", "send text, not binary"))
                    continue
                await websocket.close(1003, "the chat takes text messages only")
                break
            if not is_json:
                line = message.rstrip("\r\n")[:TEXT_MAX_LENGTH]
                if line:
                    publish(room_name, "message", websocket, nick, line)
                continue
            body = decode_json(message)
            if isinstance(body, str):
                await websocket.send(body)
            elif body["type"] == "message":
                publish(room_name, "message", websocket, nick, str(body["text"]))
            else:
                await websocket.send(presence(room_name))
    except ConnectionClosed:
        pass
    finally:
        del room.members[websocket]
        if not room.members:
            del ROOMS[room_name]
        elif joined:  # (one that never said it joined does not leave)
            pending = crowd_of(room_name, room)
            if pending is not None:
                pending.leaves.append(nick)
            else:
                publish(room_name, "leave", websocket, nick)


async def greet(
    websocket: ServerConnection, room_name: str, room: Room, nick: str, is_json: bool
) -> None:
    """The newcomer's presence (or welcome line), then its join: now, or in the next
    notice of a crowded room."""
    pending = crowd_of(room_name, room)
    if pending is not None:
        await websocket.send(crowd_greeting(room_name, room, pending, nick, is_json))
    elif is_json:
        await websocket.send(presence(room_name, nick))
    else:
        here = ", ".join(sorted(m.nick for m in room.members.values()))
        await websocket.send(f"* you are {nick} in {room_name}; here: {here}")
    pending = crowd_of(room_name, room)  # (a notice may have gone out meanwhile)
    if pending is not None:
        pending.joins.append(nick)
    else:
        publish(room_name, "join", websocket, nick)


async def handler(websocket: ServerConnection) -> None:
    path = urlsplit(websocket.request.path).path
    if path == "/echo":
        await echo(websocket)
    elif path == "/broadcast":
        await relay(websocket)
    else:
        await chat(websocket)


async def main(host: str, port: int, compress: bool) -> None:
    async with serve(
        handler,
        host,
        port,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        subprotocols=list(CHAT_SUBPROTOCOLS),
        compression="deflate" if compress else None,
        max_size=MAX_MESSAGE_SIZE,
        ping_interval=20,
        ping_timeout=20,
    ) as server:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.close)
        log.info("listening on http://%s:%d", host, port)
        await server.wait_closed()
        log.info("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--compress", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--crowd",
        type=int,
        default=crowd,
        metavar="N",
        help="from N members a room announces joins and leaves together, once a second",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    if args.crowd < 1:
        parser.error("--crowd: expected 1 or more members")
    crowd = args.crowd
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(args.host, args.port, args.compress))
