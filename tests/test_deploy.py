"""The deployment of docs/deploy/: redis-server + two tornws processes behind nginx.

Everything runs for real on 127.0.0.1 with free ports: redis-server (append-only
file, fsync always), ``tornws serve --broker`` twice, and nginx with
``docs/deploy/nginx.conf`` (only its ports and paths rewritten); and its Sentinel
variant (docs/deploy/sentinel.md): a master, its replica and three Sentinels instead of
the one redis-server. Skips without nginx or redis-server, except under
``TORNWS_TEST_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import ROOT, Server, free_port, wait_for_port
from services import Sentinels

pytest.importorskip("redis", reason="pip install 'tornws[redis]'")

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
REDIS = shutil.which("redis-server")
CONFIG = Path(ROOT) / "docs" / "deploy" / "nginx.conf"
SERVE = [sys.executable, "-m", "tornws", "serve"]
#: TORNWS_API_KEY of both backends: the server API, reached through nginx.
API_KEY = "the deployment's api key, long enough"


class Deployment:
    """nginx, two tornws processes, and their Redis: one server, or ``sentinels``'s."""

    def __init__(self, folder: Path, sentinels: Sentinels | None = None) -> None:
        assert NGINX and REDIS
        self.folder = folder
        self.redis_port, self.ports, self.port = (
            free_port(),
            [free_port(), free_port()],
            free_port(),
        )
        self.redis: subprocess.Popen[bytes] | None = None
        if sentinels is None:
            self.start_redis()
            broker = f"redis://127.0.0.1:{self.redis_port}/0"
        else:
            broker = sentinels.url
        self.backends = [
            Server(
                [*SERVE, "--port", str(p), "--xheaders", "--broker", broker],
                p,
                env={"TORNWS_API_KEY": API_KEY},
            )
            for p in self.ports
        ]
        config = CONFIG.read_text()
        for old, new in (("8801", self.ports[0]), ("8802", self.ports[1]), ("8080", self.port)):
            assert f"127.0.0.1:{old}" in config
            config = config.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        (folder / "tmp").mkdir()
        (folder / "nginx.conf").write_text("user root;\n" + config)
        with open(folder / "nginx.log", "wb") as log:  # the child keeps its own copy
            self.nginx = subprocess.Popen(
                [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.nginx)
        self.url = f"ws://127.0.0.1:{self.port}"

    def start_redis(self) -> None:
        assert REDIS
        self.redis = subprocess.Popen(
            [
                REDIS,
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.redis_port, self.redis)

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.terminate()
        self.redis.wait(10)

    def close(self) -> list[tuple[int, str]]:
        self.nginx.terminate()
        self.nginx.wait(10)
        results = [backend.stop() for backend in self.backends]
        if self.redis is not None and self.redis.poll() is None:
            self.stop_redis()
        return results


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if NGINX is None or REDIS is None:
        pytest.skip("needs nginx and redis-server (apt-get install nginx redis-server)")
    running = Deployment(tmp_path)
    yield running
    running.close()


@pytest.fixture
def on_sentinels(tmp_path: Path) -> Iterator[tuple[Deployment, Sentinels]]:
    """The Sentinel variant: the backends' --broker is redis+sentinel://."""
    if NGINX is None or REDIS is None:
        pytest.skip("needs nginx and redis-server (apt-get install nginx redis-server)")
    sentinels = Sentinels()
    running = Deployment(tmp_path, sentinels)
    yield running, sentinels
    running.close()
    sentinels.stop()


class Member:
    """A chat.json client through nginx that reconnects with ``since=`` when cut."""

    def __init__(self, url: str, room: str, nick: str) -> None:
        self.base = f"{url}/chat/{room}?nick={nick}"
        self.nick = nick
        self.texts: list[str] = []
        self.ids: list[int] = []
        self.epoch = ""
        self.last = 0
        self.resumes: list[dict[str, Any]] = []
        self.connection: Any = None
        self.joined = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Cleared: stay away after a cut until it is set again.
        self.allowed = asyncio.Event()
        self.allowed.set()

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        await asyncio.wait_for(self.joined.wait(), 10)

    async def _run(self) -> None:
        while True:
            url = self.base + (f"&since={self.epoch}:{self.last}" if self.epoch else "")
            try:
                self.connection = await websockets.asyncio.client.connect(
                    url,
                    subprotocols=["chat.json"],  # type: ignore[list-item]
                )
            except (OSError, InvalidStatus):
                await asyncio.sleep(0.2)
                continue
            try:
                async for data in self.connection:
                    self._take(json.loads(data))
            except ConnectionClosed:
                pass
            if self.connection.close_code == 1000:
                return
            await self.allowed.wait()
            await asyncio.sleep(0.1)  # cut: come back with since=

    def _take(self, event: dict[str, Any]) -> None:
        if event["type"] == "resumed":
            self.resumes.append(event)
        if event.get("id"):
            self.epoch, self.last = event["epoch"], event["id"]
        if event["type"] == "join" and event["nick"] == self.nick:
            self.joined.set()
        if event["type"] == "message":
            self.texts.append(event["text"])
            self.ids.append(event["id"])

    async def say(self, text: str) -> None:
        await self.connection.send(json.dumps({"type": "message", "text": text}))

    async def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.texts:
            assert time.monotonic() < deadline, f"{self.nick} never got {text!r}: {self.texts}"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)


def on_backend(deployment: Deployment, room: str) -> list[int]:
    return [b.output.count(f"open /chat/{room} ") for b in deployment.backends]


@pytest.mark.gen_test(timeout=120)
async def test_clients_land_on_both_backends_and_survive_losing_one(
    deployment: Deployment,
) -> None:
    members = [Member(deployment.url, "dep", f"m{i}") for i in range(8)]
    for member in members:
        await member.start()
    assert all(count >= 1 for count in on_backend(deployment, "dep")), on_backend(deployment, "dep")
    await members[0].say("hello everyone")
    for member in members:
        await member.wait_for("hello everyone")

    # kill -9 one backend while a stream is going on; its clients come back through nginx
    # to the other backend, resume, and nobody misses or repeats anything.
    writer = members[1]
    sent = []
    for n in range(60):
        if n == 20:
            deployment.backends[0].process.send_signal(signal.SIGKILL)
        while True:
            try:
                await writer.say(f"n{n}")
                break
            except (ConnectionClosed, AttributeError):
                await asyncio.sleep(0.1)  # the writer itself was cut: it reconnects
        sent.append(f"n{n}")
        await asyncio.sleep(0.02)
    for member in members:
        await member.wait_for("n59", timeout=30)
    reference = members[1].texts
    for member in members:
        assert member.texts == reference, member.nick  # same messages, same order
        assert member.ids == sorted(set(member.ids))  # no repeat, no reordering
    numbered = [t for t in reference if t.startswith("n")]
    assert set(numbered) <= set(sent) and numbered[-1] == "n59"
    cut = [m for m in members if m.resumes]
    assert cut, "no client was on the killed backend"
    assert all(r["recovered"] for m in cut for r in m.resumes)
    for member in members:
        await member.stop()


@pytest.mark.gen_test(timeout=120)
async def test_a_redis_restart_loses_nothing_redis_acknowledged(deployment: Deployment) -> None:
    ann, bob = Member(deployment.url, "rr", "ann"), Member(deployment.url, "rr", "bob")
    await ann.start()
    await bob.start()
    await ann.say("first")
    await bob.wait_for("first")
    # bob drops out; ann talks; Redis acknowledges it (ann gets her echo with an id).
    bob.allowed.clear()
    await bob.connection.close(code=4000)
    for i in range(5):
        await ann.say(f"while bob is away {i}")
    await ann.wait_for("while bob is away 4")
    await asyncio.sleep(0.2)
    deployment.stop_redis()
    deployment.start_redis()  # the append-only file brings the streams back
    assert bob.texts == ["first"]
    bob.allowed.set()  # bob comes back with since=, through nginx
    await bob.wait_for("while bob is away 4", timeout=20)
    assert bob.resumes[-1]["recovered"] is True
    assert bob.texts == ["first", *(f"while bob is away {i}" for i in range(5))]
    await ann.say("after the restart")
    await bob.wait_for("after the restart")
    for member in (ann, bob):
        await member.stop()
    for code, log in deployment.close():
        assert code == 0, log
        assert "Traceback" not in log


@pytest.mark.gen_test(timeout=60)
async def test_a_publication_through_nginx_reaches_clients_on_both_backends(
    deployment: Deployment,
) -> None:
    """POST /api/publish through nginx lands on one backend; /live subscribers on both
    backends (nginx spreads them) get it, numbered once."""
    import tornado.httpclient

    subscribers = []
    for _ in range(4):  # round robin: two on each backend
        socket = await websockets.asyncio.client.connect(
            f"{deployment.url}/live",
            subprotocols=["tornws.v1"],  # type: ignore[list-item]
        )
        await socket.send(json.dumps({"id": 1, "type": "subscribe", "channel": "deploys"}))
        assert "result" in json.loads(await asyncio.wait_for(socket.recv(), 10))
        subscribers.append(socket)
    opened = [b.output.count("open /live ") for b in deployment.backends]
    assert all(count >= 1 for count in opened), opened
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{deployment.port}/api/publish",
        method="POST",
        body=json.dumps({"channel": "deploys", "data": {"version": "1.2.3"}}),
        headers={"X-API-Key": API_KEY},
    )
    position = json.loads(response.body)
    for socket in subscribers:
        push = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (push["offset"], push["data"]) == (position["offset"], {"version": "1.2.3"})
        await socket.close()
    unauthorized = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{deployment.port}/api/channels", raise_error=False
    )
    assert unauthorized.code == 401
    for backend in deployment.backends:
        assert API_KEY not in backend.output


@pytest.mark.gen_test(timeout=120)
async def test_behind_sentinel_the_rooms_outlive_the_master(
    on_sentinels: tuple[Deployment, Sentinels],
) -> None:
    """kill -9 of the Redis master while a stream goes on through nginx: the Sentinels
    promote the replica, both backends carry on with it, and every client ends with the
    same numbered messages in the same order, none repeated."""
    deployment, sentinels = on_sentinels
    members = [Member(deployment.url, "ha", f"m{i}") for i in range(6)]
    for member in members:
        await member.start()
    assert all(count >= 1 for count in on_backend(deployment, "ha")), on_backend(deployment, "ha")
    writer = members[0]
    started = time.monotonic()
    for n in range(80):
        if n == 20:
            sentinels.master.kill()
        await writer.say(f"n{n}")
        await asyncio.sleep(0.05)
    # (During the failover a line reaches the writer's backend only, with id 0.) Probe
    # until one crosses to every member again.
    probe = 0
    while True:
        assert time.monotonic() - started < 60, [m.texts[-3:] for m in members]
        await writer.say(f"probe {probe}")
        await asyncio.sleep(0.3)
        if all(f"probe {probe}" in m.texts for m in members):
            break
        probe += 1
    assert sentinels.master_port() == sentinels.replica.port
    for member in members:
        numbered = [(i, t) for i, t in zip(member.ids, member.texts) if i]
        reference = [(i, t) for i, t in zip(writer.ids, writer.texts) if i]
        assert numbered == reference, member.nick  # same numbered messages, same order
        assert [i for i, _ in numbered] == sorted({i for i, _ in numbered})  # none repeated
        assert f"probe {probe}" in member.texts
    numbered_texts = [t for i, t in zip(writer.ids, writer.texts) if i]
    assert "n0" in numbered_texts and "n19" in numbered_texts  # before the kill: all numbered
    for member in members:
        await member.stop()
    replica = f"(127.0.0.1:{sentinels.replica.port})"
    for code, log in deployment.close():
        assert code == 0, log
        assert "Traceback" not in log
        assert f"redis connected: {sentinels.url} {replica}" in log, log
