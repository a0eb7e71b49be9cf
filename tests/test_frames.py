"""tornws.frames: messages encoded once, close codes."""

from __future__ import annotations

from tornws.frames import CloseCode, Message


def test_message_text_is_encoded_once_to_utf8() -> None:
    """A str makes a text message whose payload is its UTF-8 bytes."""
    message = Message("héllo")
    assert not message.binary
    assert message.payload == "héllo".encode()
    assert message.data == "héllo"
    assert len(message) == 6


def test_message_bytes_like_makes_binary() -> None:
    """bytes, bytearray and memoryview make binary messages with the same payload."""
    for data in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        message = Message(data)
        assert message.binary
        assert message.data == b"\x00\xff"


def test_message_equality_includes_type() -> None:
    """A text and a binary message with the same bytes differ."""
    assert Message("a") == Message("a")
    assert Message("a") != Message(b"a")
    assert len({Message("a"), Message("a"), Message(b"a")}) == 2


def test_close_codes_have_rfc_values() -> None:
    """The close codes users meet carry RFC 6455's numbers."""
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.UNSUPPORTED_DATA == 1003
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.SERVICE_RESTART == 1012
