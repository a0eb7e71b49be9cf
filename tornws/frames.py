"""What goes on the wire: close codes, outgoing messages, frame encoding and parsing.

Pure code, no sockets (tested byte by byte in ``tests/test_frames.py``):

- :class:`Message` is one outgoing message, encoded once: its UTF-8 payload and
  its server frame are computed at most once, whatever the number of receivers.
- :func:`encode_frame` builds one unmasked (server) frame.
- :class:`Reader` parses what a client sends, frame by frame, across any
  split of the byte stream, and enforces RFC 6455: masking, reserved bits and
  opcodes, control-frame rules, fragmentation order, close codes, UTF-8 and the
  message size limit, raising :class:`~tornws.exceptions.ProtocolError` with
  the close code to fail the connection with.
"""

from __future__ import annotations

import codecs
import enum
import struct
from typing import Any, Callable, Protocol, Union

from . import deflate
from .exceptions import ProtocolError

_c_mask: Callable[[bytes, bytes], bytes] | None
try:  # Tornado's C helper; the pure fallback below is used without it.
    from tornado.speedups import websocket_mask as _c_mask
except ImportError:  # pragma: no cover - tornado built without its extension
    _c_mask = None

__all__ = [
    "CloseCode",
    "Data",
    "Message",
    "Opcode",
    "Reader",
    "ReaderDelegate",
    "encode_close",
    "encode_frame",
    "is_valid_close_code",
    "unmask",
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


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask``, repeated."""
    if _c_mask is not None:
        return bytes(_c_mask(mask, data))
    length = len(data)
    key = int.from_bytes(mask * (length // 4 + 1), "little") & ((1 << (8 * length)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(length, "little")


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


class ReaderDelegate(Protocol):
    """What a :class:`Reader` reports to."""

    def on_data(self, message: Data, /) -> None:
        """A complete text (``str``) or binary (``bytes``) message."""

    def on_ping(self, payload: bytes, /) -> None: ...

    def on_pong(self, payload: bytes, /) -> None: ...

    def on_close_frame(self, code: int | None, reason: str, /) -> None:
        """The peer's close frame; ``code`` is ``None`` when it carried none."""


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Reader:
    """Incremental parser of client (masked) frames into messages and control frames.

    Feed it bytes as they arrive, split anywhere; it calls the delegate once per
    complete message or control frame, in order. Set :attr:`paused` from a
    delegate callback to stop after the current frame (the rest is kept) and
    call :meth:`resume` to continue.

    Args:
        delegate: receives the messages and control frames.
        max_size: the largest message, in bytes, before any decompression
            (larger: :class:`ProtocolError` 1009).
        inflate: decompresses a permessage-deflate message (``None``: the
            extension was not negotiated, and a compressed frame is a 1002).
        require_mask: a server requires masked frames (RFC 6455 5.1).
    """

    __slots__ = (
        "_buffer",
        "_compressed",
        "_decoder",
        "_opcode",
        "_parts",
        "_size",
        "delegate",
        "inflate",
        "max_size",
        "paused",
        "require_mask",
    )

    def __init__(
        self,
        delegate: ReaderDelegate,
        *,
        max_size: int,
        inflate: Callable[[bytes], bytes] | None = None,
        require_mask: bool = True,
    ) -> None:
        self.delegate = delegate
        self.max_size = max_size
        self.inflate = inflate
        self.require_mask = require_mask
        self.paused = False
        self._buffer = bytearray()
        # A fragmented message in progress: its payloads, or for uncompressed text
        # the text decoded so far.
        self._parts: list[Any] | None = None
        self._opcode = 0
        self._size = 0
        self._compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (a partial frame, or what waits while paused)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse ``data`` after whatever was left over.

        Raises:
            ProtocolError: the peer broke the protocol; fail with its ``code``.
        """
        if self._buffer:
            self._buffer += data
            data = self._buffer
            self._buffer = bytearray()
        with memoryview(data) as view:
            position = self._parse(view)
            if position < len(view):
                self._buffer = bytearray(view[position:])

    def resume(self) -> None:
        """Continue parsing what was kept when :attr:`paused` was set."""
        self.paused = False
        if self._buffer:
            self.feed(b"")

    def _parse(self, view: memoryview) -> int:
        end = len(view)
        position = 0
        while position < end and not self.paused:
            if end - position < 2:
                break
            first, second = view[position], view[position + 1]
            opcode = first & 0x0F
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - position < 4:
                    break
                length = (view[position + 2] << 8) | view[position + 3]
                header = 4
            elif length == 127:
                if end - position < 10:
                    break
                length = int.from_bytes(view[position + 2 : position + 10], "big")
                header = 10
            self._check_header(first, opcode, length)
            masked = second & 0x80
            if masked:
                header += 4
            elif self.require_mask:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            stop = position + header + length
            if stop > end:
                break
            payload = bytes(view[position + header : stop])
            if masked:
                mask = bytes(view[position + header - 4 : position + header])
                if mask != b"\x00\x00\x00\x00":
                    payload = unmask(mask, payload)
            position = stop
            if opcode >= 0x8:
                self._control(opcode, payload)
            else:
                self._data(first, opcode, payload)
        return position

    def _check_header(self, first: int, opcode: int, length: int) -> None:
        """Reject a frame from its header alone, before waiting for its payload."""
        if first & 0x30 or (first & 0x40 and (self.inflate is None or opcode not in (1, 2))):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        if opcode >= 0x8:
            if opcode > 0xA:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")
            if not first & 0x80:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
        elif opcode > 0x2:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")
        elif length + self._size > self.max_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == Opcode.PING:
            self.delegate.on_ping(payload)
        elif opcode == Opcode.PONG:
            self.delegate.on_pong(payload)
        elif not payload:
            self.delegate.on_close_frame(None, "")
        else:
            if len(payload) == 1:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame of 1 byte")
            code = (payload[0] << 8) | payload[1]
            if not is_valid_close_code(code):
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "close reason not UTF-8") from None
            self.delegate.on_close_frame(code, reason)

    def _data(self, first: int, opcode: int, payload: bytes) -> None:
        fin = first & 0x80
        if opcode == Opcode.CONTINUATION:
            if self._parts is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation of nothing")
            self._continue(payload, fin)
            return
        if self._parts is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        compressed = bool(first & 0x40)
        if fin:  # the common case: a whole message in one frame
            if compressed:
                payload = self._inflate(payload)
            self._deliver(opcode, payload)
            return
        self._parts = []
        self._opcode = opcode
        self._compressed = compressed
        self._decoder = _utf8_decoder() if opcode == Opcode.TEXT and not compressed else None
        self._continue(payload, fin)

    def _continue(self, payload: bytes, fin: int) -> None:
        parts = self._parts
        assert parts is not None
        self._size += len(payload)
        decoder = self._decoder
        if decoder is not None:
            # Uncompressed text: decoded as it arrives (failing fast on invalid
            # UTF-8), and only once: the pieces of text are what is kept.
            try:
                parts.append(decoder.decode(payload, final=bool(fin)))
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
            if fin:
                self._parts, self._size, self._decoder = None, 0, None
                self.delegate.on_data("".join(parts))
            return
        parts.append(payload)
        if not fin:
            return
        message = b"".join(parts)
        opcode, compressed = self._opcode, self._compressed
        self._parts, self._size, self._decoder = None, 0, None
        if compressed:
            message = self._inflate(message)
        self._deliver(opcode, message)

    def _inflate(self, payload: bytes) -> bytes:
        assert self.inflate is not None
        try:
            return self.inflate(payload)
        except ProtocolError:
            raise
        except Exception as exc:  # zlib.error, or the decompressor's size limit
            if "too large" in str(exc).lower() or type(exc).__name__.endswith("TooLargeError"):
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big") from None
            raise ProtocolError(CloseCode.INVALID_DATA, f"cannot inflate: {exc}") from None

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if opcode == Opcode.TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
            self.delegate.on_data(text)
        else:
            self.delegate.on_data(payload)
