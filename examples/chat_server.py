"""Broadcast chat: each message to every other client (the seed's chat server, fixed).

    python examples/chat_server.py [PORT]
    python examples/chat_client.py ws://127.0.0.1:8765/

Fixed from the seed: it removed clients from the set it was iterating
(RuntimeError: Set changed size during iteration), and one failing client
stopped the loop for all after it. The tornws registry delivers from a
snapshot, removes members on close, and isolates a failing one.
"""

import asyncio
import sys

import tornado.web

import tornws

ROOM = "chat"


class ChatHandler(tornws.WebSocketHandler):
    def open(self):
        self.name = self.get_query_argument("name", "User")
        self.registry.join(ROOM, self)  # left automatically when the connection closes

    def on_message(self, message):
        self.registry.publish(ROOM, (self, message))

    def deliver(self, envelope):  # called once per member for each published message
        sender, message = envelope.payload
        if sender is not self:
            self.send(tornws.Message(f"{sender.name}: {message}"))


async def main(port=8765):
    app = tornado.web.Application([(r"/", ChatHandler)])
    app.listen(port, "127.0.0.1")
    print(f"chat server on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
