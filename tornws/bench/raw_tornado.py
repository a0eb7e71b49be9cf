"""The raw-Tornado baseline of ``tornws bench``: what a Tornado user writes without tornws.

    python -m tornws.bench.raw_tornado [--port 8765]

Plain ``tornado.websocket.WebSocketHandler`` subclasses with Tornado's defaults
(no keepalive, 10 MiB messages), ``/echo`` and a naive ``/broadcast`` that loops
over the connections calling ``write_message`` on each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import tornado.web
import tornado.websocket

__all__ = ["BroadcastHandler", "EchoHandler", "main", "make_app"]


class EchoHandler(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class BroadcastHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, clients: set[BroadcastHandler]) -> None:
        self.clients = clients

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.clients.add(self)

    def on_message(self, message: str | bytes) -> None:
        binary = isinstance(message, bytes)
        for client in list(self.clients):
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                client.write_message(message, binary=binary)

    def on_close(self) -> None:
        self.clients.discard(self)


def make_app() -> tornado.web.Application:
    clients: set[BroadcastHandler] = set()
    return tornado.web.Application(
        [(r"/echo", EchoHandler), (r"/broadcast", BroadcastHandler, {"clients": clients})]
    )


async def main(host: str, port: int) -> None:
    server = make_app().listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="raw Tornado baseline for tornws bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
