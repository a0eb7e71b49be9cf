"""Many clients at once: each gets `Server received: <message>` (the seed's section 7.1).

    python examples/many_clients.py [PORT]

Tornado serves every connection concurrently on one event loop; each handler
instance is one client. Fixed from the seed: the handler does not loop on
recv() in a `while True` that must catch ConnectionClosed; Tornado calls
on_message per message and on_close once.
"""

import asyncio
import logging
import sys

import tornado.web

import tornws

log = logging.getLogger("many_clients")


class ReceiptHandler(tornws.WebSocketHandler):
    def open(self):
        log.info("client %s connected", self.request.remote_ip)

    def on_message(self, message):
        log.info("received from %s: %r", self.request.remote_ip, message)
        self.write_message(f"Server received: {message}")

    def on_close(self):
        log.info("connection with %s closed (%s)", self.request.remote_ip, self.close_code)


async def main(port=8765):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app = tornado.web.Application([(r"/", ReceiptHandler)])
    app.listen(port, "127.0.0.1")
    print(f"receipt server on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
