"""Hello client: send a name, print the reply (the seed's client, on Tornado's client).

    python examples/client.py ws://127.0.0.1:8765/ [NAME]

Without NAME it asks for one. Fixed from the seed: a refused connection or a
closed one is reported in one line instead of a traceback.
"""

import asyncio
import sys

import tornado.websocket


async def hello(uri, name):
    try:
        connection = await tornado.websocket.websocket_connect(uri)
    except Exception as exc:  # refused, unreachable, HTTP error: say it in one line
        sys.exit(f"cannot connect to {uri}: {exc}")
    await connection.write_message(name)
    print(f">>> {name}")
    greeting = await connection.read_message()
    if greeting is None:
        sys.exit(f"connection closed: {connection.close_code} {connection.close_reason or ''}")
    print(f"<<< {greeting}")
    connection.close()


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"
    name = sys.argv[2] if len(sys.argv) > 2 else input("What's your name? ")
    asyncio.run(hello(uri, name))
