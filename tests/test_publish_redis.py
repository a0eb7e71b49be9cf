"""Publishing from outside the tornws processes, through a real redis-server: Publisher in
a plain Python process, ``tornws publish``, the HTTP API of ``tornws serve``, and users
reached and disconnected on two processes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.httpclient
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed

from conftest import Server, free_port
from processes import run, tornws_command
from services import REDIS, Redis

pytest.importorskip("redis", reason="pip install 'tornws[redis]'")

KEY = "the api key of these tests, long enough"


@pytest.fixture
def redis() -> Iterator[Redis]:
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    server = Redis()
    yield server
    server.stop()


@pytest.fixture
def pair(redis: Redis) -> Iterator[tuple[Server, Server]]:
    """Two tornws processes on one Redis, users signing in with ?user=, the API on."""
    servers = []
    for _ in range(2):
        port = free_port()
        args = [
            *tornws_command("serve", "--port", str(port), "--broker", redis.url),
            *("--app", "tests.user_app:make_app", "--api-key", KEY),
        ]
        servers.append(Server(args, port))
    yield servers[0], servers[1]
    for server in servers:
        code, log = server.stop()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert KEY not in log and KEY[:12] not in log  # the key is never logged


class Live:
    """A /live client keeping the pushes that arrive while it waits for a reply."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.pushes: list[dict[str, Any]] = []

    async def command(self, ident: int, kind: str, **fields: Any) -> dict[str, Any]:
        await self.socket.send(json.dumps({"id": ident, "type": kind, **fields}))
        while True:
            event = json.loads(await asyncio.wait_for(self.socket.recv(), 5))
            if event.get("id") == ident:
                assert "result" in event, event
                return event["result"]  # type: ignore[no-any-return]
            self.pushes.append(event)

    async def push(self) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        return json.loads(await asyncio.wait_for(self.socket.recv(), 5))  # type: ignore[no-any-return]

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the server to close it; its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.socket.recv(), 5)
        except ConnectionClosed as exc:
            frame = exc.rcvd
            return (frame.code, frame.reason) if frame else (None, None)


async def live(server: Server, user: str | None = None) -> Live:
    query = f"?user={user}" if user else ""
    socket = await websockets.asyncio.client.connect(
        f"{server.url}/live{query}",
        subprotocols=["tornws.v1"],  # type: ignore[list-item]
    )
    return Live(socket)


async def api(server: Server, path: str, body: Any) -> tuple[int, Any]:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server.port}{path}",
        method="POST",
        body=json.dumps(body),
        headers={"X-API-Key": KEY},
        raise_error=False,
    )
    return response.code, json.loads(response.body)


PUBLISHER = """
import json, sys
from tornws.publisher import Publisher

with Publisher(sys.argv[1]) as publisher:
    for i in range(3):
        print(publisher.publish("news", {"from": "worker", "i": i}), flush=True)
    print(publisher.publish("#ann", "for ann"), flush=True)
"""


@pytest.mark.gen_test(timeout=60)
async def test_a_plain_python_process_publishes_numbered_with_the_servers(
    pair: tuple[Server, Server], redis: Redis
) -> None:
    """Publisher in a process with no event loop: its publications take the next offsets
    after a client's, reach subscribers on both tornws processes, resume like theirs;
    #ann reaches ann's connections on both processes, and no one else."""
    a, b = pair
    reader_a, reader_b = await live(a), await live(b)
    ann_a, ann_b, bob = await live(a, "ann"), await live(b, "ann"), await live(b, "bob")
    start = await reader_a.command(1, "subscribe", channel="news")
    await reader_b.command(1, "subscribe", channel="news")
    by_client = await reader_b.command(2, "publish", channel="news", data="client")
    result = await asyncio.get_running_loop().run_in_executor(
        None, lambda: run([sys.executable, "-c", PUBLISHER, redis.url], timeout=30)
    )
    assert result.returncode == 0, result.stderr
    positions = result.stdout.split()
    assert positions[:3] == [f"{start['epoch']}:{by_client['offset'] + i}" for i in (1, 2, 3)]
    for reader in (reader_a, reader_b):
        pubs = [await reader.push() for _ in range(4)]
        assert [(p["offset"], p["data"]) for p in pubs] == [
            (by_client["offset"], "client"),
            *((by_client["offset"] + 1 + i, {"from": "worker", "i": i}) for i in range(3)),
        ]
    for ann in (ann_a, ann_b):
        push = await ann.push()
        assert (push["channel"], push["data"]) == ("#ann", "for ann")
        assert f"{push['epoch']}:{push['offset']}" == positions[3]
    # A resume on the other process includes the worker's publications.
    back = await live(a)
    resumed = await back.command(1, "subscribe", channel="news", since=f"{start['epoch']}:0")
    assert [p["data"] for p in resumed["publications"]][-3:] == [
        {"from": "worker", "i": i} for i in range(3)
    ]
    await bob.command(9, "presence", channel="news")
    assert bob.pushes == []  # nothing of ann's
    # tornws publish, from a shell.
    cli = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: run(tornws_command("publish", "--broker", redis.url, "news", '{"cli": true}')),
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == f"{start['epoch']}:{by_client['offset'] + 4}"
    assert (await reader_a.push())["data"] == {"cli": True}
    for client in (reader_a, reader_b, ann_a, ann_b, bob, back):
        await client.socket.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_api_of_one_process_reaches_the_other_and_disconnects_everywhere(
    pair: tuple[Server, Server], redis: Redis
) -> None:
    a, b = pair
    reader = await live(a)
    await reader.command(1, "subscribe", channel="alerts")
    status, body = await api(b, "/api/publish", {"channel": "alerts", "data": {"level": 2}})
    assert status == 200
    push = await reader.push()
    assert (push["offset"], push["data"]) == (body["offset"], {"level": 2})

    ann_a, ann_b, bob = await live(a, "ann"), await live(b, "ann"), await live(a, "bob")
    await asyncio.sleep(0.3)  # (both processes read the control room)
    status, body = await api(b, "/api/disconnect", {"user": "ann"})
    assert (status, body) == (200, {})
    for ann in (ann_a, ann_b):
        assert await ann.closed() == (3000, "disconnected by the server")
    assert (await bob.command(1, "subscribe", channel="still"))["offset"] == 0

    # From a worker process too: the asyncio twin.
    from tornws.publisher import AsyncPublisher

    carol = await live(b, "carol")
    await asyncio.sleep(0.3)
    async with AsyncPublisher(redis.url) as publisher:
        position = await publisher.publish("alerts", "async")
        await publisher.disconnect("carol")
    assert (await reader.push())["offset"] == position.offset
    assert (await carol.closed())[0] == 3000
    for client in (reader, bob):
        await client.socket.close()


def test_publish_without_a_broker_says_to_use_the_hub() -> None:
    result = run(tornws_command("publish", "news", "1"), timeout=30)
    assert result.returncode == 2
    assert "--broker URL (or TORNWS_BROKER) is required" in result.stderr
    result = run(tornws_command("publish", "--help"), timeout=30)
    assert "tornws.Hub" in result.stdout


@pytest.mark.gen_test(timeout=60)
async def test_a_ticket_is_single_use_across_processes(redis: Redis) -> None:
    """Two processes sharing the ticket secret and a Redis: a ticket used on one is
    refused by the other (401 ticket already used)."""
    from user_app import TICKET_SECRET

    from tornws.auth import Tickets

    servers = []
    for _ in range(2):
        port = free_port()
        args = tornws_command("serve", "--port", str(port), "--broker", redis.url)
        servers.append(Server([*args, "--app", "tests.user_app:make_ticket_app"], port))
    a, b = servers
    try:
        ticket = Tickets(TICKET_SECRET).mint("ann")
        first = await websockets.asyncio.client.connect(
            f"{a.url}/live?ticket={ticket}",
            subprotocols=["tornws.v1"],  # type: ignore[list-item]
        )
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.asyncio.client.connect(
                f"{b.url}/live?ticket={ticket}",
                subprotocols=["tornws.v1"],  # type: ignore[list-item]
            )
        assert refused.value.response.status_code == 401
        assert refused.value.response.body.strip() == b"ticket already used"
        other = Tickets(TICKET_SECRET).mint("bob")  # a fresh one is fine on b
        second = await websockets.asyncio.client.connect(
            f"{b.url}/live?ticket={other}",
            subprotocols=["tornws.v1"],  # type: ignore[list-item]
        )
        await first.close()
        await second.close()
    finally:
        for server in servers:
            code, log = server.stop()
            assert code == 0, log
    assert "ticket already used" in b.output


@pytest.mark.gen_test(timeout=60)
async def test_the_readme_publishing_commands_run(redis: Redis) -> None:
    """The README's `tornws publish` and `curl` lines, as written (host, port and Redis
    URL replaced by this test's), publish to a subscriber of `tornws serve`."""
    import os
    import re
    import shutil
    from pathlib import Path

    from conftest import ROOT

    if shutil.which("curl") is None:
        pytest.skip("no curl (apt-get install curl)")
    readme = (Path(ROOT) / "README.md").read_text()
    section = readme.split("## Publishing from your application", 1)[1].split("\n## ", 1)[0]
    commands = [
        line
        for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith(("tornws publish", "curl"))
    ]
    assert len(commands) == 2, commands
    port = free_port()
    server = Server(
        [
            *tornws_command("serve", "--port", str(port), "--broker", redis.url),
            *("--api-key", KEY),
        ],
        port,
    )
    try:
        reader = await live(server)
        await reader.command(1, "subscribe", channel="orders")
        env = {**os.environ, "TORNWS_API_KEY": KEY}
        outputs = []
        for written in commands:
            command = (
                written.replace("redis://127.0.0.1:6379/0", redis.url)
                .replace("127.0.0.1:8765", f"127.0.0.1:{port}")
                .replace("tornws publish", " ".join(tornws_command("publish")))
            )
            result = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda c=command: run(["bash", "-c", c], timeout=30, env=env),  # type: ignore[misc]
            )
            assert result.returncode == 0, (command, result.stderr)
            outputs.append(result.stdout.strip())
        pubs = [await reader.push() for _ in range(2)]
        assert [p["data"] for p in pubs] == [{"item": "tea"}] * 2
        assert outputs[0] == f"{pubs[0]['epoch']}:{pubs[0]['offset']}"
        assert json.loads(outputs[1]) == {"epoch": pubs[1]["epoch"], "offset": pubs[1]["offset"]}
        await reader.socket.close()
    finally:
        code, log = server.stop()
    assert code == 0, log


@pytest.mark.gen_test(timeout=60)
async def test_an_idempotent_publish_retried_on_the_other_process_is_published_once(
    pair: tuple[Server, Server],
) -> None:
    """The same idempotency key sent to A, then retried on B (behind a load balancer):
    one publication, the same position twice, the second marked repeated."""
    a, b = pair
    reader = await live(b)
    await reader.command(1, "subscribe", channel="orders")
    request = {"channel": "orders", "data": {"order": 9}, "idempotency_key": "order-9"}
    first = await api(a, "/api/publish", request)
    retry = await api(b, "/api/publish", request)
    assert first[0] == retry[0] == 200
    assert "repeated" not in first[1] and retry[1]["repeated"] is True
    assert (retry[1]["epoch"], retry[1]["offset"]) == (first[1]["epoch"], first[1]["offset"])
    later = await api(b, "/api/publish", {"channel": "orders", "data": "next"})
    pushes = [await reader.push() for _ in range(2)]
    assert [(p["offset"], p["data"]) for p in pushes] == [
        (first[1]["offset"], {"order": 9}),
        (later[1]["offset"], "next"),
    ]
    await reader.socket.close()
