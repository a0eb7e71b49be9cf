"""The chat: its events, its two wire formats, and :class:`ChatHandler`, which speaks them.

Two subprotocols speak the same rooms:

- ``chat.json``: JSON objects, one per WebSocket message (``docs/protocol.md``).
- ``chat``: plain text, one chat line per WebSocket message; others in the room
  receive ``<nick>: <text>``, and ``* <nick> joined`` / ``* <nick> left``.

A *crowded* room (:data:`CROWD` members or more in this process) announces its
joins and leaves together, at most once per :data:`CROWD_INTERVAL`: one
``presence_diff`` event naming who came and went (plain text: ``* 3 joined: a, b,
c; 1 left: d``), instead of one event per join for every member (O(N²) as a room
fills). A newcomer's ``presence`` then lists the room as of its last notice and
names the newcomer in ``nick`` (its own join is in the next notice); that list is
made once per notice, not sorted and encoded for each newcomer.

A published :class:`ChatEvent` is encoded at most once per format per message,
whatever the number of receivers (:meth:`tornws.broker.Envelope.encode`), and
the same frame goes to every member through the registry's direct fan-out. The
codecs and the events are pure code (tested without sockets); the handler runs
on tornws's data plane.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, ClassVar

from .broker import Codec, Envelope
from .exceptions import HandshakeError, TornwsError
from .frames import CloseCode, Message
from .handlers import WebSocketHandler
from .registry import Registry
from .transport import Transport

__all__ = [
    "CROWD",
    "CROWD_INTERVAL",
    "JSON",
    "NICK_MAX_LENGTH",
    "READY_TIMEOUT",
    "ROOM_PATTERN",
    "TEXT",
    "ChatEvent",
    "ChatHandler",
    "ChatInputError",
    "JsonCodec",
    "TextCodec",
    "error_event",
    "next_guest_name",
    "parse_since",
    "presence_event",
    "resumed_event",
    "validate_nick",
]

log = logging.getLogger(__name__)

#: Seconds a chat connection waits for its broker to read its room (Redis down?).
READY_TIMEOUT = 2.0
#: Room names: what ``/chat/<room>`` accepts (anything else is a 404).
ROOM_PATTERN = r"[A-Za-z0-9_.~-]{1,64}"
NICK_MAX_LENGTH = 32
_NICK_RE = re.compile(rf"[^\s\x00-\x1f\x7f]{{1,{NICK_MAX_LENGTH}}}")
#: The longest chat line accepted, in characters (longer: an ``error`` event, or
#: for plain text a truncated line). The WebSocket size limit applies first.
TEXT_MAX_LENGTH = 4096
#: Members of a room, in this process, from which its joins and leaves are announced
#: together (``presence_diff``), at most once per :data:`CROWD_INTERVAL`.
CROWD = 1000
#: Seconds: a crowded room's joins and leaves wait at most this long to be announced.
CROWD_INTERVAL = 1.0


def validate_nick(nick: str) -> str:
    """Return ``nick`` if it is 1-32 characters with no space or control character.

    Raises:
        ValueError: with a message that says what a nick may be.
    """
    if not _NICK_RE.fullmatch(nick):
        raise ValueError(
            f"invalid nick {nick!r}: use 1 to {NICK_MAX_LENGTH} characters, "
            "no spaces or control characters"
        )
    return nick


@dataclasses.dataclass(frozen=True)
class ChatEvent:
    """Something that happened in a room: published to the room through the broker.

    Attributes:
        type: ``"message"``, ``"join"`` or ``"leave"``.
        nick: who sent the message, joined or left.
        text: the message text (empty for join and leave).
        time: when the server accepted it, Unix seconds.
        origin: the sending connection's id, so that a plain-text sender is not
            sent its own line back.
        joins: for ``"presence_diff"`` (a crowded room's notice): who joined, in order.
        leaves: for ``"presence_diff"``: who left, in order.
    """

    type: str
    nick: str
    text: str = ""
    time: float = dataclasses.field(default_factory=time.time)
    origin: str = ""
    joins: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()


class ChatInputError(TornwsError, ValueError):
    """A client's message could not be understood; ``code`` names the reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class TextCodec:
    """The ``chat`` subprotocol (and clients that offer none): plain text lines."""

    #: A plain-text sender does not get its own lines or its own join back.
    echo_own: ClassVar[bool] = False

    def encode(self, envelope: Envelope, /) -> Message | None:
        event = envelope.payload
        if not isinstance(event, ChatEvent):
            return None
        if event.type == "message":
            return Message(f"{event.nick}: {event.text}")
        if event.type == "join":
            return Message(f"* {event.nick} joined")
        if event.type == "leave":
            return Message(f"* {event.nick} left")
        if event.type == "presence_diff":
            parts = [
                f"{len(nicks)} {verb}: {', '.join(nicks)}"
                for nicks, verb in ((event.joins, "joined"), (event.leaves, "left"))
                if nicks
            ]
            return Message(f"* {'; '.join(parts)}")
        return None

    def decode(self, data: str) -> str:
        """One chat line: trailing newlines removed; ``""`` means nothing to send."""
        return data.rstrip("\r\n")[:TEXT_MAX_LENGTH]

    def __repr__(self) -> str:
        return "TEXT"


class JsonCodec:
    """The ``chat.json`` subprotocol: one JSON object per message."""

    #: A JSON client receives its own messages too: the echo carries the id.
    echo_own: ClassVar[bool] = True

    def encode(self, envelope: Envelope, /) -> Message | None:
        event = envelope.payload
        if not isinstance(event, ChatEvent):
            return None
        body: dict[str, Any] = {
            "type": event.type,
            "room": envelope.room,
            "epoch": envelope.epoch,
            "id": envelope.offset,
            "time": round(event.time, 3),
        }
        if event.type == "message":
            body["sender"] = event.nick
            body["text"] = event.text
        elif event.type == "presence_diff":
            body["joins"] = list(event.joins)
            body["leaves"] = list(event.leaves)
        else:
            body["nick"] = event.nick
        return Message(_dumps(body))

    def decode(self, data: str) -> dict[str, Any]:
        """Parse one client message into a dict with a string ``type``.

        Raises:
            ChatInputError: ``invalid_json``, ``invalid_message``,
                ``unknown_type``; the connection stays open.
        """
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise ChatInputError("invalid_json", f"not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ChatInputError(
                "invalid_message",
                'expected an object with a "type", e.g. {"type": "message", "text": "hi"}',
            )
        kind = body["type"]
        if kind == "message":
            text = body.get("text")
            if not isinstance(text, str) or not text:
                raise ChatInputError("invalid_message", '"text" must be a non-empty string')
            if len(text) > TEXT_MAX_LENGTH:
                raise ChatInputError(
                    "invalid_message", f'"text" is longer than {TEXT_MAX_LENGTH} characters'
                )
        elif kind != "presence":
            raise ChatInputError(
                "unknown_type", f'unknown type {kind!r}; known: "message", "presence"'
            )
        return body

    def __repr__(self) -> str:
        return "JSON"


TEXT = TextCodec()
JSON = JsonCodec()


def _dumps(body: Any) -> str:
    """Compact JSON, non-ASCII kept as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def presence_event(room: str, nicks: list[str], you: str | None = None) -> Message:
    """The ``presence`` event: who is in the room now (sent to one client); ``you``: its
    nick, in the one sent on connecting (its own join is the first join with that nick)."""
    body: dict[str, Any] = {"type": "presence", "room": room, "members": sorted(nicks)}
    if you is not None:
        body["you"] = you
    return Message(_dumps(body))


class _Crowd:
    """A crowded room's joins and leaves not announced yet, and its members as of its
    last notice: what a newcomer is told, sorted and each as JSON, made once per notice
    (not a sort and an encoding of N nicks per newcomer)."""

    __slots__ = ("encoded", "joins", "leaves", "nicks")

    def __init__(self) -> None:
        self.joins: list[str] = []
        self.leaves: list[str] = []
        self.nicks: list[str] | None = None
        self.encoded: list[str] = []

    def listed(self, others: list[Any]) -> list[str]:
        """The members as of the last notice, sorted: ``others`` (the room now, the
        first time) without the joins since and with the leaves since."""
        if self.nicks is None:
            now = collections.Counter(n for n in others if isinstance(n, str))
            now.update(self.leaves)
            now.subtract(self.joins)
            self.nicks = sorted(now.elements())
            self.encoded = [_dumps(n) for n in self.nicks]
        return self.nicks


#: registry → room → its pending notice (a room is here while one is due).
_crowds: weakref.WeakKeyDictionary[Registry, dict[str, _Crowd]] = weakref.WeakKeyDictionary()


def _flush(registry: Registry, room: str) -> None:
    """Announce a crowded room's joins and leaves since the last notice."""
    crowd = _crowds.get(registry, {}).pop(room, None)
    if crowd is not None and (crowd.joins or crowd.leaves):
        event = ChatEvent("presence_diff", "", joins=tuple(crowd.joins), leaves=tuple(crowd.leaves))
        registry.broker.publish(room, event)


def resumed_event(room: str, recovered: bool, count: int) -> Message:
    """The ``resumed`` event: the answer to ``since=`` (sent to one client, after
    the ``count`` replayed events when ``recovered``)."""
    return Message(
        _dumps({"type": "resumed", "room": room, "recovered": recovered, "count": count})
    )


def parse_since(value: str) -> tuple[str, int]:
    """``"<epoch>:<id>"`` → ``(epoch, id)``.

    Raises:
        ValueError: with a message that says the expected form.
    """
    epoch, sep, offset = value.rpartition(":")
    if not sep or not epoch or not offset.isdigit() or len(value) > 64:
        raise ValueError(f"invalid since {value!r}: expected <epoch>:<id>, e.g. since=3fa2b1c0:42")
    return epoch, int(offset)


def error_event(code: str, detail: str) -> Message:
    """The ``error`` event (sent to one client; its connection stays open)."""
    return Message(_dumps({"type": "error", "code": code, "detail": detail}))


def next_guest_name(application: Any) -> str:
    """``guest-1``, ``guest-2``, …: a name for a user of ``application`` who gave none."""
    counter = application.settings.setdefault(_GUESTS_KEY, itertools.count(1))
    return f"guest-{next(counter)}"


_GUESTS_KEY = "tornws.chat.guests"


class ChatHandler(WebSocketHandler):
    """Chat rooms over two subprotocols: ``chat.json`` (preferred) and ``chat`` (plain text).

    The room is the URL's first path argument (``/chat/<room>``), else
    ``default_room`` (``"lobby"``). The nick is the current user when there is
    one (``get_current_user``), else the ``nick`` query argument, else a
    generated ``guest-N``; an invalid nick is refused with HTTP 400.

    ``room_authorizer``: a function ``(current_user, room) -> bool``; ``False``
    refuses the upgrade with HTTP 403 (``not allowed in room <room>``).

    ``crowd``: from this many members in this process (:data:`CROWD`), a room's
    joins and leaves are announced together, once per :data:`CROWD_INTERVAL`
    (``presence_diff``; see the module docstring).

    A ``chat.json`` client that reconnects with ``since=<epoch>:<id>`` (the last
    event it saw) first gets the events it missed, then a ``resumed`` event; or,
    when the room's history cannot tell them all, only ``resumed`` with
    ``recovered: false``.

    Bad input never costs the connection in ``chat.json``: invalid JSON, an
    unknown type or a binary message get an ``error`` event. A binary message
    in plain text, which has no way to say so, closes the connection with 1003
    (unsupported data). See ``docs/protocol.md``.
    """

    subprotocols = ("chat.json", "chat")

    # Per connection, in slots (see WebSocketHandler.__slots__); the defaults are for
    # subclasses whose initialize() does not call super().initialize().
    __slots__ = (
        "_joined",
        "_seen",
        "_waiting",
        "codec",
        "crowd",
        "default_room",
        "nick",
        "room",
        "room_authorizer",
        "since",
    )
    _slot_defaults: ClassVar[dict[str, Any]] = {
        "room": "",
        "nick": "",
        "codec": TEXT,
        "since": None,
        "room_authorizer": None,
        "default_room": "lobby",
        "crowd": CROWD,
        "_waiting": None,
        "_seen": None,
        "_joined": False,
    }
    room: str
    nick: str
    codec: Codec
    since: tuple[str, int] | None
    room_authorizer: Callable[[Any, str], bool] | None
    default_room: str
    crowd: int
    _waiting: list[Envelope] | None  # (the greeting not sent yet: deliveries wait here)
    _seen: tuple[str, int] | None  # (after a resume: events up to this were seen already)
    _joined: bool

    def initialize(
        self,
        registry: Registry | None = None,
        *,
        default_room: str = "lobby",
        room_authorizer: Callable[[Any, str], bool] | None = None,
        crowd: int = CROWD,
        **options: Any,
    ) -> None:
        super().initialize(registry, **options)
        self.default_room = default_room
        self.room_authorizer = room_authorizer
        self.crowd = crowd

    def before_upgrade(self, room: str | None = None) -> None:
        """Choose the nick (400 if invalid) and check the room (403 if not allowed)."""
        user = self.current_user
        nick = str(user) if user is not None else self.get_query_argument("nick", "")
        if nick:
            try:
                validate_nick(nick)
            except ValueError as exc:
                raise HandshakeError(400, str(exc), kind="nick") from None
        self.nick = nick
        since = self.get_query_argument("since", "")
        if since:
            try:
                self.since = parse_since(since)
            except ValueError as exc:
                raise HandshakeError(400, str(exc), kind="since") from None
        room = room or self.default_room
        if self.room_authorizer is not None and not self.room_authorizer(user, room):
            raise HandshakeError(403, f"not allowed in room {room}", kind="room")

    def open(self, room: str | None = None) -> Awaitable[None] | None:
        self.room = room or self.default_room
        if not self.nick:
            self.nick = next_guest_name(self.application)
        self.codec = JSON if self.selected_subprotocol == "chat.json" else TEXT
        if self.codec is not JSON:
            self.since = None  # plain text does not resume
        registry = self.registry
        if self.since is not None:
            self._waiting = []  # (before joining: not on the direct path until greeted)
        registry.join(self.room, self)
        broker = registry.broker
        ready = broker.ready(self.room)
        if ready is None and self.since is None:
            others = broker.presence_now(self.room)  # (the memory broker: at once)
            if others is not None:
                self._greet(None, others)
                return None
        if self._waiting is None:
            self._waiting = []
            registry.update(self)
        return self._greet_when_ready(ready)

    async def _greet_when_ready(self, ready: Awaitable[None] | None) -> None:
        if ready is not None:
            try:  # (shared by every joiner of the room: not to be cancelled by one)
                await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning(
                    "room %r not ready after %.0f s: greeting anyway", self.room, READY_TIMEOUT
                )
        missed = None
        broker = self.registry.broker
        if self.since is not None:
            missed = await broker.recover(self.room, *self.since)
        crowd = self._crowd()
        if crowd is not None and crowd.nicks is not None:
            others = []  # (the crowd's list, made once per notice)
        else:
            others = await broker.presence(self.room)  # every process's (not this one yet)
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        self._greet(missed, others)

    def _greet(self, missed: list[Envelope] | None, others: list[Any]) -> None:
        """Presence (``others`` and us; or the plain-text welcome), what was missed, then
        our own join, listed in the room's presence from now on."""
        self.registry.broker.presence_add(self.room, self.connection_id, self.nick)
        crowd = self._crowd()
        if crowd is not None:  # the room as of its last notice; we are in the next one
            nicks = crowd.listed(others)
        else:
            nicks = sorted([nick for nick in others if isinstance(nick, str)] + [self.nick])
        if self.codec is JSON:
            if crowd is not None:  # (as presence_event, without sorting or encoding N nicks)
                room, nick, members = _dumps(self.room), _dumps(self.nick), ",".join(crowd.encoded)
                self.send(
                    Message(
                        f'{{"type":"presence","room":{room},"members":[{members}],"nick":{nick}}}'
                    )
                )
            else:
                self.send(presence_event(self.room, nicks, self.nick))
            if self.since is not None:
                self._replay(missed)
        else:
            if crowd is not None:
                nicks = nicks[:]
                bisect.insort(nicks, self.nick)
            here = ", ".join(nicks)
            self.send(Message(f"* you are {self.nick} in {self.room}; here: {here}"))
        waiting, self._waiting = self._waiting, None
        for envelope in waiting or ():
            self.deliver(envelope)
        if waiting is not None and self._seen is None:
            self.registry.update(self)  # greeted: on the direct path from now on
        self._announce("join", crowd)
        self._joined = True

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        if isinstance(message, bytes):
            if self.codec is JSON:
                self.send(error_event("unsupported_data", "send text, not binary"))
            else:
                self.close(CloseCode.UNSUPPORTED_DATA, "the chat takes text messages only")
            return None
        if self.codec is TEXT:
            line = TEXT.decode(message)
            if line:
                self.publish("message", line)
            return None
        try:
            body = JSON.decode(message)
        except ChatInputError as exc:
            self.send(error_event(exc.code, exc.detail))
            return None
        if body["type"] == "message":
            self.publish("message", body["text"])
            return None
        # "presence"
        nicks = self.registry.broker.presence_now(self.room)  # (the memory broker: at once)
        if nicks is None:
            return self._send_presence()
        self.send(presence_event(self.room, nicks))
        return None

    async def _send_presence(self) -> None:
        nicks = await self.all_nicks()
        self.send(presence_event(self.room, nicks))

    def on_close(self) -> None:
        # (A connection that closed before its greeting never said it joined.)
        if not self.room:
            return
        left = self.registry.leave(self.room, self)
        if self._joined:
            self._joined = False
            self.registry.broker.presence_remove(self.room, self.connection_id)  # (first)
            if left:
                self._announce("leave", self._crowd())

    def _replay(self, missed: list[Envelope] | None) -> None:
        """Send what was missed since :attr:`since`, then ``resumed``."""
        assert self.since is not None
        if missed is None:
            self.send(resumed_event(self.room, False, 0))
            return
        for envelope in missed:
            message = envelope.encode(self.codec)
            if message is not None:
                self.send(message)
        epoch, offset = self.since
        self._seen = (epoch, max([offset, *(e.offset for e in missed)]))
        self.send(resumed_event(self.room, True, len(missed)))

    def _crowd(self) -> _Crowd | None:
        """The room's pending notice when it is crowded (made now, due in
        :data:`CROWD_INTERVAL`, if the room just is), else ``None``."""
        registry = self.registry
        rooms = _crowds.get(registry)
        crowd = rooms.get(self.room) if rooms is not None else None
        if crowd is None and registry.count(self.room) >= self.crowd:
            if rooms is None:
                rooms = _crowds[registry] = {}
            crowd = rooms[self.room] = _Crowd()
            asyncio.get_running_loop().call_later(CROWD_INTERVAL, _flush, registry, self.room)
        return crowd

    def _announce(self, kind: str, crowd: _Crowd | None) -> None:
        """Our ``join`` or ``leave``: published now, or in the crowd's next notice."""
        if crowd is None:
            self.publish(kind)
        elif kind == "join":
            crowd.joins.append(self.nick)
        else:
            crowd.leaves.append(self.nick)

    def publish(self, kind: str, text: str = "") -> None:
        """Publish a chat event of this connection to its room."""
        registry = self._registry  # (set by open(); the property is for before)
        if registry is None:
            registry = self.registry
        event = ChatEvent(kind, self.nick, text, origin=self.connection_id)
        registry.broker.publish(self.room, event)  # numbered there, then delivered to all

    def nicks(self) -> list[str]:
        """The nicks of the room's members in this process (see :meth:`all_nicks`)."""
        return [m.nick for m in self.registry.members(self.room) if isinstance(m, ChatHandler)]

    async def all_nicks(self) -> list[str]:
        """The nicks of the room's greeted members in every process the broker reaches
        (one per connection): what the ``presence`` event lists."""
        entries = await self.registry.broker.presence(self.room)
        return [nick for nick in entries if isinstance(nick, str)]

    def direct_delivery(self) -> tuple[Codec, Transport] | None:
        """The registry's shortcut once the connection is greeted and past what it
        was replayed (until then :meth:`deliver` holds or skips); the codec's
        ``echo_own`` makes the registry skip a plain-text sender's own events."""
        if (
            self._waiting is not None
            or self._seen is not None
            or type(self).deliver is not ChatHandler.deliver
        ):
            return None
        return self._direct_target()

    def deliver(self, envelope: Envelope) -> None:
        """Hold envelopes until the greeting is sent, skip what the resume replayed,
        and skip a plain-text user's own events; send the rest (the direct path
        does the same without this call, see :meth:`direct_delivery`)."""
        if self._waiting is not None:
            self._waiting.append(envelope)
            return
        if self._seen is not None:
            epoch, offset = self._seen
            if envelope.epoch == epoch and 0 < envelope.offset <= offset:
                return  # replayed already
            self._seen = None
            self.registry.update(self)  # past the replay: on the direct path from now on
        event = envelope.payload
        if (
            not getattr(self.codec, "echo_own", True)
            and isinstance(event, ChatEvent)
            and event.origin == self.connection_id
        ):
            return
        super().deliver(envelope)
