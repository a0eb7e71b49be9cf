"""permessage-deflate compression, really negotiated (the seed's section 7.4).

    python examples/compression.py [PORT]
    tornws client --compress ws://127.0.0.1:8765/

The seed said compression needs another framework; it does not. tornws
negotiates permessage-deflate when a handler has the `compression` option.
`compression_level` trades CPU for size; `mem_level` (1-9) and
`server_max_window_bits` (9-15, declared to the client) trade memory for ratio;
`client_max_window_bits` bounds the client's window when its offer allows;
`server_no_context_takeover` compresses each message on its own (no compressor
kept per connection; a broadcast is compressed once). See the README's
"Compression" section.
"""

import asyncio
import sys

import tornado.web

import tornws

# Every setting, at tornws's defaults (the README's "Compression" section):
EVERY_SETTING = {
    "compression_level": 1,  # zlib 0-9: CPU against size
    "mem_level": 5,  # zlib 1-9: memory against ratio
    "server_max_window_bits": 12,  # 9-15: the window the server compresses with, declared
    "client_max_window_bits": 12,  # 9-15: the client's, when its offer lets the server limit it
    "server_no_context_takeover": False,  # True: the shared-compressor mode
    "client_no_context_takeover": False,  # True: no inflate window kept per connection
}


class EchoHandler(tornws.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


async def main(port=8765):
    options = {"compression": {"compression_level": 6, "server_max_window_bits": 10}}
    # "/" with its own settings; /all/echo, /all/broadcast, ... with every setting spelled out.
    app = tornado.web.Application(
        [(r"/", EchoHandler, options), *tornws.routes("/all", compression=EVERY_SETTING)]
    )
    app.listen(port, "127.0.0.1")
    print(f"compressing echo server on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
