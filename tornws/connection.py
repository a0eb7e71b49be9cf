"""The connection core: RFC 6455 for one server connection, with no socket and no clock.

Feed it what the peer sent and the time; it gives back the messages, one at a
time (:meth:`Connection.receive`, then :meth:`Connection.next_message`), and
hands its delegate (a :class:`ConnectionDelegate`) the bytes to send (pongs,
close frames, keepalive pings), in order. Everything it decides is decided
here, testable by feeding bytes (``tests/test_connection.py``, ``tests/test_frames.py``):

- parsing: :class:`Reader` turns the client's byte stream, split anywhere, into
  messages and control frames, and enforces RFC 6455: masking, reserved bits
  and opcodes, control-frame rules, fragmentation order, close codes, UTF-8
  and the message size limit, raising :class:`~tornws.exceptions.ProtocolError`
  with the close code to fail the connection with;
- the state (:class:`State`): ``OPEN``, then ``CLOSING`` once our close frame
  is sent, ``CLOSED`` once the closing handshake is over or the connection
  failed;
- the closing handshake both ways: a peer's close frame is answered with the
  same code (RFC 6455 5.5.1); after ours, the peer's is awaited, and messages
  that arrive meanwhile are not delivered;
- failing the connection (RFC 6455 7.1.7) on what the peer got wrong: 1002 for
  protocol errors, 1007 for invalid UTF-8, 1009 for a message over
  ``max_size``;
- inbound limits: a message rate (a token bucket, 1008 ``message rate limit``)
  and an idle timeout (1000 ``idle timeout`` when no message came for that long);
- keepalive: a ping every ``ping_interval`` seconds, 1011 ``keepalive ping
  timeout`` when its pong is ``ping_timeout`` late (:meth:`Connection.check`).

Messages are pulled, not pushed: the caller takes the next one when it is ready
for it, so holding back (a handler still busy with the last message) is simply
not asking, and what was received meanwhile waits here, parsed no further.

What it does not do, the I/O adapter (:mod:`tornws.transport`) does: reading
and writing the socket, queueing and bounding what the kernel does not take,
write futures, timers, and Tornado.
"""

from __future__ import annotations

import codecs
import enum
import logging
from typing import Any, Callable, Protocol

from .exceptions import ProtocolError
from .frames import CloseCode, Data, Opcode, encode_close, encode_frame, is_valid_close_code
from .stats import Stats

_c_mask: Callable[[bytes, bytes], bytes] | None
try:  # Tornado's C helper; the pure fallback below is used without it.
    from tornado.speedups import websocket_mask as _c_mask
except ImportError:  # pragma: no cover - tornado built without its extension
    _c_mask = None

__all__ = ["Connection", "ConnectionDelegate", "Reader", "ReaderDelegate", "State", "unmask"]

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """Where a connection is in its life (RFC 6455 section 4 and 7)."""

    #: Messages flow both ways.
    OPEN = 1
    #: Our close frame is sent; the peer's is awaited. Nothing more is sent.
    CLOSING = 2
    #: The closing handshake is over, or the connection failed: close TCP once
    #: what is queued is sent. Nothing more is received or sent.
    CLOSED = 3


_OPEN = State.OPEN
_CLOSING = State.CLOSING
_CLOSED = State.CLOSED


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask``, repeated."""
    if _c_mask is not None:
        return bytes(_c_mask(mask, data))
    length = len(data)
    key = int.from_bytes(mask * (length // 4 + 1), "little") & ((1 << (8 * length)) - 1)
    return (int.from_bytes(data, "little") ^ key).to_bytes(length, "little")


class ReaderDelegate(Protocol):
    """What a :class:`Reader` reports control frames to, as it parses them."""

    def on_ping(self, payload: bytes, /) -> None: ...

    def on_pong(self, payload: bytes, /) -> None: ...

    def on_close_frame(self, code: int | None, reason: str, /) -> None:
        """The peer's close frame; ``code`` is ``None`` when it carried none."""


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Reader:
    """Incremental parser of client (masked) frames into messages.

    :meth:`feed` it bytes as they arrive, split anywhere; :meth:`next_message`
    parses up to the next complete message and returns it. Control frames met
    on the way go to the delegate, in order. Nothing after a close frame is
    parsed (:attr:`stopped`).

    Args:
        delegate: receives the control frames.
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
        "require_mask",
        "stopped",
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
        #: Set after a close frame (or by the owner): nothing more is parsed.
        self.stopped = False
        self._buffer = bytearray()  # received, not parsed yet
        # A fragmented message in progress: its payloads, or for uncompressed text
        # the text decoded so far.
        self._parts: list[Any] | None = None
        self._opcode = 0
        self._size = 0
        self._compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (a partial frame, or what waits its turn)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Keep ``data`` after whatever was received before (copied: the caller may
        reuse its buffer)."""
        if not self.stopped:
            self._buffer += data

    def next_message(self) -> Data | None:
        """Parse up to the next complete message and return it: ``str`` for text,
        ``bytes`` for binary; ``None`` when what was fed holds no complete message
        (the rest is kept for the next :meth:`feed`).

        Raises:
            ProtocolError: the peer broke the protocol; fail with its ``code``.
        """
        buffer = self._buffer
        while buffer and not self.stopped:
            end = len(buffer)
            if end < 2:
                return None
            first, second = buffer[0], buffer[1]
            opcode = first & 0x0F
            length = second & 0x7F
            header = 2
            if length == 126:
                if end < 4:
                    return None
                length = (buffer[2] << 8) | buffer[3]
                header = 4
            elif length == 127:
                if end < 10:
                    return None
                length = int.from_bytes(buffer[2:10], "big")
                header = 10
            self._check_header(first, opcode, length)
            masked = second & 0x80
            if masked:
                header += 4
            elif self.require_mask:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            stop = header + length
            if stop > end:
                return None
            payload = bytes(buffer[header:stop])
            if masked:
                mask = bytes(buffer[header - 4 : header])
                if mask != b"\x00\x00\x00\x00":
                    payload = unmask(mask, payload)
            del buffer[:stop]  # (from the front of a bytearray: no copy of the rest)
            if opcode >= 0x8:
                self._control(opcode, payload)
                continue
            message = self._data(first, opcode, payload)
            if message is not None:
                return message
        return None

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
        else:
            code: int | None = None
            reason = ""
            if payload:
                if len(payload) == 1:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame of 1 byte")
                code = (payload[0] << 8) | payload[1]
                if not is_valid_close_code(code):
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
                try:
                    reason = payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(CloseCode.INVALID_DATA, "close reason not UTF-8") from None
            self.stopped = True  # nothing after a close frame is read
            self._buffer.clear()
            self.delegate.on_close_frame(code, reason)

    def _data(self, first: int, opcode: int, payload: bytes) -> Data | None:
        """The message this data frame completes, if it does."""
        fin = first & 0x80
        if opcode == Opcode.CONTINUATION:
            if self._parts is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation of nothing")
            return self._continue(payload, fin)
        if self._parts is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        compressed = bool(first & 0x40)
        if fin:  # the common case: a whole message in one frame
            if compressed:
                payload = self._inflate(payload)
            return self._decode(opcode, payload)
        self._parts = []
        self._opcode = opcode
        self._compressed = compressed
        self._decoder = _utf8_decoder() if opcode == Opcode.TEXT and not compressed else None
        return self._continue(payload, fin)

    def _continue(self, payload: bytes, fin: int) -> Data | None:
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
            if not fin:
                return None
            self._parts, self._size, self._decoder = None, 0, None
            return "".join(parts)
        parts.append(payload)
        if not fin:
            return None
        message = b"".join(parts)
        opcode, compressed = self._opcode, self._compressed
        self._parts, self._size, self._decoder = None, 0, None
        if compressed:
            message = self._inflate(message)
        return self._decode(opcode, message)

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

    @staticmethod
    def _decode(opcode: int, payload: bytes) -> Data:
        if opcode == Opcode.TEXT:
            try:
                return payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        return payload


class ConnectionDelegate(Protocol):
    """What a :class:`Connection` reports to (the I/O adapter)."""

    def send_frame(self, frame: bytes, /) -> None:
        """Send these bytes to the peer, after everything sent before."""

    def on_ping(self, payload: bytes, /) -> None:
        """The peer's ping (answered already)."""

    def on_pong(self, payload: bytes, /) -> None:
        """The peer's pong."""

    def on_closing(self) -> None:
        """The state left ``OPEN`` (our close frame is sent, or the connection ended):
        send no more messages."""

    def on_closed(self) -> None:
        """The state became ``CLOSED``: close TCP once what is queued is sent."""

    def describe(self) -> str:
        """Who this is, for log lines (``<path> peer=<address>``)."""


class Connection:
    """One server connection's protocol state (see the module docstring).

    Args:
        delegate: receives the bytes to send and what happens to the connection.
        max_size: the largest incoming message in bytes (larger: 1009).
        inflate: decompresses a permessage-deflate message (``None``: not negotiated).
        ping_interval: seconds between keepalive pings (0: none).
        ping_timeout: seconds a pong may be late before the connection is closed
            (0: never).
        rate_limit: ``(messages, seconds)``: bursts of ``messages``, that many per
            ``seconds`` on average; faster fails the connection with 1008.
        idle_timeout: seconds without a message before the connection is closed.
        now: the time the connection opened (any monotonic clock, in seconds).
        stats: where policy closes and ping round trips are counted.
    """

    __slots__ = (
        "_burst",
        "_delegate",
        "_idle_timeout",
        "_last_in",
        "_last_ping",
        "_ping_sent_at",
        "_rate",
        "_refilled_at",
        "_stats",
        "_tokens",
        "close_code",
        "close_reason",
        "messages_in",
        "now",
        "ping_interval",
        "ping_timeout",
        "reader",
        "state",
    )

    def __init__(
        self,
        delegate: ConnectionDelegate,
        *,
        max_size: int,
        inflate: Callable[[bytes], bytes] | None = None,
        ping_interval: float = 0.0,
        ping_timeout: float = 0.0,
        rate_limit: tuple[int, float] | None = None,
        idle_timeout: float | None = None,
        now: float = 0.0,
        stats: Stats | None = None,
    ) -> None:
        self._delegate = delegate
        self.state = _OPEN
        #: The code and reason of the peer's close frame (``None``: none came, or it had none).
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: Frames are parsed by it.
        self.reader = Reader(self, max_size=max_size, inflate=inflate)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._stats = stats if stats is not None else Stats()
        #: The time given by the last :meth:`receive` or :meth:`check`.
        self.now = now
        self._last_in = now
        self._last_ping = now
        self._ping_sent_at: float | None = None  # a ping awaits its pong since then
        self._rate: float | None = None
        self._burst = self._tokens = 0.0
        self._refilled_at = now
        if rate_limit is not None:
            count, seconds = rate_limit
            self._rate = count / seconds
            self._burst = self._tokens = float(count)
        self._idle_timeout = idle_timeout or None
        self.messages_in = 0

    # Input

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> Data | None:
        """Take ``data`` (any split of the stream) received at ``now`` and return the
        first message it completes (``str`` for text, ``bytes`` for binary), or
        ``None``. Take the rest, if any, with :meth:`next_message`."""
        self.feed(data)
        return self.next_message(now)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Keep ``data`` for later :meth:`next_message` calls, parsing nothing yet
        (while the caller holds back: a handler is still busy)."""
        if self.state is not _CLOSED:
            self.reader.feed(data)

    def next_message(self, now: float | None = None) -> Data | None:
        """The next complete message from what was received, or ``None``.

        Control frames met on the way are handled (a ping answered, a close frame
        echoed); messages that arrive after our close frame are dropped; a
        protocol violation, or a message over the rate limit, fails the
        connection (and gives ``None``).
        """
        if now is not None:
            self.now = now
        reader = self.reader
        try:
            while self.state is not _CLOSED:
                message = reader.next_message()
                if message is None:
                    return None
                if self.state is not _OPEN:
                    continue  # after our close frame, messages are not delivered
                self.messages_in += 1
                if self._rate is not None or self._idle_timeout:
                    self._last_in = now = self.now
                    if self._rate is not None and self._over_rate(now):
                        return None
                return message
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
        return None

    # Reader delegate

    def on_ping(self, payload: bytes) -> None:
        if self.state is _OPEN:
            self._delegate.send_frame(encode_frame(Opcode.PONG, payload))
        self._delegate.on_ping(payload)

    def on_pong(self, payload: bytes) -> None:
        if self._ping_sent_at is not None:
            self._stats.ping_rtt_seconds.observe(self.now - self._ping_sent_at)
            self._ping_sent_at = None
        self._delegate.on_pong(payload)

    def on_close_frame(self, code: int | None, reason: str) -> None:
        self.close_code = code
        self.close_reason = reason or None
        if self.state is _OPEN:
            # Echo the code (RFC 6455 5.5.1), then close TCP.
            self.state = _CLOSING
            self._delegate.send_frame(encode_frame(Opcode.CLOSE, encode_close(code, "")))
            self._delegate.on_closing()
        self._closed()

    # Decisions

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the closing handshake: send a close frame (``OPEN`` → ``CLOSING``).

        ``reason`` without ``code`` means 1000. Does nothing when not ``OPEN``.
        """
        if self.state is not _OPEN:
            return
        if code is None and reason is not None:
            code = CloseCode.NORMAL_CLOSURE
        self.state = _CLOSING
        self._delegate.send_frame(encode_frame(Opcode.CLOSE, encode_close(code, reason or "")))
        self._delegate.on_closing()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame with ``code`` when
        still ``OPEN``, then ``CLOSED`` without waiting for the peer's."""
        if self.state is _CLOSED:
            return
        log.info("failing connection %s: %d %s", self._delegate.describe(), code, reason)
        self.reader.stopped = True
        self.close(code, reason)
        self._closed()

    def lost(self) -> None:
        """TCP ended (the peer closed it, or it broke): ``CLOSED``, without telling the
        delegate (it knows)."""
        self.state = _CLOSED
        self.reader.stopped = True

    def check(self, now: float) -> float | None:
        """Apply what is due at ``now``: the idle timeout, a keepalive ping, a pong
        that is late. Returns when to call again (``None``: no need)."""
        self.now = now
        if self.state is not _OPEN:
            return None
        due: float | None = None
        timeout = self._idle_timeout
        if timeout:
            idle_until = self._last_in + timeout
            if now >= idle_until:
                self._stats.idle_closes += 1
                log.info(
                    "closing idle connection %s: no message in %.1f s",
                    self._delegate.describe(),
                    timeout,
                )
                self.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
                return None
            due = idle_until
        interval = self.ping_interval
        if interval > 0:
            sent_at = self._ping_sent_at
            # A new ping once the interval is over, unless one awaits its pong against a
            # timeout (with no timeout, pings go on every interval, pong or not).
            if now >= self._last_ping + interval and (sent_at is None or self.ping_timeout <= 0):
                sent_at = self._ping_sent_at = self._last_ping = now
                self._delegate.send_frame(encode_frame(Opcode.PING, b""))
            if sent_at is not None and self.ping_timeout > 0:
                late_at = sent_at + self.ping_timeout
                if now >= late_at:
                    log.info("closing connection: no pong within %.1f s", self.ping_timeout)
                    self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    return None
                next_check = late_at  # no new ping while one is awaited
            else:
                next_check = self._last_ping + interval
            due = next_check if due is None else min(due, next_check)
        return due

    def detach(self) -> None:
        """``CLOSED`` for good: forget the delegate (and the reader its core), so that a
        finished connection is freed by reference counting, not left to the collector."""
        self.state = _CLOSED
        self._delegate = _DETACHED
        self.reader.delegate = _DETACHED

    # Helpers

    def _over_rate(self, now: float) -> bool:
        """Take a token for one message; fail the connection (1008) when there is none."""
        assert self._rate is not None
        tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if tokens < 1.0:
            self._stats.rate_limited += 1
            self.fail(CloseCode.POLICY_VIOLATION, "message rate limit")
            return True
        self._tokens = tokens - 1.0
        return False

    def _closed(self) -> None:
        self.state = _CLOSED
        self._delegate.on_closed()


class _Detached:
    """The delegate of a finished connection: takes everything, does nothing."""

    def send_frame(self, frame: bytes, /) -> None: ...

    def on_ping(self, payload: bytes, /) -> None: ...

    def on_pong(self, payload: bytes, /) -> None: ...

    def on_close_frame(self, code: int | None, reason: str, /) -> None: ...

    def on_closing(self) -> None: ...

    def on_closed(self) -> None: ...

    def describe(self) -> str:
        return "(finished connection)"


_DETACHED = _Detached()
