"""The tornws demo app, written with the asyncio `websockets` library instead.

    python examples/asyncio_version/server.py [--host 127.0.0.1] [--port 8765]

The same contract as `tornws serve` (docs/comparison.md lists the deliberate
differences): /echo, /broadcast, /chat and /chat/<room> with the `chat.json`
and `chat` subprotocols, /healthz, 404 for unknown paths, 400 for offers of
unknown subprotocols only. It uses the current asyncio API
(`websockets.asyncio.server.serve`, `process_request`, `broadcast`) and is
also the corrected form of the tutorial's programs: no `path` argument, no set
mutated while iterated, rejections answered before the handshake.

It depends on `websockets` only (not on tornws).
"""

from __future__ import annotations

import argparse
import asyncio
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
ROUTES = ("/echo", "/broadcast")

BROADCAST: set[ServerConnection] = set()
guests = itertools.count(1)


@dataclass
class Room:
    members: dict[ServerConnection, Member] = field(default_factory=dict)
    last_id: int = 0
    # A new room (this version forgets a room when it empties) is a new epoch.
    epoch: str = field(default_factory=lambda: os.urandom(4).hex())


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


def dumps(body: dict[str, object]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def publish(room_name: str, kind: str, sender: ServerConnection, nick: str, text: str = "") -> None:
    """One event to the room: encoded once per format, the plain-text sender excluded."""
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
    else:
        event["nick"] = nick
        line = f"* {nick} {'joined' if kind == 'join' else 'left'}"
    members = list(room.members.items())  # a snapshot: never iterate what may change
    broadcast([ws for ws, m in members if m.json], dumps(event))
    broadcast([ws for ws, m in members if not m.json and ws is not sender], line)


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
    try:
        if is_json:
            await websocket.send(presence(room_name, nick))
        else:
            here = ", ".join(sorted(m.nick for m in room.members.values()))
            await websocket.send(f"* you are {nick} in {room_name}; here: {here}")
        publish(room_name, "join", websocket, nick)
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
        if room.members:
            publish(room_name, "leave", websocket, nick)
        else:
            del ROOMS[room_name]


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
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(args.host, args.port, args.compress))
