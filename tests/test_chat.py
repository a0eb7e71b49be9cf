"""tornws.chat: the two wire formats and input validation (no sockets)."""

from __future__ import annotations

import json

import pytest

from tornws import chat
from tornws.broker import Envelope
from tornws.frames import Message


def envelope(kind: str, nick: str = "ann", text: str = "", offset: int = 3) -> Envelope:
    return Envelope(
        "lobby", offset, chat.ChatEvent(kind, nick, text, time=1700000000.12345), epoch="e1"
    )


def test_text_codec_renders_lines_and_notices() -> None:
    """Plain text: `<nick>: <text>`, `* <nick> joined`, `* <nick> left`."""
    assert chat.TEXT.encode(envelope("message", text="hi")) == Message("ann: hi")
    assert chat.TEXT.encode(envelope("join")) == Message("* ann joined")
    assert chat.TEXT.encode(envelope("leave")) == Message("* ann left")
    assert chat.TEXT.encode(Envelope("lobby", 1, "not an event")) is None


def test_json_codec_events_carry_room_id_time_and_sender() -> None:
    """chat.json: message events have room, id (the offset), time, sender and text."""
    body = json.loads(chat.JSON.encode(envelope("message", text="hé")).data)  # type: ignore[union-attr]
    assert body == {
        "type": "message",
        "room": "lobby",
        "epoch": "e1",
        "id": 3,
        "time": 1700000000.123,
        "sender": "ann",
        "text": "hé",
    }
    join = json.loads(chat.JSON.encode(envelope("join")).data)  # type: ignore[union-attr]
    assert join == {
        "type": "join",
        "room": "lobby",
        "epoch": "e1",
        "id": 3,
        "time": 1700000000.123,
        "nick": "ann",
    }


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"text": "no type"}', "invalid_message"),
        ('{"type": "message"}', "invalid_message"),
        ('{"type": "message", "text": ""}', "invalid_message"),
        ('{"type": "message", "text": 5}', "invalid_message"),
        ('{"type": "message", "text": "' + "x" * 4097 + '"}', "invalid_message"),
        ('{"type": "shout", "text": "hi"}', "unknown_type"),
    ],
)
def test_json_codec_rejects_bad_input_with_a_code(data: str, code: str) -> None:
    """Each kind of bad input gets its error code and a detail saying what is expected."""
    with pytest.raises(chat.ChatInputError) as info:
        chat.JSON.decode(data)
    assert info.value.code == code
    assert info.value.detail


def test_json_codec_accepts_message_and_presence() -> None:
    """The two client types decode to dicts."""
    assert chat.JSON.decode('{"type":"message","text":"hi"}')["text"] == "hi"
    assert chat.JSON.decode('{"type":"presence"}') == {"type": "presence"}


def test_text_codec_strips_line_endings_and_truncates() -> None:
    """A line loses its trailing newline; an overlong one is cut, not refused."""
    assert chat.TEXT.decode("hi\r\n") == "hi"
    assert chat.TEXT.decode("\n") == ""
    assert len(chat.TEXT.decode("x" * 10000)) == chat.TEXT_MAX_LENGTH


@pytest.mark.parametrize("nick", ["ann", "Zoë", "a" * 32, "bob_42"])
def test_validate_nick_accepts(nick: str) -> None:
    """Printable nicks up to 32 characters pass."""
    assert chat.validate_nick(nick) == nick


@pytest.mark.parametrize("nick", ["", "a b", "a" * 33, "tab\there", "nul\x00"])
def test_validate_nick_refuses_with_a_reason(nick: str) -> None:
    """Empty, spaced, overlong or control-character nicks are refused with the rule."""
    with pytest.raises(ValueError, match="1 to 32 characters"):
        chat.validate_nick(nick)


def test_error_and_presence_events() -> None:
    """The direct events have the documented shapes."""
    assert json.loads(chat.error_event("invalid_json", "x").data) == {
        "type": "error",
        "code": "invalid_json",
        "detail": "x",
    }
    assert json.loads(chat.presence_event("r", ["b", "a"]).data) == {
        "type": "presence",
        "room": "r",
        "members": ["a", "b"],
    }


def test_chat_guest_names_count_up_per_application() -> None:
    """Generated chat names are guest-1, guest-2, … per application."""
    from types import SimpleNamespace

    from tornws.chat import next_guest_name

    one, two = SimpleNamespace(settings={}), SimpleNamespace(settings={})
    assert [next_guest_name(one) for _ in range(3)] == ["guest-1", "guest-2", "guest-3"]
    assert next_guest_name(two) == "guest-1"
