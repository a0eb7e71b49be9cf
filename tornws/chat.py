"""The chat: its events and the two wire formats (pure, no sockets).

Two subprotocols speak the same rooms:

- ``chat.json``: JSON objects, one per WebSocket message (``docs/protocol.md``).
- ``chat``: plain text, one chat line per WebSocket message; others in the room
  receive ``<nick>: <text>``, and ``* <nick> joined`` / ``* <nick> left``.

A published :class:`ChatEvent` is encoded at most once per format per message,
whatever the number of receivers (:meth:`tornws.broker.Envelope.encode`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, ClassVar

from .broker import Envelope
from .frames import Message

__all__ = [
    "JSON",
    "NICK_MAX_LENGTH",
    "ROOM_PATTERN",
    "TEXT",
    "ChatEvent",
    "ChatInputError",
    "JsonCodec",
    "TextCodec",
    "error_event",
    "parse_since",
    "presence_event",
    "resumed_event",
    "validate_nick",
]

#: Room names: what ``/chat/<room>`` accepts (anything else is a 404).
ROOM_PATTERN = r"[A-Za-z0-9_.~-]{1,64}"
NICK_MAX_LENGTH = 32
_NICK_RE = re.compile(rf"[^\s\x00-\x1f\x7f]{{1,{NICK_MAX_LENGTH}}}")
#: The longest chat line accepted, in characters (longer: an ``error`` event, or
#: for plain text a truncated line). The WebSocket size limit applies first.
TEXT_MAX_LENGTH = 4096


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
    """

    type: str
    nick: str
    text: str = ""
    time: float = dataclasses.field(default_factory=time.time)
    origin: str = ""


class ChatInputError(ValueError):
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


def _dumps(body: dict[str, Any]) -> str:
    """Compact JSON, non-ASCII kept as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def presence_event(room: str, nicks: list[str]) -> Message:
    """The ``presence`` event: who is in the room now (sent to one client)."""
    return Message(_dumps({"type": "presence", "room": room, "members": sorted(nicks)}))


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
