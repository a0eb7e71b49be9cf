"""The tornws.v1 clients as a user runs them: tornws.client.LiveClient in a plain Python
subprocess, and ``tornws client --subscribe/--publish`` against ``tornws serve``."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Server, free_port
from processes import Interactive, run, tornws_command


@pytest.fixture
def interactive() -> Iterator[Any]:
    started: list[Interactive] = []

    def start(*args: str) -> Interactive:
        process = Interactive(list(args))
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_cli_subscribe_prints_each_publication_as_a_json_line(
    tornws_serve: Server, interactive: Any
) -> None:
    """`tornws client URL --subscribe a --subscribe b --count 3` prints the data of each
    publication on its channels as one JSON line, and exits 0 after three; `--publish`
    sends stdin lines (JSON, or else a string) and prints each one's <epoch>:<offset>."""
    url = f"{tornws_serve.url}/live"
    reader = interactive(
        *tornws_command("client", url, "--subscribe", "a", "--subscribe", "b", "--count", "3")
    )
    reader.err.expect("Subscribed to b at ")
    published = run(tornws_command("client", url, "--publish", "a"), stdin='{"n": 1}\nplain text\n')
    assert published.returncode == 0, published.stderr
    positions = published.stdout.splitlines()
    assert len(positions) == 2 and positions[0].endswith(":1") and positions[1].endswith(":2")
    run(tornws_command("client", url, "--publish", "c"), stdin="1\n")  # not subscribed
    run(tornws_command("client", url, "--publish", "b"), stdin="[true, null]\n")
    assert [json.loads(reader.out.next() or "") for _ in range(3)] == [
        {"n": 1},
        "plain text",
        [True, None],
    ]
    assert reader.process.wait(10) == 0


def test_cli_publish_refused_is_an_error_line_and_status_1(tornws_serve: Server) -> None:
    """A publish the server refuses (a reserved channel) prints its message on stderr and
    the client exits 1; a subscribe that is refused exits 1 at once."""
    url = f"{tornws_serve.url}/live"
    result = run(tornws_command("client", url, "--publish", "#ann"), stdin="1\n")
    assert result.returncode == 1 and "not allowed to publish on" in result.stderr
    result = run(tornws_command("client", url, "--subscribe", "bad name"))
    assert result.returncode == 1 and "invalid channel" in result.stderr


def test_cli_subscribe_stops_on_sigterm(tornws_serve: Server, interactive: Any) -> None:
    reader = interactive(*tornws_command("client", f"{tornws_serve.url}/live", "--subscribe", "x"))
    reader.err.expect("Subscribed to x at ")
    reader.process.send_signal(signal.SIGTERM)
    assert reader.process.wait(10) == 0


LIVE_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from tornws.client import LiveClient

    async def main(url):
        client = LiveClient(url, backoff=(0.1, 0.5))
        await client.connect()
        for channel in ("one", "two", "three"):
            await client.subscribe(channel)
        print("ready", flush=True)
        got = []
        while len(got) < 9:
            pub = await asyncio.wait_for(client.receive(), 30)
            got.append([pub["channel"], pub["offset"], pub["data"]])
            print(json.dumps(got[-1]), flush=True)
        print("reconnects", client.reconnects, flush=True)
        await client.close()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_live_client_resumes_every_subscription_across_a_server_restart(
    tmp_path: Any, start_server: Any, interactive: Any
) -> None:
    """A LiveClient in a plain Python process follows three channels on tornws serve with
    Redis; the server is killed and started again; each channel resumes from its own
    position: every publication arrives once, in order, the missed ones included."""
    from services import REDIS, Redis

    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    pytest.importorskip("redis", reason="pip install 'tornws[redis]'")
    redis = Redis()
    try:
        port = free_port()
        serve = [*tornws_command("serve", "--port", str(port)), "--broker", redis.url]
        server = start_server(serve, port)
        url = f"ws://127.0.0.1:{port}/live"
        script = tmp_path / "follow.py"
        script.write_text(LIVE_CLIENT)
        follower = interactive(sys.executable, str(script), url)
        assert follower.out.expect("ready")

        def publish(channel: str, *data: int) -> None:
            lines = "".join(f"{d}\n" for d in data)
            result = run(tornws_command("client", url, "--publish", channel), stdin=lines)
            assert result.returncode == 0, result.stderr

        for channel in ("one", "two", "three"):
            publish(channel, 1)
        for _ in range(3):
            assert follower.out.next() is not None
        server.process.kill()
        server.process.wait()
        server = start_server(serve, port)
        for channel in ("one", "two", "three"):
            publish(channel, 2, 3)
        lines = [follower.out.next() for _ in range(6)]
        got = sorted(json.loads(line or "null") for line in lines)
        assert got == sorted(
            [[channel, offset, offset] for channel in ("one", "two", "three") for offset in (2, 3)]
        )
        tail = follower.out.next() or ""
        assert tail.startswith("reconnects ") and int(tail.split()[1]) >= 1
        assert follower.process.wait(10) == 0
    finally:
        redis.stop()
