"""Routing by path: /echo echoes, any other path is HTTP 404 (the seed's section 7.2).

    python examples/paths.py [PORT]

Fixed from the seed: its handler took a `path` argument the library no longer
passes, and it accepted the WebSocket on unknown paths only to drop it. Here
Tornado's routing answers unknown paths with 404 before any upgrade.
"""

import asyncio
import sys

import tornado.web

import tornws


class EchoHandler(tornws.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


class GreetHandler(tornws.WebSocketHandler):
    def open(self, name):
        self.write_message(f"hello, {name}")


async def main(port=8765):
    app = tornado.web.Application(
        [
            (r"/echo", EchoHandler),
            (r"/greet/(\w+)", GreetHandler),  # path arguments arrive in open()
        ]
    )
    app.listen(port, "127.0.0.1")
    print(f"paths server: ws://127.0.0.1:{port}/echo, /greet/<name>", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
