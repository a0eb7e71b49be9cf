"""What the server puts on the wire: close codes, outgoing messages, frame encoding.

Pure code, no sockets (tested byte by byte in ``tests/test_frames.py``):

- :class:`Message` is one outgoing message, encoded once: its UTF-8 payload and
  its server frame are computed at most once, whatever the number of receivers.
- :func:`encode_frame` builds one unmasked (server) frame.

Parsing what a client sends is the connection core's
(:class:`tornws.connection.Reader`).
"""

from __future__ import annotations

import enum
import struct
from typing import Union

from . import deflate

__all__ = [
    "CloseCode",
    "Data",
    "Message",
    "Opcode",
    "encode_close",
    "encode_frame",
    "is_valid_close_code",
]

#: What a WebSocket message carries: ``str`` for a text message, ``bytes`` for binary.
Data = Union[str, bytes]


class CloseCode(enum.IntEnum):
    """Close codes from RFC 6455 section 7.4.1 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked frame, as a server sends it."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def encode_close(code: int | None = None, reason: str = "") -> bytes:
    """The payload of a close frame: empty, or the code and a UTF-8 reason (123 bytes at most)."""
    if code is None:
        return b""
    text = reason.encode("utf-8")
    if len(text) > 123:
        text = text[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + text


class Message:
    """One outgoing WebSocket message, encoded once.

    Args:
        data: ``str`` makes a text message, ``bytes`` (or any bytes-like) a
            binary one.
    """

    __slots__ = ("_deflated", "_header", "binary", "frame")

    def __init__(self, data: Data | bytearray | memoryview) -> None:
        if isinstance(data, str):
            payload = data.encode("utf-8")
            self.binary = False
        else:
            payload = bytes(data)
            self.binary = True
        #: The whole uncompressed server frame: what every receiver is sent.
        self.frame: bytes = encode_frame(Opcode.BINARY if self.binary else Opcode.TEXT, payload)
        self._header = len(self.frame) - len(payload)
        self._deflated: dict[tuple[int, int, int], bytes] | None = None

    def deflated(self, setting: tuple[int, int, int]) -> bytes:
        """The frame compressed on its own (permessage-deflate, no context takeover)
        with ``setting`` = (level, window bits, memory level), computed once per
        setting: what every receiver with that setting is sent."""
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        frame = cache.get(setting)
        if frame is None:
            opcode = Opcode.BINARY if self.binary else Opcode.TEXT
            payload = deflate.compress(self.payload, *setting)
            frame = cache[setting] = encode_frame(opcode, payload, rsv1=True)
        return frame

    @property
    def payload(self) -> bytes:
        """The message's bytes (UTF-8 for text)."""
        return self.frame[self._header :]

    @property
    def data(self) -> Data:
        """The message as a receiver sees it: ``str`` for text, ``bytes`` for binary."""
        return self.payload if self.binary else self.payload.decode("utf-8")

    def __len__(self) -> int:
        return len(self.frame) - self._header

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.binary == other.binary and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.binary, self.payload))

    def __repr__(self) -> str:
        kind = "binary" if self.binary else "text"
        return f"<Message {kind} {len(self.payload)} bytes>"
