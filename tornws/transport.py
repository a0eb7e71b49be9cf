"""The I/O adapter: tornws's connection core on the socket of a Tornado handler.

Tornado parses the HTTP request and runs the handler's hooks up to
``get_websocket_protocol``; :class:`Transport` (what tornws's handlers return
from it) answers the handshake and then runs the connection itself:

- **Handshake**: checks the request (RFC 6455 4.2.1: a ``Sec-WebSocket-Key``
  that is base64 of 16 bytes, HTTP/1.1), asks ``select_subprotocol``,
  negotiates permessage-deflate (:mod:`tornws.deflate`: tornws's own answer
  and compressors), sends the 101, calls ``open``.
- **Reading**: the socket is taken from Tornado's ``IOStream`` and registered
  with the event loop once; each time it is readable, one ``recv_into`` fills a
  buffer shared by every connection, the connection core
  (:class:`tornws.connection.Connection`) takes it and gives back the messages
  one at a time, and each goes to the handler's ``on_message``. No future is
  awaited per frame; a coroutine ``on_message`` holds the next messages (and
  reading) until it is done (order kept).
- **Writing**: a frame goes straight to the socket with ``send`` when nothing is
  queued for this connection; only what the kernel does not take is queued (in
  order, bounded by ``max_outgoing`` with a slow-consumer policy) and written
  when the socket is writable. No Task, Future or closure per message;
  ``write_message`` returns an already-done future unless the write had to be
  queued.
- **Fan-out** (:meth:`Transport.send_message`) hands the same frame bytes to
  every receiver; frames that one read's messages produce for a receiver are
  coalesced into one ``send``.

Every public ``WebSocketHandler`` behaviour is kept: ``write_message`` returns
an awaitable and raises ``WebSocketClosedError``; ``close(code, reason)``
flushes, then closes, aborting after :data:`CLOSE_TIMEOUT`; ``ping``/``on_ping``/
``on_pong``; ``close_code``/``close_reason``; ``selected_subprotocol``;
``websocket_ping_interval``/``timeout`` and ``websocket_max_message_size``.
TCP_NODELAY is on.

Private Tornado names: every one tornws uses is here, in this module, and in
:data:`PRIVATE_TORNADO_NAMES` (checked by :func:`missing_tornado_names`, which
the test suite runs):

- ``WebSocketHandler._detach_stream()``: ends HTTP on the handler (its HTTP
  methods then raise) and gives the stream;
- ``IOStream._read_buffer`` and ``IOStream._read_buffer_size``: the bytes
  Tornado read past the request, which belong to the WebSocket;
- ``WebSocketProtocol._process_server_headers`` and
  ``WebSocketProtocol._receive_frame_loop``: abstract methods of Tornado's base
  class that a subclass must define (Tornado's client uses them; the server never
  calls them here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import importlib
import logging
import socket
import sys
from typing import Any

import tornado
import tornado.escape
import tornado.gen
import tornado.iostream
import tornado.websocket

from . import deflate
from .connection import Connection, State
from .frames import CloseCode, Data, Message, Opcode, encode_frame
from .stats import Stats

__all__ = [
    "CLOSE_TIMEOUT",
    "PRIVATE_TORNADO_NAMES",
    "Transport",
    "check_handshake",
    "missing_tornado_names",
]

log = logging.getLogger(__name__)

#: Seconds a closing connection waits for the peer before the socket is closed anyway.
CLOSE_TIMEOUT = 5.0
#: Messages handled from one read before yielding to the event loop, so that a
#: flood on one connection cannot starve the others.
YIELD_EVERY = 256

#: (module, class, name) of every private Tornado name this module uses.
PRIVATE_TORNADO_NAMES = (
    ("tornado.websocket", "WebSocketHandler", "_detach_stream"),
    ("tornado.iostream", "IOStream", "_read_buffer"),
    ("tornado.iostream", "IOStream", "_read_buffer_size"),
    ("tornado.websocket", "WebSocketProtocol", "_process_server_headers"),
    ("tornado.websocket", "WebSocketProtocol", "_receive_frame_loop"),
)


def missing_tornado_names() -> list[str]:
    """The names of :data:`PRIVATE_TORNADO_NAMES` that the installed Tornado lacks
    (empty: tornws runs on it), as ``module.Class.name``."""
    missing = []
    fields: set[str] | None = None
    for module_name, class_name, name in PRIVATE_TORNADO_NAMES:
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is not None and hasattr(cls, name):
            continue
        if cls is tornado.iostream.IOStream:  # instance attributes: look at a new stream
            if fields is None:
                fields = _stream_fields()
            if name in fields:
                continue
        missing.append(f"{module_name}.{class_name}.{name}")
    return missing


def _stream_fields() -> set[str]:
    """The instance attributes of a new ``IOStream`` (on a socket that is never used)."""
    left, right = socket.socketpair()
    try:
        return set(vars(tornado.iostream.IOStream(left)))
    finally:
        left.close()
        right.close()


def _unsupported(names: list[str]) -> str:
    return (
        f"tornws needs {', '.join(names)}, which Tornado "
        f"{tornado.version} does not have: install a Tornado release that tornws "
        "supports (see its setup.cfg)"
    )


def check_handshake(request: Any) -> str | None:
    """What makes ``request`` an invalid WebSocket opening handshake (RFC 6455 4.2.1),
    as one line for the client, or ``None``. (Tornado has checked the ``Upgrade``
    and ``Connection`` headers, the origin and the version before this.)"""
    if request.version == "HTTP/1.0":
        return "WebSocket needs HTTP/1.1 or later"
    headers = request.headers
    if not headers.get("Host"):
        return "missing Host header"
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        decoded = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        decoded = b""
    if len(decoded) != 16:
        return f"Sec-WebSocket-Key {key!r} is not base64 of 16 bytes"
    return None


_missing = [
    f"{module}.{cls}.{name}"
    for module, cls, name in PRIVATE_TORNADO_NAMES
    if cls != "IOStream" and not hasattr(getattr(sys.modules[module], cls, None), name)
]
if _missing:  # pragma: no cover - a Tornado outside the supported range
    raise ImportError(_unsupported(_missing))
del _missing


class _Batch:
    """Coalescing of the frames that one read's messages produce (see ``Transport.on_message``).

    While one read is being handled, once a second message is being dispatched,
    frames for every connection are held (``active``) and each connection that
    got some is sent them all in one ``send`` when the read is done: a burst of
    N published messages costs each receiver one system call, not N. A single
    message per read (the common case) is never held.
    """

    __slots__ = ("active", "dirty")

    def __init__(self) -> None:
        self.active = False
        self.dirty: list[Transport] = []

    def flush(self) -> None:
        self.active = False
        dirty, self.dirty = self.dirty, []
        for transport in dirty:
            transport._uncork()


_batch = _Batch()


class _Wheel:
    """The keepalive and idle checks of every connection of one loop, on one timer.

    A connection due at ``t`` waits in the bucket of the :data:`TICK` after ``t``
    (a dict: O(1) to leave); one loop timer fires at the earliest bucket and runs
    the connections in it. A timer per connection instead made two handles and
    two bound methods per connection per keepalive round: at 10,000 connections,
    40,000 objects for the garbage collector each round, and a 30 ms pass.
    """

    __slots__ = ("buckets", "due", "handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, dict[Transport, None]] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0  # the tick ``handle`` fires at

    def add(self, transport: Transport, due: float) -> int:
        tick = -int(-due // TICK)  # the first tick at or after ``due``
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = {}
            if self.handle is None or tick < self.due:
                self._schedule(tick)
        bucket[transport] = None
        return tick

    def remove(self, transport: Transport, tick: int) -> None:
        bucket = self.buckets.get(tick)
        if bucket is not None:
            bucket.pop(transport, None)

    def _schedule(self, tick: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.due = tick
        # (A function and the loop, not a bound method: no wheel <-> handle cycle.)
        self.handle = self.loop.call_at(tick * TICK, _fire, self.loop)

    def fire(self) -> None:
        self.handle = None
        buckets = self.buckets
        now = self.loop.time()
        while buckets:
            tick = min(buckets)
            if tick * TICK > now:
                self._schedule(tick)
                return
            for transport in buckets.pop(tick):
                transport._tick = None
                try:
                    transport._on_timer()
                except Exception:  # (one connection's failure stops no other's keepalive)
                    log.exception("keepalive check of %s failed", transport.describe())
                    transport.abort()


def _fire(loop: asyncio.AbstractEventLoop) -> None:
    wheel = _wheels.get(loop)
    if wheel is not None:
        wheel.fire()


#: Seconds: the keepalive and idle checks run within this much after they are due.
TICK = 0.05
#: Each event loop's wheel (a loop that is closed is dropped when a wheel is made).
_wheels: dict[asyncio.AbstractEventLoop, _Wheel] = {}

#: One receive buffer shared by every connection (parsing copies what it keeps).
_RECEIVE = bytearray(256 * 1024)
_RECEIVE_VIEW = memoryview(_RECEIVE)
_OPEN = State.OPEN
_CLOSED = State.CLOSED
#: Counters of connections whose handler keeps none (plain Tornado handlers).
_UNCOUNTED = Stats()


class Transport(tornado.websocket.WebSocketProtocol):
    """A WebSocket connection on tornws's data plane (see the module docstring)."""

    @classmethod
    def for_handler(cls, handler: tornado.websocket.WebSocketHandler) -> Transport | None:
        """The data plane for ``handler``'s request, built from its settings
        (``None`` for a WebSocket version other than 13: Tornado then answers 426)."""
        if handler.request.headers.get("Sec-WebSocket-Version") != "13":
            return None
        transport = cls(handler)
        transport.max_outgoing = getattr(handler, "max_outgoing", 0)
        transport.drop_when_slow = getattr(handler, "slow_consumer", "close") == "drop"
        transport._stats = getattr(handler, "tornws_stats", _UNCOUNTED)
        return transport

    # The per-delivery fields live in slots, inline in the object: a fan-out to
    # thousands touches one or two cache lines per receiver, not a dict's.
    __slots__ = (  # noqa: RUF023 (the order is the layout)
        # Read on every delivery: first, so that they share cache lines.
        "_open",
        "_queued",
        "max_outgoing",
        "_compressor",
        "_shared_deflate",
        "messages_out",
        "_sock",
        "_sent",
        "_waiters",
        # The rest.
        "_core",
        "drop_when_slow",
        "_stats",
        "_fd",
        "_loop",
        "_queue",
        "_held",
        "_held_size",
        "_done",
        "_writing",
        "_finished",
        "_close_after_flush",
        "_close_timer",
        "_tick",
        "_opened",
        "_handled",
        "_holding",
        "_selected",
        "_decompressor",
        "bytes_in",
    )

    def __init__(self, handler: Any) -> None:
        # (Tornado's base __init__ sets fields of its own frame loop: not used here.)
        self.handler = handler
        self.stream: tornado.iostream.IOStream | None = None
        #: Bytes that may wait for a slow receiver before its policy applies (0: no bound).
        self.max_outgoing = 0
        #: The slow-consumer policy: skip this receiver's messages over the bound
        #: (``True``), or close the connection with 1008 (``False``).
        self.drop_when_slow = False
        self._stats = _UNCOUNTED
        self._core: Connection | None = None  # from the handshake on
        # The core's state is OPEN (kept here: a fan-out reads it for every receiver,
        # and the core is another object, another cache line).
        self._open = False
        self._compressor: deflate.Compressor | None = None
        self._decompressor: deflate.Decompressor | None = None
        # (level, window bits, memory level) when permessage-deflate runs without
        # server context takeover: a broadcast is then compressed once for all.
        self._shared_deflate: deflate.Setting | None = None
        self._selected: str | None = None
        self._sock: socket.socket | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        # Frames the kernel has not taken yet (None while there are none: an idle
        # connection holds no deque, 760 bytes each).
        self._queue: collections.deque[memoryview] | None = None
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
        self._tick: int | None = None  # the core's next check, in the loop's _Wheel
        self._opened = False  # open() returned: messages may be delivered
        self._handled = 0  # messages handled in the current slice (see YIELD_EVERY)
        # Messages wait in the core (a coroutine on_message runs, a slice is over, or
        # open() has not returned): none is taken from it, the socket is not read.
        self._holding = False
        #: Counters, added to the registry's stats when the connection ends.
        self.messages_out = 0
        self.bytes_in = 0

    # The handshake

    async def accept_connection(self, handler: tornado.websocket.WebSocketHandler) -> None:
        """Answer the opening handshake, take the socket, call ``open``, start reading.

        A request that is not a valid opening handshake (:func:`check_handshake`) is
        answered 400 (505 for HTTP/1.0) with the reason as a plain-text body.
        """
        request = handler.request
        problem = check_handshake(request)
        if problem is not None:  # answered as Tornado answers its own refusals
            handler.set_status(505 if request.version == "HTTP/1.0" else 400)
            handler.set_header("Content-Type", "text/plain; charset=UTF-8")
            handler.finish(problem + "\n")
            log.debug("refused a handshake: %s", problem)
            return
        headers = request.headers
        header = headers.get("Sec-WebSocket-Protocol")
        offered = [name.strip() for name in header.split(",")] if header else []
        selected = handler.select_subprotocol(offered)
        if selected:
            if selected not in offered:
                raise RuntimeError(
                    f"select_subprotocol returned {selected!r}, which the client did not "
                    f"offer ({offered}): return one of those, or None"
                )
            handler.set_header("Sec-WebSocket-Protocol", selected)
            self._selected = selected
        max_size = handler.max_message_size
        options = handler.get_compression_options()
        if options is not None:
            self._negotiate_deflate(handler, options, max_size)
        handler.clear_header("Content-Type")
        handler.set_status(101)
        handler.set_header("Upgrade", "websocket")
        handler.set_header("Connection", "Upgrade")
        handler.set_header(
            "Sec-WebSocket-Accept",
            tornado.websocket.WebSocketProtocol13.compute_accept_value(
                headers["Sec-WebSocket-Key"]
            ),
        )
        loop = self._loop = asyncio.get_running_loop()
        decompressor = self._decompressor
        self._core = Connection(
            self,
            max_size=max_size,
            inflate=decompressor.decompress if decompressor is not None else None,
            ping_interval=handler.ping_interval or 0.0,
            ping_timeout=handler.ping_timeout or 0.0,
            rate_limit=getattr(handler, "rate_limit", None),
            idle_timeout=getattr(handler, "idle_timeout", None),
            now=loop.time(),
            stats=self._stats,
        )
        self._open = True
        handler.finish()
        self.stream = handler._detach_stream()
        # Tornado's connection object, done with now (its stream, its finished Task and
        # that Task's coroutine: ~2 KiB a connection kept alive by the request).
        request.server_connection = None
        self._take_over()
        if self._finished:  # the peer was gone before the upgrade was through: no open()
            return
        try:
            opened = handler.open(*handler.open_args, **handler.open_kwargs)
            if opened is not None:
                await opened
        except Exception:
            handler.log_exception(*sys.exc_info())
            self.abort()
            return
        self._opened = True
        if self._sock is not None and not self._finished:
            self._resume(None)

    def _negotiate_deflate(self, handler: Any, options: dict[str, Any], max_size: int) -> None:
        offers = handler.request.headers.get("Sec-WebSocket-Extensions", "")
        for name, offer in deflate.parse_offers(offers):
            if name != "permessage-deflate":
                continue
            answer = deflate.negotiate(offer, options)
            if answer is None:
                log.info("declined a permessage-deflate offer: %s", offer)
                continue
            self._compressor, self._decompressor = deflate.compressors(answer, options, max_size)
            if "server_no_context_takeover" in answer:
                self._shared_deflate = self._compressor.setting
            handler.set_header("Sec-WebSocket-Extensions", deflate.answer_header(answer))
            return

    def _take_over(self) -> None:
        stream = self.stream
        assert stream is not None
        if stream.writing():  # the 101 is not fully sent: let Tornado finish
            stream.write(b"").add_done_callback(self._on_101_flushed)
        else:
            self._take_socket()
        core = self._core
        assert core is not None and self._loop is not None
        self._arm(core.check(core.now))

    def _on_101_flushed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # a closed stream is handled by _take_socket
        self._take_socket()

    def _take_socket(self) -> None:
        stream = self.stream
        assert stream is not None and self._core is not None
        if stream.closed():
            self.abort()
            return
        sock = stream.socket
        try:
            leftover = bytes(stream._read_buffer[: stream._read_buffer_size])
        except AttributeError:  # a Tornado outside the supported range
            raise RuntimeError(_unsupported(missing_tornado_names())) from None
        stream.io_loop.remove_handler(sock)  # (none registered: nothing happens)
        self.stream = None  # (its buffers: the socket is all that is used from now on)
        self._sock = sock
        self._fd = sock.fileno()
        with contextlib.suppress(OSError):  # not TCP (a Unix socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._queue:
            self._flush()
        if leftover:
            if not self._opened:
                self._holding = True  # kept until open() has returned
            self._receive(leftover)
        if self._opened:
            self._start_reading()

    # Tornado's abstract methods that only its own frame loop and client use.

    def start_pinging(self) -> None:
        """Not used: keepalive runs from the connection core (:meth:`Connection.check`)."""

    async def _receive_frame_loop(self) -> None:
        raise NotImplementedError("tornws's transport reads from the event loop's callbacks")

    def _process_server_headers(self, key: str | bytes, headers: Any) -> None:
        raise NotImplementedError("tornws's transport is the server side only")

    # Reading

    def _start_reading(self) -> None:
        core = self._core
        if self._sock is not None and core is not None and core.state is not _CLOSED:
            assert self._loop is not None
            self._loop.add_reader(self._fd, self._on_readable)

    def _stop_reading(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            count = sock.recv_into(_RECEIVE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if count == 0:  # the peer closed TCP
            self.abort()
            return
        self._receive(_RECEIVE_VIEW[:count])

    def _receive(self, data: bytes | memoryview) -> None:
        core = self._core
        assert core is not None and self._loop is not None
        self.bytes_in += len(data)
        if self._holding:
            core.feed(data)
            return
        self._handled = 0
        message = core.receive(data, self._loop.time())
        if message is not None:
            self._deliver(message)

    def _deliver(self, message: Data) -> None:
        """``message``, then the next ones the core has, to ``on_message``, until
        there are none or they must wait (see :attr:`_holding`); then the frames
        held for this slice go out."""
        try:
            self._deliver_each(message)
        finally:
            if _batch.active:
                _batch.flush()

    def _deliver_each(self, message: Data) -> None:
        core = self._core
        assert core is not None
        while True:
            if self._handled:  # a second message from this read: hold frames (see _Batch)
                _batch.active = True
            handler = self.handler
            try:
                result = handler.on_message(message)
            except (Exception, asyncio.CancelledError):
                handler.log_exception(*sys.exc_info())
                self.abort()
                return
            if self._finished:  # the connection ended inside on_message
                return
            if result is not None:  # a coroutine: keep order by taking no more until done
                self._hold()
                tornado.gen.convert_yielded(result).add_done_callback(self._on_message_done)
                return
            self._handled += 1
            if self._handled >= YIELD_EVERY:  # let other connections run, then go on
                self._hold()
                assert self._loop is not None
                self._loop.call_soon(self._resume, None)
                return
            next_message = core.next_message()
            if next_message is None:
                return
            message = next_message

    def _hold(self) -> None:
        self._holding = True
        self._stop_reading()

    def _resume(self, _: object) -> None:
        core = self._core
        if core is None or self._finished:
            return
        assert self._loop is not None
        self._holding = False
        self._handled = 0
        message = core.next_message(self._loop.time())
        if message is not None:
            self._deliver(message)
        if not self._holding:
            self._start_reading()

    # Connection core delegate

    def describe(self) -> str:
        """``<path> peer=<address>``, for log lines."""
        request = getattr(self.handler, "request", None)
        if request is None:
            return "? peer=?"
        return f"{request.path} peer={request.remote_ip}"

    def send_frame(self, frame: bytes) -> None:
        self._send(frame)

    def _on_message_done(self, future: asyncio.Future[Any]) -> None:
        try:
            future.result()
        except (Exception, asyncio.CancelledError):  # (as Tornado: logged, then aborted)
            self.handler.log_exception(*sys.exc_info())
            self.abort()
            return
        self._resume(None)

    def on_ping(self, payload: bytes) -> None:
        self._call(self.handler.on_ping, payload)

    def on_pong(self, payload: bytes) -> None:
        self._call(self.handler.on_pong, payload)

    def _call(self, method: Any, payload: bytes) -> None:
        try:
            method(payload)
        except (Exception, asyncio.CancelledError):
            self.handler.log_exception(*sys.exc_info())
            self.abort()

    def on_closing(self) -> None:
        self._open = False

    def on_closed(self) -> None:
        """The core is ``CLOSED``: stop reading, close TCP once flushed."""
        self._open = False
        self._uncork()  # what was held, with the close frame: the socket closes next
        self._stop_reading()
        self._closing()
        if self._queued or self._sock is None:
            self._close_after_flush = True
            self._start_writing()
        else:
            self._finish()

    # Timers

    def _arm(self, due: float | None) -> None:
        """Call the core's :meth:`~Connection.check` at ``due`` (within a ``TICK``)."""
        self._disarm()
        if due is not None and not self._finished:
            loop = self._loop
            assert loop is not None
            wheel = _wheels.get(loop)
            if wheel is None:
                for closed in [other for other in _wheels if other.is_closed()]:
                    del _wheels[closed]
                wheel = _wheels[loop] = _Wheel(loop)
            self._tick = wheel.add(self, due)

    def _disarm(self) -> None:
        if self._tick is not None and self._loop is not None:
            wheel = _wheels.get(self._loop)
            if wheel is not None:
                wheel.remove(self, self._tick)
            self._tick = None

    def _on_timer(self) -> None:
        core = self._core
        assert core is not None and self._loop is not None
        due = core.check(self._loop.time())
        if core.state is not _OPEN:
            self._uncork()
            self._closing()
        else:
            self._arm(due)

    def _closing(self) -> None:
        """Our close frame is sent: no more keepalive; give up after CLOSE_TIMEOUT."""
        self._disarm()
        if self._close_timer is None and not self._finished and self._loop is not None:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    # Writing

    def send_message(self, message: Message) -> bool:
        """Queue ``message`` (its shared frame unless compressing); ``False`` if closing.

        The fan-out hot path: when nothing is queued, the frame goes straight to
        the socket (``_send``, inlined), with no allocation.
        """
        if not self._open:
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
            self.abort()
            return True
        self._sent += sent
        if sent < len(frame) or self._waiters is not None:
            self._after_send(frame, sent)
        return True

    def write_message(
        self, message: str | bytes | dict[str, Any], binary: bool = False
    ) -> asyncio.Future[None]:
        if self.is_closing():
            raise tornado.websocket.WebSocketClosedError()
        if isinstance(message, dict):
            message = tornado.escape.json_encode(message)
        payload = tornado.escape.utf8(message)
        if self._queued and self._queued + len(payload) > self.max_outgoing > 0:
            self._slow()
            if self.is_closing():  # policy "close"
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
        if self.is_closing():
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
            self._enqueue(memoryview(frame))
            self._queued += len(frame)
            self._stats.outgoing_bytes += len(frame)
            return
        try:
            sent = sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        self._sent += sent
        if sent < len(frame) or self._waiters is not None:
            self._after_send(frame, sent)

    def _after_send(self, frame: bytes, sent: int) -> None:
        """Queue what the kernel did not take of ``frame``, or resolve write futures."""
        if sent < len(frame):
            self._enqueue(memoryview(frame)[sent:])
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

    def _enqueue(self, chunk: memoryview) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        queue.append(chunk)

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
                self.abort()
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
            self._queue = None
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

    @property
    def messages_in(self) -> int:
        """Messages received (counted by the connection core)."""
        return self._core.messages_in if self._core is not None else 0

    @property
    def selected_subprotocol(self) -> str | None:
        """The subprotocol ``select_subprotocol`` chose, or ``None``."""
        return self._selected

    @property
    def state(self) -> State:
        """The connection core's state (``CLOSED`` before the handshake)."""
        return self._core.state if self._core is not None else _CLOSED

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
            self.describe(),
            queued,
            self.max_outgoing,
        )
        # Free what the peer has not started to receive; keep the frame it is in.
        queue = self._queue
        kept = queue[0] if queue else None
        shed = queued - (len(kept) if kept is not None else 0)
        self._queue = None
        if kept is not None:
            self._enqueue(kept)
        self._queued -= shed
        self._stats.outgoing_bytes -= shed
        self._reject_waiters(beyond=self._sent + self._queued)
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")
        return False

    # Closing

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the closing handshake; idempotent. ``reason`` alone means 1000."""
        if self._finished:
            return
        core = self._core
        if core is None:  # before the handshake
            self.abort()
            return
        core.close(code, reason)
        if not self._finished and core.state is not _CLOSED:
            self._uncork()  # with what was held before it, now
            self._closing()

    def is_closing(self) -> bool:
        return not self._open

    def abort(self) -> None:
        """Close the socket now, without a closing handshake."""
        self._open = False
        if self._core is not None:
            self._core.lost()
        self._finish()

    def on_connection_close(self) -> None:
        self.abort()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._open = False
        self._disarm()
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
        self._queue = None
        self._stats.outgoing_bytes -= self._queued
        self._queued = 0
        self._held = None
        self._held_size = 0
        core = self._core
        code, reason = (core.close_code, core.close_reason) if core is not None else (None, None)
        if core is not None:
            core.detach()  # no transport <-> core <-> reader cycle left for the collector
        self.handler.on_ws_connection_close(code, reason)

    def set_nodelay(self, x: bool) -> None:
        if self._sock is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if x else 0)
