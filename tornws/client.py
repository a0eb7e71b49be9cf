"""``tornws client``: an interactive (and scriptable) WebSocket client on Tornado, and
:class:`LiveClient`, the Python client of ``/live`` (``tornws.v1``).

Incoming messages are printed as they arrive, while you type. Status lines
(connected, subprotocol, extensions, close code) go to stderr, messages to
stdout, so stdout can be piped. With stdin not a terminal, each line is sent as
a text message; after end of input the client keeps printing replies until none
has come for ``wait`` seconds (30 at most in all), then closes with 1000.

With ``--subscribe CHANNEL`` (repeatable) it speaks ``tornws.v1`` instead: each
publication's ``data`` is printed as one JSON line; with ``--publish CHANNEL``
each stdin line is published (as JSON if it parses, else as a string) and its
``<epoch>:<offset>`` printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import tornado.httpclient
import tornado.iostream
import tornado.websocket

from .frames import CloseCode

__all__ = ["LiveClient", "connect", "describe_close", "format_message", "run", "run_live"]

log = logging.getLogger(__name__)

#: The longest a scripted client lingers after end of input.
MAX_LINGER = 30.0


def format_message(message: str | bytes) -> str:
    """How an incoming message is shown: text as is, binary as ``(binary) <hex>``."""
    if isinstance(message, bytes):
        return f"(binary) {message.hex()}"
    return message


def describe_close(code: int | None, reason: str | None) -> str:
    """``Connection closed: 1000 (normal closure).``, with the reason when there is one."""
    if code is None:
        return "Connection closed (no close code)."
    try:
        name = f" ({CloseCode(code).name.replace('_', ' ').lower()})"
    except ValueError:
        name = ""
    return f"Connection closed: {code}{name}" + (f", reason: {reason}" if reason else "") + "."


def _refusal(url: str, exc: tornado.httpclient.HTTPClientError) -> str:
    detail = ""
    response = exc.response
    if response is not None and response.headers.get("Content-Type", "").startswith("text/plain"):
        body = response.body.decode("utf-8", "replace").strip()
        detail = f": {body.splitlines()[0]}" if body else ""
    return f"Handshake refused by {url}: HTTP {exc.code} {exc.message}{detail}"


async def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    compress: bool = False,
    cafile: str | None = None,
    timeout: float = 10.0,
) -> tornado.websocket.WebSocketClientConnection:
    """Open a WebSocket client connection with Tornado's client.

    ``cafile``: for ``wss://``, trust the certificate authorities in this PEM file
    (instead of the system's).

    Raises:
        ConnectionError: with a one-line message (refused, unreachable, handshake refused).
    """
    request = tornado.httpclient.HTTPRequest(
        url,
        headers=dict(headers),
        connect_timeout=timeout,
        request_timeout=timeout,
        ssl_options=ssl.create_default_context(cafile=cafile) if cafile else None,
    )
    try:
        return await tornado.websocket.websocket_connect(
            request,
            subprotocols=list(subprotocols) or None,
            compression_options={} if compress else None,
        )
    except tornado.httpclient.HTTPClientError as exc:
        raise ConnectionError(_refusal(url, exc)) from None
    except ssl.SSLError as exc:
        raise ConnectionError(f"Cannot connect to {url}: TLS: {exc.reason or exc}") from None
    except (OSError, tornado.iostream.StreamClosedError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectionError(f"Cannot connect to {url}: {reason}") from None


class _Session:
    """One client run: stdin lines out, incoming messages printed."""

    def __init__(
        self,
        connection: tornado.websocket.WebSocketClientConnection,
        stdin: TextIO,
        out: TextIO,
        wait: float,
    ) -> None:
        self.connection = connection
        self.stdin = stdin
        self.out = out
        self.wait = wait
        self.interactive = stdin.isatty()
        self.loop = asyncio.get_running_loop()
        self.last_received = self.loop.time()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()

    def show(self, text: str) -> None:
        if self.interactive:  # keep the prompt below what arrives
            self.out.write(f"\r\x1b[K< {text}\n> ")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def read_stdin(self) -> None:
        # In a thread, because reading stdin blocks; lines cross to the loop safely.
        try:
            for line in self.stdin:
                if not self._hand_over(line.rstrip("\r\n")):
                    return
        finally:
            self._hand_over(None)

    def _hand_over(self, line: str | None) -> bool:
        """Queue ``line`` on the loop; False once the loop is closed (the session ended
        before its input did: the server closed, the handshake was refused)."""
        try:
            self.loop.call_soon_threadsafe(self.lines.put_nowait, line)
        except RuntimeError:  # "Event loop is closed"
            return False
        return True

    async def receive(self) -> None:
        while (message := await self.connection.read_message()) is not None:
            self.last_received = self.loop.time()
            self.show(format_message(message))

    async def linger(self, receiver: asyncio.Future[None]) -> None:
        """After end of input: return once nothing arrived for ``wait`` seconds."""
        self.last_received = self.loop.time()
        deadline = self.last_received + MAX_LINGER
        while not receiver.done():
            remaining = min(self.last_received + self.wait, deadline) - self.loop.time()
            if remaining <= 0:
                return
            await asyncio.wait({receiver}, timeout=remaining)

    async def run(self) -> bool:
        """Relay until end of input or the server's close; ``True`` if we closed."""
        threading.Thread(target=self.read_stdin, daemon=True).start()
        receiver = asyncio.ensure_future(self.receive())
        if self.interactive:
            self.out.write("> ")
            self.out.flush()
        while not receiver.done():
            next_line = asyncio.ensure_future(self.lines.get())
            await asyncio.wait({next_line, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not next_line.done():
                next_line.cancel()
                break
            line = next_line.result()
            if line is None:
                await self.linger(receiver)
                break
            try:
                await self.connection.write_message(line)
            except tornado.websocket.WebSocketClosedError:
                break
            if self.interactive:
                self.out.write("> ")
                self.out.flush()
        if receiver.done():
            self.connection.close()  # releases the client's resources; no frame is sent
            return False
        self.connection.close(CloseCode.NORMAL_CLOSURE)
        try:
            await asyncio.wait_for(receiver, timeout=5.0)
        except asyncio.TimeoutError:
            receiver.cancel()
        return True


async def run(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    compress: bool = False,
    cafile: str | None = None,
    wait: float = 1.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Connect to ``url``, relay stdin and print messages; return the exit status.

    0: closed by us, or by the server with 1000, 1001 or 1012; 1: could not connect,
    handshake refused, or the server closed with another code.
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        connection = await connect(
            url, subprotocols=subprotocols, headers=headers, compress=compress, cafile=cafile
        )
    except ConnectionError as exc:
        err.write(f"{exc}\n")
        return 1
    extensions = connection.headers.get("Sec-WebSocket-Extensions") if connection.headers else None
    err.write(
        f"Connected to {url} (subprotocol: {connection.selected_subprotocol or 'none'}, "
        f"extensions: {extensions or 'none'}).\n"
    )
    err.flush()
    session = _Session(
        connection,
        stdin if stdin is not None else sys.stdin,
        stdout if stdout is not None else sys.stdout,
        wait,
    )
    closed_by_us = await session.run()
    if session.interactive:
        session.out.write("\n")
    err.write(describe_close(connection.close_code, connection.close_reason) + "\n")
    normal = connection.close_code in (
        CloseCode.NORMAL_CLOSURE,
        CloseCode.GOING_AWAY,
        CloseCode.SERVICE_RESTART,
    )
    return 0 if closed_by_us or normal else 1


class LiveClient:
    """A ``tornws.v1`` client: one connection, many subscriptions, each resumed from
    its own position after a reconnect.

    ``await client.connect()``, then ``subscribe``, ``unsubscribe``, ``publish`` and
    ``presence`` (each returns the command's result, or raises
    :class:`tornws.live.CommandError` with the error's code); publications, in order
    per channel, come from ``await client.receive()`` (or ``async for``) as the pub
    objects (``{"type": "pub", "channel", "epoch", "offset", "data"}``).

    When the connection drops (not closed by :meth:`close`) it reconnects with
    jittered exponential backoff (``backoff``: first and longest delay) and
    subscribes again to every channel with ``since`` = the last position it saw:
    what was missed arrives through :meth:`receive` first, nothing twice. A channel
    that cannot be recovered calls ``on_gap(channel)`` (default: a warning).
    Commands in flight when the connection drops raise ``ConnectionError``.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        cafile: str | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        on_gap: Callable[[str], object] | None = None,
    ) -> None:
        self.url = url
        self.headers = headers
        self.cafile = cafile
        self.backoff = backoff
        self.on_gap = on_gap
        #: Reconnections made so far.
        self.reconnects = 0
        self._connection: tornado.websocket.WebSocketClientConnection | None = None
        self._ids = 0
        # id -> (its future, what to do with its result as it arrives, before anything
        # that follows it is handled)
        self._waiting: dict[
            int,
            tuple[asyncio.Future[dict[str, Any]], Callable[[dict[str, Any]], None] | None],
        ] = {}
        #: channel → [epoch, offset] of the last publication seen (or its subscribe result).
        self._positions: dict[str, list[Any]] = {}
        self._presence: dict[str, bool] = {}
        self._publications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._resubscriber: asyncio.Task[None] | None = None
        self._closing = False

    async def connect(self) -> None:
        """Open the connection (raises ``ConnectionError`` when it cannot)."""
        self._connection = await connect(
            self.url, subprotocols=["tornws.v1"], headers=self.headers, cafile=self.cafile
        )
        self._reader = asyncio.ensure_future(self._read())

    async def close(self) -> None:
        """Close with 1000; no reconnection after it."""
        self._closing = True
        if self._connection is not None:
            self._connection.close(CloseCode.NORMAL_CLOSURE)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5.0)

    async def subscribe(self, channel: str, *, presence: bool = False) -> dict[str, Any]:
        fields: dict[str, Any] = {"channel": channel}
        if presence:
            fields["presence"] = True

        def answered(result: dict[str, Any]) -> None:  # (before the pushes after it)
            self._positions[channel] = [result["epoch"], result["offset"]]
            self._presence[channel] = presence

        return await self._command("subscribe", fields, answered)

    async def unsubscribe(self, channel: str) -> None:
        await self._command("unsubscribe", {"channel": channel})
        self._positions.pop(channel, None)
        self._presence.pop(channel, None)

    async def publish(self, channel: str, data: Any) -> tuple[str, int]:
        """Publish ``data`` (any JSON); its ``(epoch, offset)``."""
        result = await self._command("publish", {"channel": channel, "data": data})
        return result["epoch"], result["offset"]

    async def presence(self, channel: str) -> dict[str, Any]:
        return await self._command("presence", {"channel": channel})

    async def receive(self) -> dict[str, Any]:
        """The next publication (a pub object)."""
        return await self._publications.get()

    def __aiter__(self) -> LiveClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.receive()

    async def _command(
        self,
        kind: str,
        fields: dict[str, Any],
        answered: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        from .live import CommandError

        connection = self._connection
        if connection is None:
            raise ConnectionError("not connected: await connect() first")
        self._ids += 1
        ident = self._ids
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = (future, answered)
        try:
            await connection.write_message(json.dumps({"id": ident, "type": kind, **fields}))
        except tornado.websocket.WebSocketClosedError:
            self._waiting.pop(ident, None)
            raise ConnectionError("the connection is closed") from None
        reply = await future
        if "error" in reply:
            error = reply["error"]
            raise CommandError(error.get("code", ""), error.get("message", ""))
        result: dict[str, Any] = reply["result"]
        return result

    def _handle(self, message: str | bytes) -> None:
        body = json.loads(message)
        if "id" in body:
            future, answered = self._waiting.pop(body["id"], (None, None))
            if answered is not None and "result" in body:
                answered(body["result"])
            if future is not None and not future.done():
                future.set_result(body)
            return
        if body.get("type") == "pub":
            self._saw(body)

    def _saw(self, pub: dict[str, Any]) -> None:
        position = self._positions.get(pub["channel"])
        if position is not None:
            if position[0] == pub["epoch"] and pub["offset"] <= position[1]:
                return  # seen already (a replay racing a live push)
            position[:] = [pub["epoch"], pub["offset"]]
        self._publications.put_nowait(pub)

    async def _read(self) -> None:
        while True:
            connection = self._connection
            assert connection is not None
            message = await connection.read_message()
            if message is not None:
                self._handle(message)
                continue
            for future, _ in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection dropped"))
            self._waiting.clear()
            if self._closing or not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        """Reconnect with backoff and resubscribe from each channel's position."""
        first, longest = self.backoff
        attempt = 0
        while not self._closing:
            delay = min(longest, first * 2**attempt) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)
            attempt += 1
            try:
                self._connection = await connect(
                    self.url, subprotocols=["tornws.v1"], headers=self.headers, cafile=self.cafile
                )
            except ConnectionError as exc:
                log.info("reconnecting to %s: %s", self.url, exc)
                continue
            self.reconnects += 1
            self._resubscriber = asyncio.ensure_future(self._resubscribe())
            return True
        return False

    async def _resubscribe(self) -> None:
        from .live import CommandError

        for channel, (epoch, offset) in list(self._positions.items()):
            fields: dict[str, Any] = {"channel": channel, "since": f"{epoch}:{offset}"}
            if self._presence.get(channel):
                fields["presence"] = True
            try:
                await self._command("subscribe", fields, self._resumed(channel))
            except (CommandError, ConnectionError) as exc:
                log.warning("could not resubscribe to %r: %s", channel, exc)

    def _resumed(self, channel: str) -> Callable[[dict[str, Any]], None]:
        """What a resubscribe's result does, as it arrives (before the pushes after it):
        the missed publications first; or, not recovered, a new position and ``on_gap``."""

        def answered(result: dict[str, Any]) -> None:
            for pub in result.get("publications", ()):
                self._saw(pub)
            if not result.get("recovered"):
                self._positions[channel] = [result["epoch"], result["offset"]]
                if self.on_gap is not None:
                    self.on_gap(channel)
                else:
                    log.warning("channel %r: publications may be missing", channel)

        return answered


async def run_live(
    url: str,
    *,
    subscribe: Sequence[str] = (),
    publish: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    cafile: str | None = None,
    count: int | None = None,
    wait: float = 1.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``tornws client URL --subscribe CHANNEL… [--publish CHANNEL]``; the exit status.

    Each publication of the subscribed channels: its ``data`` as one JSON line on
    stdout. With ``publish``: each stdin line is published to that channel (as JSON
    if it parses, else as a string) and its ``<epoch>:<offset>`` printed; after end
    of input, publications are printed until none came for ``wait`` seconds. Without
    it: until ``count`` publications (if given), or SIGINT/SIGTERM; a dropped
    connection is reconnected and every channel resumed. 0 when it ended as asked;
    1 when it could not connect or subscribe, or a publish failed.
    """
    from .live import CommandError

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    client = LiveClient(url, headers=headers, cafile=cafile, backoff=(0.2, 2.0))
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # (before the first line it prints)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, done.set)
    quiet = _Quiet(loop)
    shower = asyncio.ensure_future(_show(client, out, count, done, quiet))
    status = 0
    try:
        try:
            await client.connect()
            for channel in subscribe:
                result = await client.subscribe(channel)
                err.write(f"Subscribed to {channel} at {result['epoch']}:{result['offset']}.\n")
                err.flush()
        except (ConnectionError, CommandError) as exc:
            err.write(f"{exc}\n")
            return 1
        if publish is None:
            await done.wait()
        else:
            status = await _publish_lines(client, publish, stdin or sys.stdin, out, err)
            quiet.last = loop.time()
            while subscribe and not done.is_set() and loop.time() - quiet.last < wait:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), wait)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        shower.cancel()
        await client.close()
    return status


class _Quiet:
    """When the last publication was printed (for the linger after end of input)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last = loop.time()


async def _show(
    client: LiveClient, out: TextIO, count: int | None, done: asyncio.Event, quiet: _Quiet
) -> None:
    """Print each publication's data as a JSON line; set ``done`` after ``count``."""
    printed = 0
    loop = asyncio.get_running_loop()
    async for pub in client:
        out.write(json.dumps(pub["data"], ensure_ascii=False) + "\n")
        out.flush()
        quiet.last = loop.time()
        printed += 1
        if count is not None and printed >= count:
            done.set()
            return


async def _publish_lines(
    client: LiveClient, channel: str, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    """Publish each line of ``stdin`` to ``channel``; print ``<epoch>:<offset>`` each."""
    from .live import CommandError

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:  # in a thread: reading stdin blocks
        for line in stdin:
            with contextlib.suppress(RuntimeError):  # the loop closed first
                loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    status = 0
    while (line := await lines.get()) is not None:
        if not line:
            continue
        try:
            data = json.loads(line)
        except ValueError:
            data = line
        try:
            epoch, offset = await client.publish(channel, data)
        except (ConnectionError, CommandError) as exc:
            err.write(f"{exc}\n")
            status = 1
            continue
        out.write(f"{epoch}:{offset}\n")
        out.flush()
    return status
