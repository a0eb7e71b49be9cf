"""The connection core: RFC 6455 for one server connection, with no socket and no clock.

Feed it what the peer sent (:meth:`Connection.receive`) and the time; it tells
its delegate (a :class:`ConnectionDelegate`) the messages and control frames
that arrived and hands it the bytes to send (pongs, close frames, keepalive
pings), in order. Everything it decides is decided here, testable by feeding
bytes (``tests/test_connection.py``):

- the state (:class:`State`): ``OPEN``, then ``CLOSING`` once our close frame
  is sent, ``CLOSED`` once the closing handshake is over or the connection
  failed;
- the closing handshake both ways: a peer's close frame is answered with the
  same code (RFC 6455 5.5.1); after ours, the peer's is awaited, and messages
  that arrive meanwhile are not delivered;
- failing the connection (RFC 6455 7.1.7) on what the peer got wrong: 1002 for
  protocol errors, 1007 for invalid UTF-8, 1009 for a message over
  ``max_size`` (:class:`tornws.frames.Reader` finds them);
- inbound limits: a message rate (a token bucket, 1008 ``message rate limit``)
  and an idle timeout (1000 ``idle timeout`` when no message came for that long);
- keepalive: a ping every ``ping_interval`` seconds, 1011 ``keepalive ping
  timeout`` when its pong is ``ping_timeout`` late (:meth:`Connection.check`).

What it does not do, the I/O adapter (:mod:`tornws.transport`) does: reading
and writing the socket, queueing and bounding what the kernel does not take,
write futures, timers, and Tornado.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable, Protocol

from .exceptions import ProtocolError
from .frames import CloseCode, Data, Opcode, Reader, encode_close, encode_frame
from .stats import Stats

__all__ = ["Connection", "ConnectionDelegate", "State"]

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


class ConnectionDelegate(Protocol):
    """What a :class:`Connection` reports to (the I/O adapter)."""

    def send_frame(self, frame: bytes, /) -> None:
        """Send these bytes to the peer, after everything sent before."""

    def on_message(self, data: Data, /) -> None:
        """A complete text (``str``) or binary (``bytes``) message, while ``OPEN``."""

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
        delegate: receives events and bytes to send.
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
        #: Frames are parsed by it; pause it to stop after the current message.
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

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Parse ``data`` (any split of the stream) received at ``now``: messages and
        control frames go to the delegate, in order, until the reader is paused or
        the connection leaves ``OPEN``; a protocol violation fails the connection."""
        if self.state is _CLOSED:
            return
        self.now = now
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)

    def resume(self, now: float) -> None:
        """Unpause the reader and parse what it kept."""
        if self.state is _CLOSED:
            return
        self.now = now
        try:
            self.reader.resume()
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)

    @property
    def paused(self) -> bool:
        """Whether parsing stops after the current message (set by :meth:`pause`)."""
        return self.reader.paused

    def pause(self) -> None:
        """Stop parsing after the current message; what follows waits for :meth:`resume`."""
        self.reader.paused = True

    # Reader delegate

    def on_data(self, message: Data) -> None:
        if self.state is not _OPEN:
            return  # after our close frame, messages are not delivered
        self.messages_in += 1
        if self._rate is not None or self._idle_timeout:
            self._last_in = now = self.now
            if self._rate is not None and self._over_rate(now):
                return
        self._delegate.on_message(message)

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
        self.reader.paused = True  # nothing after a close frame is read
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
        self.reader.paused = True
        self.close(code, reason)
        self._closed()

    def lost(self) -> None:
        """TCP ended (the peer closed it, or it broke): ``CLOSED``, without telling the
        delegate (it knows)."""
        self.state = _CLOSED
        self.reader.paused = True

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

    def on_message(self, data: Data, /) -> None: ...

    def on_data(self, message: Data, /) -> None: ...

    def on_ping(self, payload: bytes, /) -> None: ...

    def on_pong(self, payload: bytes, /) -> None: ...

    def on_close_frame(self, code: int | None, reason: str, /) -> None: ...

    def on_closing(self) -> None: ...

    def on_closed(self) -> None: ...

    def describe(self) -> str:
        return "(finished connection)"


_DETACHED = _Detached()
