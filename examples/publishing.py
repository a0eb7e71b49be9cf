"""Publishing from your application: an HTTP handler and a worker thread push to /live.

python examples/publishing.py [PORT]
# tornws client ws://127.0.0.1:8765/live --subscribe orders --subscribe clock
# curl -X POST http://127.0.0.1:8765/orders -d '{"item": "tea"}'
#   -> {"published": "<epoch>:<offset>"}, and the subscriber prints {"item": "tea"}
"""

import asyncio
import json
import sys
import threading
import time

import tornado.web

import tornws


class OrderHandler(tornado.web.RequestHandler):
    async def post(self):
        order = json.loads(self.request.body)
        hub = tornws.Hub.for_application(self.application)
        position = await hub.publish("orders", order)  # every subscriber of "orders"
        self.write({"published": str(position)})


def clock(hub, stop):
    """A worker thread: the time, once a second, on channel "clock"."""
    while not stop.wait(1.0):
        hub.publish_threadsafe("clock", {"time": round(time.time())})


def make_app():
    return tornado.web.Application([(r"/orders", OrderHandler), *tornws.routes()])


async def main(port=8765):
    app = make_app()
    app.listen(port, "127.0.0.1")
    hub = tornws.Hub.for_application(app)  # made on the loop: threads may use it now
    stop = threading.Event()
    threading.Thread(target=clock, args=(hub, stop), daemon=True).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
