"""The bare websockets baseline of ``tornws bench``: the library's own ``serve()``.

    python -m tornws.bench.bare_websockets [--port 8765]

``websockets.asyncio.server.serve`` with its defaults and one echo handler for every
path: no routing, no logging configured (the library's records go nowhere), nothing
else. What a handshake, an idle connection or an echo costs in the websockets library
itself, beside which the asyncio version shows the cost of its routing and logging.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve

__all__ = ["echo", "main"]


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(echo, host, port):
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare websockets baseline for tornws bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
