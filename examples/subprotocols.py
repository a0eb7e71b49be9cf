"""Subprotocols: a server that speaks only `chat` (the seed's section 7.3).

    python examples/subprotocols.py [PORT]
    tornws client --subprotocol chat ws://127.0.0.1:8765/

Fixed from the seed: it accepted clients that offered no or another
subprotocol and then ignored them. Declaring `subprotocols` and
`subprotocol_required` makes the handshake itself refuse them with HTTP 400,
whose body lists what is supported.
"""

import asyncio
import sys

import tornado.web

import tornws


class ChatOnlyHandler(tornws.WebSocketHandler):
    subprotocols = ("chat",)
    subprotocol_required = True

    def on_message(self, message):
        self.write_message(f"Chat server received: {message}")


async def main(port=8765):
    app = tornado.web.Application([(r"/", ChatOnlyHandler)])
    app.listen(port, "127.0.0.1")
    print(f"chat-only server on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
