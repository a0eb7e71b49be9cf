"""The floor of ``tornws bench --floor``: the least a Python server can do per delivery.

    python -m tornws.bench.floor [--port 8765]

No framework and no event-loop library: one epoll loop (:mod:`selectors`) that
upgrades connections to WebSocket, echoes on ``/echo``, and on ``/broadcast`` writes
each message as one frame to every ``/broadcast`` connection, in the order they
connected, with a plain ``socket.send`` (bytes are queued only when the kernel
refuses them). No keepalive, no rooms, no limits, no UTF-8 check, no fragmented
messages, no compression, no origin check: not a server to deploy.

What a delivery costs it is the system call and the few bytecodes around it: the
floor under any Python server on the machine. How that floor grows with the number
of connections is the kernel's part of any server's growth.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import selectors
import signal
import socket
import sys

__all__ = ["FloorServer", "main"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_REQUEST = 16384
_MAX_MESSAGE = 1 << 20


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final server frame."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return header + payload


def _unmask(data: bytes, mask: bytes) -> bytes:
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


class _Conn:
    __slots__ = ("broadcast", "inbox", "outbox", "sock", "upgraded")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()  # bytes the kernel refused, sent when writable
        self.upgraded = False
        self.broadcast = False


class FloorServer:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)
        #: /broadcast connections with nothing queued, in connect order: sent to directly.
        self.straight: dict[socket.socket, _Conn] = {}
        #: /broadcast connections with bytes queued: the frame is appended.
        self.queued: dict[socket.socket, _Conn] = {}

    def serve_forever(self) -> None:
        select = self.selector.select
        while True:
            for key, events in select():
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                if events & selectors.EVENT_WRITE:
                    self._flush(conn)
                if events & selectors.EVENT_READ and conn.sock.fileno() >= 0:
                    self._read(conn)

    def broadcast(self, data: bytes) -> None:
        """``data`` to every /broadcast connection: the loop this server exists for."""
        size = len(data)
        short: list[tuple[socket.socket, int]] = []
        broken: list[socket.socket] = []
        for sock in self.straight:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                broken.append(sock)
                continue
            if sent != size:
                short.append((sock, sent))
        for conn in self.queued.values():
            conn.outbox += data
        for sock, sent in short:
            self._queue(self.straight[sock], data[sent:])
        for sock in broken:
            self._drop(self.straight[sock])

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, …: try on the next event
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.selector.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbox += data
        if not conn.upgraded and not self._upgrade(conn):
            return
        self._frames(conn)

    def _upgrade(self, conn: _Conn) -> bool:
        inbox = conn.inbox
        end = inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(inbox) > _MAX_REQUEST:
                self._refuse(conn, "431 Request Header Fields Too Large")
            return False
        head = bytes(inbox[:end]).decode("latin-1").split("\r\n")
        del inbox[: end + 4]
        parts = head[0].split()
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key", "")
        if len(parts) != 3 or parts[0] != "GET" or not key:
            self._refuse(conn, "400 Bad Request")
            return False
        if parts[1] not in ("/echo", "/broadcast"):
            self._refuse(conn, "404 Not Found")
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        self._send(
            conn,
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode(),
        )
        conn.upgraded = True
        if parts[1] == "/broadcast":
            conn.broadcast = True
            (self.queued if conn.outbox else self.straight)[conn.sock] = conn
        return True

    def _frames(self, conn: _Conn) -> None:
        """Act on every complete frame in the inbox."""
        inbox = conn.inbox
        while len(inbox) >= 2:
            first, second = inbox[0], inbox[1]
            size, start = second & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(inbox[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(inbox[2:10], "big"), 10
            if not second & 0x80 or first & 0x70:
                self._close(conn, 1002, "unmasked frame or reserved bits")
                return
            if size > _MAX_MESSAGE:
                self._close(conn, 1009, "message too big")
                return
            end = start + 4 + size
            if len(inbox) < end:
                return
            payload = _unmask(bytes(inbox[start + 4 : end]), bytes(inbox[start : start + 4]))
            del inbox[:end]
            opcode = first & 0x0F
            if not first & 0x80 or opcode == 0:
                self._close(conn, 1003, "fragmented messages are not supported")
                return
            if opcode in (1, 2):
                if conn.broadcast:
                    self.broadcast(frame(opcode, payload))
                else:
                    self._send(conn, frame(opcode, payload))
            elif opcode == 8:
                self._close(conn, int.from_bytes(payload[:2], "big") if payload else 1000, "")
                return
            elif opcode == 9:
                self._send(conn, frame(10, payload))

    def _send(self, conn: _Conn, data: bytes) -> None:
        if conn.outbox:
            conn.outbox += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(conn)
            return
        if sent != len(data):
            self._queue(conn, data[sent:])

    def _queue(self, conn: _Conn, rest: bytes) -> None:
        conn.outbox += rest
        if conn.broadcast and self.straight.pop(conn.sock, None) is not None:
            self.queued[conn.sock] = conn
        self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
            if conn.broadcast and self.queued.pop(conn.sock, None) is not None:
                self.straight[conn.sock] = conn

    def _refuse(self, conn: _Conn, status: str) -> None:
        self._send(conn, f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        self._drop(conn)

    def _close(self, conn: _Conn, code: int, reason: str) -> None:
        self._send(conn, frame(8, code.to_bytes(2, "big") + reason.encode()))
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock.fileno() < 0:
            return
        self.straight.pop(sock, None)
        self.queued.pop(sock, None)
        self.selector.unregister(sock)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tornws.bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=1024)
    listener.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        FloorServer(listener).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
