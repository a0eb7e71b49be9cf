"""``tornws client``: an interactive (and scriptable) WebSocket client on Tornado.

Incoming messages are printed as they arrive, while you type. Status lines
(connected, subprotocol, extensions, close code) go to stderr, messages to
stdout, so stdout can be piped. With stdin not a terminal, each line is sent as
a text message; after end of input the client keeps printing replies until none
has come for ``wait`` seconds (30 at most in all), then closes with 1000.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

import tornado.httpclient
import tornado.iostream
import tornado.websocket

from .frames import CloseCode

__all__ = ["connect", "describe_close", "format_message", "run"]

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
