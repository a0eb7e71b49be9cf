"""tornws's data plane: what runs a WebSocket connection after Tornado's upgrade.

Tornado parses the HTTP request, runs the handler's hooks (``prepare``,
``check_origin``, ``select_subprotocol``, ``get_compression_options``) and
sends the 101 exactly as usual. Then :class:`Protocol` takes the socket over
from Tornado's ``IOStream``:

- **Reading**: the socket is registered with the event loop once; each time it
  is readable, one ``recv_into`` fills a buffer shared by every connection, and
  every complete frame in it is parsed (:class:`tornws.frames.Reader`) and
  dispatched. No future is awaited per frame.
- **Writing**: a frame goes straight to the socket with ``send`` when nothing is
  queued for this connection; only what the kernel does not take is queued
  (in order) and written when the socket is writable. No Task, Future or
  closure is created per message; ``write_message`` returns an already-done
  future unless the write had to be queued.
- **Fan-out** hands the same frame bytes (:attr:`tornws.frames.Message.frame`)
  to every receiver.

Every public ``WebSocketHandler`` behaviour is kept: ``write_message`` returns
an awaitable and raises ``WebSocketClosedError``; a coroutine ``on_message``
pauses reading until it finishes (order kept); ``close(code, reason)`` flushes,
then closes, aborting after 5 s; ``ping``/``on_ping``/``on_pong``;
``close_code``/``close_reason``; ``selected_subprotocol``; permessage-deflate
(Tornado's negotiation and compressors); ``websocket_ping_interval``/``timeout``
and ``websocket_max_message_size``. TCP_NODELAY is on.

Private Tornado parts this relies on (checked against each Tornado release in
the supported range by the test suite): ``WebSocketProtocol13`` (subclassed for
its handshake), ``IOStream._read_buffer``/``_read_buffer_size`` (bytes read past
the request), ``IOStream._state``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from typing import Any

import tornado.escape
import tornado.websocket

from . import deflate
from .exceptions import ProtocolError
from .frames import CloseCode, Message, Opcode, Reader, encode_close, encode_frame
from .stats import Stats

__all__ = ["CLOSE_TIMEOUT", "Protocol"]

log = logging.getLogger(__name__)

#: Seconds a closing connection waits for the peer before the socket is closed anyway.
CLOSE_TIMEOUT = 5.0
#: Counters of connections whose handler keeps none (plain Tornado handlers).
_UNCOUNTED = Stats()
#: Messages handled from one read before yielding to the event loop, so that a
#: flood on one connection cannot starve the others.
YIELD_EVERY = 256


class _Batch:
    """Coalescing of the frames that one read's messages produce (see ``Protocol.on_data``).

    While one read is being handled, once a second message is being dispatched,
    frames for every connection are held (``active``) and each connection that
    got some is sent them all in one ``send`` when the read is done: a burst of
    N published messages costs each receiver one system call, not N. A single
    message per read (the common case) is never held.
    """

    __slots__ = ("active", "dirty")

    def __init__(self) -> None:
        self.active = False
        self.dirty: list[Protocol] = []

    def flush(self) -> None:
        self.active = False
        dirty, self.dirty = self.dirty, []
        for protocol in dirty:
            protocol._uncork()


_batch = _Batch()

#: One receive buffer shared by every connection (parsing copies what it keeps).
_RECEIVE = bytearray(256 * 1024)
_RECEIVE_VIEW = memoryview(_RECEIVE)


class Protocol(tornado.websocket.WebSocketProtocol13):
    """A ``WebSocketProtocol13`` whose data plane is tornws's (see the module docstring)."""

    @classmethod
    def for_handler(cls, handler: tornado.websocket.WebSocketHandler) -> Protocol | None:
        """The data plane for ``handler``'s request, built from its settings
        (``None`` for a WebSocket version other than 13: Tornado then answers 426)."""
        if handler.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        params = tornado.websocket._WebSocketParams(
            ping_interval=handler.ping_interval,
            ping_timeout=handler.ping_timeout,
            max_message_size=handler.max_message_size,
            compression_options=handler.get_compression_options(),
        )
        protocol = cls(handler, False, params)
        protocol.max_outgoing = getattr(handler, "max_outgoing", 0)
        protocol.drop_when_slow = getattr(handler, "slow_consumer", "close") == "drop"
        protocol._stats = getattr(handler, "tornws_stats", _UNCOUNTED)
        rate_limit = getattr(handler, "rate_limit", None)
        if rate_limit is not None:
            count, seconds = rate_limit
            protocol._rate = count / seconds
            protocol._burst = protocol._tokens = float(count)
        protocol._idle_timeout = getattr(handler, "idle_timeout", None)
        return protocol

    # The per-delivery fields live in slots, inline in the object: a fan-out to
    # thousands touches one or two cache lines per receiver, not a dict's.
    __slots__ = (  # noqa: RUF023 (the order is the layout)
        # Read on every delivery: first, so that they share cache lines.
        "server_terminated",
        "_finished",
        "_queued",
        "max_outgoing",
        "_compressor",
        "_shared_deflate",
        "messages_out",
        "_sock",
        "_sent",
        "_waiters",
        # The rest.
        "client_terminated",
        "drop_when_slow",
        "_stats",
        "_fd",
        "_loop",
        "_reader",
        "_queue",
        "_held",
        "_held_size",
        "_done",
        "_writing",
        "_close_after_flush",
        "_close_timer",
        "_ping_timer",
        "_opened",
        "_handled",
        "_ping_sent_at",
        "_last_ping",
        "_rate",
        "_burst",
        "_tokens",
        "_refilled_at",
        "_idle_timeout",
        "_idle_timer",
        "_last_in",
        "messages_in",
        "bytes_in",
    )

    def __init__(self, handler: Any, mask_outgoing: bool, params: Any) -> None:
        #: Bytes that may wait for a slow receiver before its policy applies (0: no bound).
        self.max_outgoing = 0
        #: The slow-consumer policy: skip this receiver's messages over the bound
        #: (``True``), or close the connection with 1008 (``False``).
        self.drop_when_slow = False
        self._stats = _UNCOUNTED
        # Inbound rate limit (token bucket; off when _rate is None) and idle timeout.
        self._rate: float | None = None
        self._burst = self._tokens = 0.0
        self._refilled_at = 0.0
        self._idle_timeout: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_in = 0.0
        # (level, window bits, memory level) when permessage-deflate runs without
        # server context takeover: a broadcast is then compressed once for all.
        self._shared_deflate: tuple[int, int, int] | None = None
        super().__init__(handler, mask_outgoing, params)
        self._sock: socket.socket | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: Reader | None = None
        self._queue: collections.deque[memoryview] = collections.deque()
        self._queued = 0  # bytes in _queue
        self._sent = 0  # bytes the kernel took, ever (given to _send, ever: + _queued)
        self._held: list[bytes] | None = None  # frames held by the current _Batch
        self._held_size = 0
        # Write futures, with the byte count after which each is done (None: none).
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] | None = None
        self._done: asyncio.Future[None] | None = None
        self._writing = False  # a writer callback is registered
        self._finished = False  # socket closed, handler told
        self._close_after_flush = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._opened = False  # open() returned: messages may be delivered
        self._handled = 0  # messages handled in the current slice (see YIELD_EVERY)
        self._ping_sent_at: float | None = None  # a ping awaits its pong since then
        self._last_ping = 0.0
        #: Counters, added to the registry's stats when the connection ends.
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0

    # permessage-deflate: tornws answers the offer (tornws.deflate), Tornado builds
    # the compressors from that answer and sends it.

    def _parse_extensions_header(self, headers: Any) -> list[tuple[str, dict[str, Any]]]:
        options = self._compression_options
        if options is None:
            return []
        for name, offer in deflate.parse_offers(headers.get("Sec-WebSocket-Extensions", "")):
            if name == "permessage-deflate":
                answer = deflate.negotiate(offer, options)
                if answer is not None:
                    return [(name, answer)]
                log.info("declined a permessage-deflate offer: %s", offer)
        return []

    def _create_compressors(
        self,
        side: str,
        agreed_parameters: dict[str, Any],
        compression_options: dict[str, Any] | None = None,
    ) -> None:
        super()._create_compressors(side, agreed_parameters, compression_options)
        if "server_no_context_takeover" in agreed_parameters:
            # The settings of the compressor Tornado just built from the answer.
            compressor = self._compressor
            assert compressor is not None
            self._shared_deflate = (
                compressor._compression_level,
                compressor._max_wbits,
                compressor._mem_level,
            )

    # Taking over from Tornado

    def start_pinging(self) -> None:
        """Called by Tornado right after it detached the stream from HTTP: take the socket.

        (Then keepalive starts, as the name says.)
        """
        stream = self.stream
        self._loop = asyncio.get_running_loop()
        if stream.writing():  # the 101 is not fully sent: let Tornado finish
            stream.write(b"").add_done_callback(self._on_101_flushed)
        else:
            self._take_socket()
        interval = self.ping_interval
        now = self._last_in = self._refilled_at = self._loop.time()
        if interval > 0:
            self._last_ping = now
            self._ping_timer = self._loop.call_later(interval, self._keepalive)
        if self._idle_timeout:
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _on_101_flushed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # a closed stream is handled by _take_socket
        self._take_socket()

    def _take_socket(self) -> None:
        stream = self.stream
        if stream.closed():
            self._abort()
            return
        sock = stream.socket
        leftover = bytes(stream._read_buffer[: stream._read_buffer_size])
        if stream._state is not None:
            stream.io_loop.remove_handler(sock)
            stream._state = None
        self._sock = sock
        self._fd = sock.fileno()
        with contextlib.suppress(OSError):  # not TCP (a Unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decompressor = self._decompressor
        self._reader = Reader(
            self,
            max_size=self.params.max_message_size,
            inflate=decompressor.decompress if decompressor is not None else None,
        )
        if self._queue:
            self._flush()
        if leftover:
            reader = self._reader
            reader.paused = not self._opened  # kept until open() has returned
            self._receive(leftover)
        if self._opened:
            self._start_reading()

    async def _receive_frame_loop(self) -> None:
        # Tornado awaits this once open() has returned. tornws's reading runs
        # from the event loop's reader callback: start it and return.
        self._opened = True
        if self._reader is not None and not self._finished:
            self._resume(None)

    def _start_reading(self) -> None:
        if self._sock is not None and not self.client_terminated and not self._finished:
            assert self._loop is not None
            self._loop.add_reader(self._fd, self._on_readable)

    # Reading

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            count = sock.recv_into(_RECEIVE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort()
            return
        if count == 0:  # the peer closed TCP
            self._abort()
            return
        self._receive(_RECEIVE_VIEW[:count])

    def _receive(self, data: bytes | memoryview) -> None:
        reader = self._reader
        assert reader is not None
        self._handled = 0
        self.bytes_in += len(data)
        try:
            reader.feed(data)
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
        finally:
            if _batch.active:
                _batch.flush()

    def _who(self) -> str:
        """``<path> peer=<address>``, for log lines."""
        request = getattr(self.handler, "request", None)
        if request is None:
            return "? peer=?"
        return f"{request.path} peer={request.remote_ip}"

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, then close TCP."""
        log.info("failing connection %s: %d %s", self._who(), code, reason)
        self.client_terminated = True  # read nothing more
        self.close(code, reason)

    # Reader delegate

    def on_data(self, message: str | bytes) -> None:
        if self.client_terminated or self.server_terminated:
            return  # closing: messages after our close frame are not delivered
        self.messages_in += 1
        if (self._rate is not None or self._idle_timeout) and self._over_rate():
            return
        if self._handled:  # a second message from this read: hold frames (see _Batch)
            _batch.active = True
        result = self._run_callback(self.handler.on_message, message)
        reader = self._reader
        if reader is None:  # the connection ended inside on_message
            return
        if result is not None:  # a coroutine: keep order by reading nothing until it is done
            self._pause(reader)
            result.add_done_callback(self._resume)
            return
        self._handled += 1
        if self._handled >= YIELD_EVERY:  # let other connections run, then go on
            self._pause(reader)
            assert self._loop is not None
            self._loop.call_soon(self._resume, None)

    def _over_rate(self) -> bool:
        """Note the message's arrival; fail the connection (1008) if it is over the rate."""
        assert self._loop is not None
        now = self._last_in = self._loop.time()
        rate = self._rate
        if rate is None:
            return False
        tokens = min(self._burst, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if tokens < 1.0:
            self._stats.rate_limited += 1
            self._fail(CloseCode.POLICY_VIOLATION, "message rate limit")
            return True
        self._tokens = tokens - 1.0
        return False

    def _check_idle(self) -> None:
        self._idle_timer = None
        timeout = self._idle_timeout
        if self.is_closing() or not timeout:
            return
        assert self._loop is not None
        due = self._last_in + timeout
        if self._loop.time() >= due:
            self._stats.idle_closes += 1
            log.info("closing idle connection %s: no message in %.1f s", self._who(), timeout)
            self.close(CloseCode.NORMAL_CLOSURE, "idle timeout")
        else:
            self._idle_timer = self._loop.call_at(due, self._check_idle)

    def _pause(self, reader: Reader) -> None:
        reader.paused = True
        self._stop_reading()

    def _resume(self, _: object) -> None:
        reader = self._reader
        if reader is None or self._finished:
            return
        self._handled = 0
        try:
            reader.resume()
        except ProtocolError as exc:
            self._fail(exc.code, exc.reason)
            return
        finally:
            if _batch.active:
                _batch.flush()
        if not reader.paused:
            self._start_reading()

    def on_ping(self, payload: bytes) -> None:
        self._send(encode_frame(Opcode.PONG, payload))
        self._run_callback(self.handler.on_ping, payload)

    def on_pong(self, payload: bytes) -> None:
        if self._ping_sent_at is not None and self._loop is not None:
            self._stats.ping_rtt_seconds.observe(self._loop.time() - self._ping_sent_at)
        self._ping_sent_at = None
        self._received_pong = True
        self._run_callback(self.handler.on_pong, payload)

    def on_close_frame(self, code: int | None, reason: str) -> None:
        self.client_terminated = True
        self.close_code = code
        self.close_reason = reason or None
        self._stop_reading()
        self.close(code)  # echo the code (RFC 6455 5.5.1); closes TCP once flushed

    # Writing

    def send_message(self, message: Message) -> bool:
        """Queue ``message`` (its shared frame unless compressing); ``False`` if closing.

        The fan-out hot path: when nothing is queued, the frame goes straight to
        the socket (``_send``, inlined), with no allocation.
        """
        if self.server_terminated or self._finished:
            return False
        queued = self._queued
        if queued and queued + len(message) > self.max_outgoing > 0:
            return self._slow()  # before compressing: the peer's deflate context must not skip
        if self._compressor is None:
            frame = message.frame
        elif self._shared_deflate is not None:
            frame = message.deflated(self._shared_deflate)
        else:
            opcode = Opcode.BINARY if message.binary else Opcode.TEXT
            frame = encode_frame(opcode, self._compressor.compress(message.payload), rsv1=True)
        self.messages_out += 1
        # _send's socket path, inlined: one Python call less per receiver.
        sock = self._sock
        if queued or sock is None or _batch.active:
            self._send(frame)
            return True
        try:
            sent = sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._abort()
            return True
        self._sent += sent
        if sent < len(frame) or self._waiters is not None:
            self._after_send(frame, sent)
        return True

    def write_message(
        self, message: str | bytes | dict[str, Any], binary: bool = False
    ) -> asyncio.Future[None]:
        if self.server_terminated or self._finished:
            raise tornado.websocket.WebSocketClosedError()
        if isinstance(message, dict):
            message = tornado.escape.json_encode(message)
        payload = tornado.escape.utf8(message)
        if self._queued and self._queued + len(payload) > self.max_outgoing > 0:
            self._slow()
            if self.server_terminated:  # policy "close"
                raise tornado.websocket.WebSocketClosedError()
            return self._write_future()  # "drop": done once what is queued is sent
        opcode = Opcode.BINARY if binary else Opcode.TEXT
        if self._compressor is not None:
            self._send(encode_frame(opcode, self._compressor.compress(payload), rsv1=True))
        else:
            self._send(encode_frame(opcode, payload))
        self.messages_out += 1
        return self._write_future()

    def write_ping(self, data: bytes) -> None:
        if self.server_terminated or self._finished:
            raise tornado.websocket.WebSocketClosedError()
        self._send(encode_frame(Opcode.PING, data))

    def _write_future(self) -> asyncio.Future[None]:
        """Done now if nothing is queued; else done once the kernel took this write."""
        assert self._loop is not None
        if not self._queued and self._held is None:
            done = self._done
            if done is None:
                done = self._done = self._loop.create_future()
                done.set_result(None)
            return done
        future = self._loop.create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = collections.deque()
        waiters.append((self._sent + self._queued + self._held_size, future))
        return future

    def _send(self, frame: bytes, hold: bool = True) -> None:
        """Send ``frame``: held while a batch is active, else straight to the socket
        when nothing is queued, else (and whatever the kernel leaves) queued in order."""
        if hold and _batch.active:
            held = self._held
            if held is None:
                self._held = [frame]
                _batch.dirty.append(self)
            else:
                held.append(frame)
            self._held_size += len(frame)
            return
        sock = self._sock
        if self._queued or sock is None:
            self._queue.append(memoryview(frame))
            self._queued += len(frame)
            self._stats.outgoing_bytes += len(frame)
            return
        try:
            sent = sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._abort()
            return
        self._sent += sent
        if sent < len(frame) or self._waiters is not None:
            self._after_send(frame, sent)

    def _after_send(self, frame: bytes, sent: int) -> None:
        """Queue what the kernel did not take of ``frame``, or resolve write futures."""
        if sent < len(frame):
            self._queue.append(memoryview(frame)[sent:])
            self._queued += len(frame) - sent
            self._stats.outgoing_bytes += len(frame) - sent
            self._start_writing()
        else:
            self._resolve_waiters()

    def _resolve_waiters(self) -> None:
        waiters = self._waiters
        if waiters is None:
            return
        while waiters and waiters[0][0] <= self._sent:
            future = waiters.popleft()[1]
            if not future.done():
                future.set_result(None)
        if not waiters:
            self._waiters = None

    def _reject_waiters(self, beyond: int = -1) -> None:
        """Fail the write futures of bytes past ``beyond`` (all by default): they will
        not be sent."""
        closed = tornado.websocket.WebSocketClosedError()
        waiters = self._waiters
        if waiters is None:
            return
        while waiters and waiters[-1][0] > beyond:
            future = waiters.pop()[1]
            if not future.done():
                future.set_exception(closed)
                future.exception()  # a caller that never awaits it is not an error
        if not waiters:
            self._waiters = None

    def _uncork(self) -> None:
        """Send what the batch held for this connection, in one piece."""
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_size = 0
        if not self._finished:
            self._send(held[0] if len(held) == 1 else b"".join(held), hold=False)

    def _start_writing(self) -> None:
        if not self._writing and self._sock is not None:
            assert self._loop is not None
            self._writing = True
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        sock = self._sock
        queue = self._queue
        if sock is None:
            return
        while queue:
            chunk = queue[0]
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._abort()
                return
            self._sent += sent
            self._queued -= sent
            self._stats.outgoing_bytes -= sent
            if sent < len(chunk):
                queue[0] = chunk[sent:]
                break
            queue.popleft()
        self._resolve_waiters()
        if queue:
            self._start_writing()
        else:
            if self._writing:
                assert self._loop is not None
                self._writing = False
                self._loop.remove_writer(self._fd)
            if self._close_after_flush:
                self._finish()

    @property
    def bytes_out(self) -> int:
        """Bytes the kernel took for this connection (frames of every kind)."""
        return self._sent

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this connection that the kernel has not taken yet."""
        return self._queued

    def _slow(self) -> bool:
        """A message would take this receiver's queue over ``max_outgoing``:
        skip it (policy ``drop``) or close the connection (``close``). ``False``:
        the message is not sent."""
        if self.drop_when_slow:
            self._stats.slow_consumer_drops += 1
            return False
        queued = self._queued
        self._stats.slow_consumer_closes += 1
        log.warning(
            "closing slow consumer %s: %d bytes unsent, limit %d",
            self._who(),
            queued,
            self.max_outgoing,
        )
        # Free what the peer has not started to receive; keep the frame it is in.
        queue = self._queue
        kept = queue[0] if queue else None
        shed = queued - (len(kept) if kept is not None else 0)
        queue.clear()
        if kept is not None:
            queue.append(kept)
        self._queued -= shed
        self._stats.outgoing_bytes -= shed
        self._reject_waiters(beyond=self._sent + self._queued)
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")
        return False

    # Closing

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the closing handshake (or answer the peer's); idempotent."""
        if self._finished:
            return
        if not self.server_terminated:
            self.server_terminated = True
            if code is None and reason is not None:
                code = CloseCode.NORMAL_CLOSURE
            self._send(encode_frame(Opcode.CLOSE, encode_close(code, reason or "")))
            self._uncork()  # with what was held before it, now: the socket may close next
        self._cancel_ping()
        if self.client_terminated:
            self._stop_reading()
            if self._queued or self._sock is None:
                self._close_after_flush = True
                self._start_writing()
            else:
                self._finish()
        if not self._finished and self._close_timer is None and self._loop is not None:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)

    def is_closing(self) -> bool:
        return self._finished or self.client_terminated or self.server_terminated

    def _abort(self) -> None:
        """Close the socket now, without a closing handshake."""
        self.client_terminated = True
        self.server_terminated = True
        self._finish()

    def on_connection_close(self) -> None:
        self._abort()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_ping()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._stats.closed.add(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        sock = self._sock
        if sock is not None:
            loop = self._loop
            assert loop is not None
            loop.remove_reader(self._fd)
            if self._writing:
                loop.remove_writer(self._fd)
                self._writing = False
            sock.close()
            self._sock = None
        elif self.stream is not None and not self.stream.closed():
            self.stream.close()
        self._reject_waiters()
        self._queue.clear()
        self._stats.outgoing_bytes -= self._queued
        self._queued = 0
        self._held = None
        self._held_size = 0
        self._reader = None
        handler = self.handler
        handler.on_ws_connection_close(self.close_code, self.close_reason)

    def _stop_reading(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)

    # Keepalive

    def _keepalive(self) -> None:
        """Ping every ``ping_interval``; close 1011 when a pong is ``ping_timeout`` late."""
        self._ping_timer = None
        if self.is_closing():
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        interval, timeout = self.ping_interval, self.ping_timeout
        if self._ping_sent_at is not None:
            if timeout > 0 and now >= self._ping_sent_at + timeout:
                log.info("closing connection: no pong within %.1f s", timeout)
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                return
        elif now >= self._last_ping + interval:
            self._ping_sent_at = self._last_ping = now
            self._received_pong = False
            self._send(encode_frame(Opcode.PING, b""))
        due = self._last_ping + interval
        if self._ping_sent_at is not None and timeout > 0:
            due = min(due, self._ping_sent_at + timeout)
        self._ping_timer = loop.call_at(due, self._keepalive)

    def _cancel_ping(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def set_nodelay(self, x: bool) -> None:
        if self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if x else 0)
