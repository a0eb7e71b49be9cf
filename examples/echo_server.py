"""Echo server: every message back to its sender (the seed's first program, on tornws)."""

import asyncio
import sys

import tornado.web

import tornws


class EchoHandler(tornws.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


async def main(port=8765):
    app = tornado.web.Application([(r"/", EchoHandler)])
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
