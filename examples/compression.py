"""permessage-deflate compression, really negotiated (the seed's section 7.4).

    python examples/compression.py [PORT]
    tornws client --compress ws://127.0.0.1:8765/

The seed said compression needs another framework; it does not. Tornado
negotiates permessage-deflate when the handler returns compression options;
tornws takes them as the `compression` handler option. `compression_level`
trades CPU for size; `mem_level` (1-9) trades memory for ratio.
"""

import asyncio
import sys

import tornado.web

import tornws


class EchoHandler(tornws.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


async def main(port=8765):
    options = {"compression": {"compression_level": 6, "mem_level": 5}}
    app = tornado.web.Application([(r"/", EchoHandler, options)])
    app.listen(port, "127.0.0.1")
    print(f"compressing echo server on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
