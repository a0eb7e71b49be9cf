"""Chat client: shows incoming messages while you type (the seed's chat client, fixed).

    python examples/chat_client.py ws://127.0.0.1:8765/chat/lobby

Fixed from the seed: it blocked on input() and only then read one message, so
others' messages never showed while you were typing, and several at once
queued up. Here stdin is read in a thread and messages are printed as they
arrive. End of input (Ctrl-D) closes the connection cleanly.
"""

import asyncio
import sys
import threading

import tornado.websocket


async def chat(uri):
    connection = await tornado.websocket.websocket_connect(uri)
    print("Connected to chat server. Type your messages.", flush=True)
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()

    def read_stdin():  # blocking reads, off the event loop
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    async def show_incoming():
        while (message := await connection.read_message()) is not None:
            print(f"Received: {message}", flush=True)
        print("Connection to server closed.", flush=True)

    threading.Thread(target=read_stdin, daemon=True).start()
    incoming = asyncio.ensure_future(show_incoming())
    while (line := await lines.get()) is not None:
        await connection.write_message(line)
    await asyncio.sleep(0.5)  # let replies to the last lines arrive
    connection.close()
    await incoming


if __name__ == "__main__":
    asyncio.run(chat(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"))
