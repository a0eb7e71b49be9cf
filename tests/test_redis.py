"""Rooms across processes on a real redis-server: two ``tornws serve --broker`` processes.

Needs ``redis-server`` (``apt-get install redis-server``) and redis-py; skips
without them, except under ``TORNWS_TEST_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed

from conftest import Server, free_port
from services import REDIS, Redis

pytest.importorskip("redis", reason="pip install 'tornws[redis]'")

from tornws.chat import ChatEvent
from tornws.frames import Message
from tornws.redis_broker import decode_payload, encode_payload


@pytest.fixture
def redis() -> Iterator[Redis]:
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    server = Redis()
    yield server
    server.stop()


@pytest.fixture
def pair(redis: Redis) -> Iterator[tuple[Server, Server]]:
    """Two tornws processes on one Redis."""
    servers = []
    for _ in range(2):
        port = free_port()
        args = [sys.executable, "-m", "tornws", "serve", "--port", str(port), "--broker", redis.url]
        servers.append(Server(args, port))
    yield servers[0], servers[1]
    for server in servers:
        code, log = server.stop()
        assert code == 0, log
        assert "Traceback" not in log, log


async def chat(server: Server, room: str, nick: str, since: str = "") -> Any:
    url = f"{server.url}/chat/{room}?nick={nick}" + (f"&since={since}" if since else "")
    return await websockets.asyncio.client.connect(url, subprotocols=["chat.json"])  # type: ignore[list-item]


async def events(client: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(client.recv(), timeout)) for _ in range(count)]


async def until(client: Any, want: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Events up to and including the first for which ``want(event)`` holds."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        event = json.loads(await asyncio.wait_for(client.recv(), deadline - time.monotonic()))
        seen.append(event)
        if want(event):
            return seen


def say(text: str) -> str:
    return json.dumps({"type": "message", "text": text})


def test_payloads_round_trip() -> None:
    event = ChatEvent("message", "ann", "hé <b>", time=1.5, origin="x-1")
    assert decode_payload(encode_payload(event)) == event
    diff = ChatEvent("presence_diff", "", time=2.0, joins=("ann", "bo"), leaves=("cy",))
    assert decode_payload(encode_payload(diff)) == diff
    assert decode_payload(encode_payload(Message("text"))) == Message("text")
    assert decode_payload(encode_payload(Message(b"\x00\xff"))) == Message(b"\x00\xff")
    with pytest.raises(TypeError):
        encode_payload(object())


@pytest.mark.gen_test(timeout=60)
async def test_a_room_spans_processes_in_one_order(pair: tuple[Server, Server]) -> None:
    a, b = pair
    ann = await chat(a, "tea", "ann")
    await events(ann, 2)  # presence, own join
    bob = await chat(b, "tea", "bob")
    carol = await chat(a, "tea", "carol")
    await until(bob, lambda e: e["type"] == "join" and e["nick"] == "bob")
    await until(carol, lambda e: e["type"] == "join" and e["nick"] == "carol")
    await until(ann, lambda e: e["type"] == "join" and e["nick"] == "carol")
    # Three senders at once, on two processes.
    await asyncio.gather(
        *(
            c.send(say(f"{name} {i}"))
            for i in range(20)
            for c, name in ((ann, "ann"), (bob, "bob"), (carol, "carol"))
        )
    )
    seen = {}
    for name, client in (("ann", ann), ("bob", bob), ("carol", carol)):
        got = [
            e
            for e in await until(client, lambda e: e.get("text") == "carol 19", 10)
            if e["type"] == "message"
        ]
        while len(got) < 60:
            got += [e for e in await events(client, 1) if e["type"] == "message"]
        seen[name] = [(e["id"], e["sender"], e["text"]) for e in got]
    assert seen["ann"] == seen["bob"] == seen["carol"]  # one order everywhere
    ids = [i for i, _, _ in seen["ann"]]
    assert ids == list(range(ids[0], ids[0] + 60))
    for name in ("ann", "bob", "carol"):  # each sender's own lines in the order sent
        assert [t for _, s, t in seen["ann"] if s == name] == [f"{name} {i}" for i in range(20)]
    for client in (ann, bob, carol):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_resume_on_another_process_gets_exactly_what_was_missed(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    bob = await chat(b, "res", "bob")
    await events(bob, 2)
    ann = await chat(a, "res", "ann")
    await until(ann, lambda e: e["type"] == "join" and e["nick"] == "ann")
    await ann.send(say("before"))
    last = (await until(ann, lambda e: e.get("text") == "before"))[-1]
    await ann.close()
    await until(bob, lambda e: e["type"] == "leave")
    for i in range(3):
        await bob.send(say(f"missed {i}"))
    await until(bob, lambda e: e.get("text") == "missed 2")

    back = await chat(b, "res", "ann", since=f"{last['epoch']}:{last['id']}")
    got = await until(back, lambda e: e["type"] == "resumed")
    assert got[0]["type"] == "presence"
    assert [(e["type"], e.get("text"), e["id"]) for e in got[1:-1]] == [
        ("leave", None, last["id"] + 1),
        ("message", "missed 0", last["id"] + 2),
        ("message", "missed 1", last["id"] + 3),
        ("message", "missed 2", last["id"] + 4),
    ]
    assert got[-1] == {"type": "resumed", "room": "res", "recovered": True, "count": 4}
    join = (await events(back, 1))[0]
    assert (join["type"], join["nick"], join["id"]) == ("join", "ann", last["id"] + 5)
    await bob.send(say("live"))
    assert (await until(back, lambda e: e["type"] == "message"))[-1]["text"] == "live"
    # An epoch Redis does not know: recovered false, then live as a new client.
    stranger = await chat(a, "res", "eve", since="00000000:3")
    got = await until(stranger, lambda e: e["type"] == "resumed")
    assert got[-1]["recovered"] is False
    for client in (bob, back, stranger):
        await client.close()


@pytest.mark.gen_test(timeout=90)
async def test_redis_outage_keeps_local_rooms_going_and_heals(
    redis: Redis, pair: tuple[Server, Server]
) -> None:
    a, b = pair
    ann = await chat(a, "out", "ann")
    await until(ann, lambda e: e["type"] == "join" and e["nick"] == "ann")
    carol = await chat(a, "out", "carol")
    await until(carol, lambda e: e["type"] == "join" and e["nick"] == "carol")
    bob = await chat(b, "out", "bob")  # last: nothing more comes to bob but what we send
    await until(bob, lambda e: e["type"] == "join" and e["nick"] == "bob")
    await until(ann, lambda e: e["type"] == "join" and e["nick"] == "bob")
    await until(carol, lambda e: e["type"] == "join" and e["nick"] == "bob")

    redis.stop()
    await ann.send(say("while redis is down"))
    local = (await until(carol, lambda e: e["type"] == "message"))[-1]
    assert (local["text"], local["id"], local["epoch"]) == ("while redis is down", 0, "")
    try:
        unexpected = await events(bob, 1, timeout=1.0)
    except asyncio.TimeoutError:
        unexpected = []
    assert unexpected == []  # the other process cannot hear it

    # A newcomer to a room its process does not read yet is greeted anyway (after 2 s).
    dave = await chat(a, "new-room", "dave")
    greeting = await events(dave, 2, timeout=10)
    assert greeting[0]["type"] == "presence" and greeting[0]["members"] == ["dave"]
    assert (greeting[1]["type"], greeting[1]["nick"], greeting[1]["id"]) == ("join", "dave", 0)
    await dave.close()

    redis.start()  # empty: a new epoch for every room
    deadline = time.monotonic() + 20
    while a.output.count("redis connected") < 2 or b.output.count("redis connected") < 2:
        assert time.monotonic() < deadline, (a.output, b.output)
        await asyncio.sleep(0.1)
    await ann.send(say("redis is back"))
    for client in (bob, carol):
        event = (await until(client, lambda e: e.get("text") == "redis is back", 10))[-1]
        assert event["id"] == 1 and event["epoch"] not in ("", local["epoch"])
    assert "delivered to this process only" in a.output
    for client in (ann, bob, carol):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_redis_that_stops_answering_does_not_stop_each_process_serving_its_own(
    redis: Redis, pair: tuple[Server, Server]
) -> None:
    """Redis frozen (SIGSTOP: connections open, no answer; what a network partition
    looks like): within the broker's command timeout each process delivers its own
    members' lines, unnumbered; the outage is logged; once Redis answers, lines cross
    the processes again and a resume across the outage works."""
    import signal

    a, b = pair
    ann = await chat(a, "hush", "ann")
    await events(ann, 2)
    carol = await chat(a, "hush", "carol")
    bob = await chat(b, "hush", "bob")
    await until(ann, lambda e: e["type"] == "join" and e["nick"] == "bob")
    await ann.send(say("before"))
    before = (await until(bob, lambda e: e.get("text") == "before"))[-1]
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        sent = time.monotonic()
        await ann.send(say("frozen 1"))
        got = (await until(carol, lambda e: e.get("text") == "frozen 1", timeout=10))[-1]
        assert got["id"] == 0 and time.monotonic() - sent < 2 * 2.0 + 2  # (2 tries)
        sent = time.monotonic()
        await ann.send(say("frozen 2"))  # Redis is known down now: at once
        got = (await until(carol, lambda e: e.get("text") == "frozen 2", timeout=10))[-1]
        assert got["id"] == 0 and time.monotonic() - sent < 1.0
    finally:
        redis.process.send_signal(signal.SIGCONT)
    assert "redis unreachable" in a.output, a.output
    crossed = await first_to_cross(ann, bob)
    assert crossed["epoch"] == before["epoch"] and crossed["id"] > before["id"]
    back = await chat(b, "hush", "dan", since=f"{before['epoch']}:{before['id']}")
    resumed = await until(back, lambda e: e["type"] == "resumed")
    assert resumed[-1]["recovered"] is True
    assert crossed["id"] in [e.get("id") for e in resumed]
    for client in (ann, bob, carol, back):
        await client.close()


async def first_to_cross(
    sender: Any, receiver: Any, timeout: float = 30.0, seen: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Send probes from ``sender`` until one reaches ``receiver`` (on another process,
    once both reach Redis again); that message. ``seen`` gets every event received."""
    deadline = time.monotonic() + timeout
    probe = 0
    while time.monotonic() < deadline:
        text = f"probe {probe}"
        await sender.send(say(text))
        probe += 1
        try:
            while True:
                event = json.loads(await asyncio.wait_for(receiver.recv(), 0.5))
                if seen is not None:
                    seen.append(event)
                if event.get("text") == text:
                    return event
        except asyncio.TimeoutError:
            pass
    raise AssertionError("no line crossed the processes")


def test_broker_must_be_a_redis_url() -> None:
    from processes import run, tornws_command

    result = run(tornws_command("serve", "--port", "0", "--broker", "http://x"))
    assert result.returncode == 2, result.stderr
    expected = "expected a redis://, rediss://, unix:// or redis+sentinel:// URL"
    assert f"--broker http://x: {expected}" in result.stderr


@pytest.mark.gen_test(timeout=30)
async def test_clients_closed_on_sigterm_with_a_broker(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    ann = await chat(a, "bye", "ann")
    await events(ann, 2)
    a.process.terminate()
    with pytest.raises(ConnectionClosed):
        await events(ann, 5)
    assert ann.close_code == 1001


@pytest.mark.gen_test(timeout=60)
async def test_workers_share_the_port_and_one_room(redis: Redis) -> None:
    """`--workers 2`: the kernel spreads clients over both processes (SO_REUSEPORT);
    they chat in one room through Redis; SIGTERM drains both and the parent exits 0."""
    port = free_port()
    args = [sys.executable, "-m", "tornws", "serve", "--port", str(port)]
    server = Server([*args, "--workers", "2", "--broker", redis.url], port)
    try:
        clients = [await chat(server, "crowd", f"u{i}") for i in range(12)]
        for i, client in enumerate(clients):
            await until(client, lambda e, i=i: e["type"] == "join" and e["nick"] == f"u{i}")
        pids = {
            line.split("[", 1)[1].split("]", 1)[0]
            for line in server.output.splitlines()
            if "open /chat/crowd" in line
        }
        assert len(pids) == 2, server.output
        await clients[0].send(say("hello, both processes"))
        for client in clients:
            await until(client, lambda e: e.get("text") == "hello, both processes")
        server.process.terminate()
        for client in clients:
            with pytest.raises(ConnectionClosed):
                await events(client, 100)
            assert client.close_code == 1001
    finally:
        code, log = server.stop()
    assert code == 0, log
    assert "started 2 workers" in log


def test_workers_without_a_broker_are_refused() -> None:
    from processes import run, tornws_command

    result = run(tornws_command("serve", "--port", "0", "--workers", "2"))
    assert result.returncode == 2
    assert "--workers needs --broker redis://" in result.stderr


class Reading:
    """A RedisBroker in this process, reading rooms, and what it delivered."""

    def __init__(self, url: str, **options: Any) -> None:
        from tornws.broker import Envelope
        from tornws.redis_broker import RedisBroker

        self.seen: list[Envelope] = []
        self.broker = RedisBroker(url, **options)
        self.broker.attach(self.seen.append)

    async def start(self, *rooms: str) -> Any:
        """Start it, reading ``rooms``; the broker."""
        await self.broker.start()
        for room in rooms:
            self.broker.subscribe(room)
            ready = self.broker.ready(room)
            if ready is not None:
                await ready
        return self.broker

    async def received(self, count: int, room: str | None = None) -> list[Any]:
        """The envelopes delivered (of ``room``), once there are ``count`` (3 s at most)."""
        for _ in range(300):
            got = [e for e in self.seen if room is None or e.room == room]
            if len(got) >= count:
                return got
            await asyncio.sleep(0.01)
        return got


@pytest.mark.gen_test(timeout=30)
async def test_an_unkept_message_is_delivered_but_ends_what_can_be_resumed(redis: Redis) -> None:
    """``publish(..., keep=False)`` (the /broadcast relay): every process gets it, and a
    resume across it says recovered false, as with the memory broker."""
    reading = Reading(redis.url)
    broker = await reading.start("k")
    try:
        broker.publish("k", Message("kept"))
        broker.publish("k", Message("not kept"), keep=False)
        broker.publish("k", Message("kept again"))
        seen = await reading.received(3)
        assert [e.payload for e in seen] == [
            Message("kept"),
            Message("not kept"),
            Message("kept again"),
        ]
        epoch = seen[0].epoch
        resumed = await broker.recover("k", epoch, seen[1].offset)
        assert resumed is not None
        assert [(e.offset, e.payload) for e in resumed] == [(seen[2].offset, Message("kept again"))]
        assert await broker.recover("k", epoch, seen[0].offset) is None
    finally:
        await broker.close()


@pytest.mark.gen_test(timeout=30)
async def test_what_a_process_publishes_right_after_subscribing_reaches_it(redis: Redis) -> None:
    """A room subscribed and published to on the same loop turn (a /live subscriber's own
    join, a chat user's join): the process reads its own publication, even when the room's
    stream already has entries and the reader is busy with another room."""
    from tornws.broker import Envelope
    from tornws.redis_broker import RedisBroker

    seen: list[Envelope] = []
    other = RedisBroker(redis.url)  # gives "late" a stream with entries
    broker = RedisBroker(redis.url)
    broker.attach(seen.append)
    other.attach(lambda envelope: None)
    await other.start()
    await broker.start()
    try:
        for text in ("old 1", "old 2"):
            other.publish("late", Message(text))
        broker.subscribe("busy")  # the reader now waits in a blocking read of "busy"
        ready = broker.ready("busy")
        if ready is not None:
            await ready
        await asyncio.sleep(0.2)
        for round in range(3):
            broker.subscribe("late")
            broker.publish("late", Message(f"mine {round}"))
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            assert [e.payload for e in seen] == [Message(f"mine {round}")]
            seen.clear()
            broker.unsubscribe("late")
            await asyncio.sleep(0.15)
    finally:
        await broker.close()
        await other.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_room_quiet_past_its_history_age_still_delivers_its_next_epoch(
    redis: Redis,
) -> None:
    """A room's keys expire ``history_age`` after its last message; its next message
    starts a new epoch at offset 1, and every process still subscribed receives it (its
    readers wait after the last entry they saw, whose offset was higher)."""
    reading = Reading(redis.url, history_age=0.5)
    reader = await reading.start("quiet")
    writer = await Reading(redis.url, history_age=0.5).start()  # another process, not reading

    async def received(count: int) -> list[tuple[str, int, object]]:
        return [(e.epoch, e.offset, e.payload) for e in await reading.received(count)]

    try:
        for text in ("one", "two", "three"):
            writer.publish("quiet", Message(text))
        before = await received(3)
        old = before[0][0]
        assert before == [(old, n, Message(t)) for n, t in ((1, "one"), (2, "two"), (3, "three"))]
        assert await reader.recover("quiet", old, 1) is not None  # (resumable so far)
        await asyncio.sleep(1.0)  # the room's keys expire
        writer.publish("quiet", Message("after the silence"))
        after = (await received(4))[3:]
        assert len(after) == 1, after
        epoch, offset, payload = after[0]
        assert (offset, payload) == (1, Message("after the silence"))
        assert epoch != old  # a new epoch: a resume from the old one is refused
        assert await reader.recover("quiet", old, 2) is None
        assert [e.payload for e in await reader.recover("quiet", epoch, 0) or []] == [
            Message("after the silence")
        ]
    finally:
        await reader.close()
        await writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_redis_that_numbered_less_than_was_read_starts_a_new_epoch(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher that read a room up to offset 5 finds Redis's counter at 2 (a promoted
    replica that missed events): its publication starts a new epoch, at offset 1, rather
    than be numbered 3 again (tests/test_sentinel.py has the failover itself)."""
    import redis as redis_py

    reading = Reading(redis.url)
    broker = await reading.start("r")
    raw = redis_py.Redis(port=redis.port, decode_responses=True)
    try:
        for i in range(5):
            broker.publish("r", Message(f"read {i}"))
        read = await reading.received(5)
        assert [e.offset for e in read] == [1, 2, 3, 4, 5]
        raw.set("tornws:room:r:n", 2)  # (what a replica had when it was promoted, say)
        with caplog.at_level("WARNING", "tornws.redis_broker"):
            epoch, offset = await broker.publish_numbered("r", Message("next"))
        assert epoch != read[0].epoch and offset == 1
        [after] = (await reading.received(6))[5:]
        assert (after.epoch, after.offset, after.payload) == (epoch, 1, Message("next"))
        assert "redis has fewer events of epoch" in caplog.text
        assert await broker.recover("r", read[0].epoch, 3) is None
    finally:
        raw.close()
        await broker.close()


@pytest.mark.gen_test(timeout=30)
async def test_offsets_numbered_again_are_never_delivered_as_what_follows(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost a room's last events (a replica promoted before it had them). A
    publisher that was given them starts a new epoch itself; one that knew nothing of the
    room (a fresh script) is given offsets the reader delivered already: the reader
    delivers neither those nor what follows in that epoch, and the room starts anew."""
    import redis as redis_py

    from tornws.publisher import Publisher

    reading = Reading(redis.url)
    broker = await reading.start("r", "s")
    raw = redis_py.Redis(port=redis.port, decode_responses=True)
    loop = asyncio.get_running_loop()
    received = reading.received
    try:
        with Publisher(redis.url) as publisher:
            for room in ("r", "s"):
                for i in range(5):
                    publisher.say(room, f"read {i}")
            read = {room: await received(5, room) for room in ("r", "s")}
            assert [e.offset for e in read["r"]] == [1, 2, 3, 4, 5] == [e.offset for e in read["s"]]
            for room in ("r", "s"):
                raw.set(f"tornws:room:{room}:n", 3)  # (what the promoted replica had)
            # This publisher remembers it was given 5 in "r": it starts a new epoch itself.
            own = await loop.run_in_executor(None, publisher.say, "r", "remembered")
        assert own.epoch != read["r"][0].epoch and own.offset == 1
        assert [(e.epoch, e.offset) for e in (await received(6, "r"))[5:]] == [own]
        with caplog.at_level("WARNING", "tornws.redis_broker"):
            with Publisher(redis.url) as stranger:  # never published to "s"
                again = [stranger.say("s", f"renumbered {i}") for i in range(3)]
            assert [p.offset for p in again] == [4, 5, 6]  # (6: beyond what was read)
            for _ in range(100):
                if raw.get("tornws:room:s:epoch") is None:
                    break
                await asyncio.sleep(0.02)
            assert raw.get("tornws:room:s:epoch") is None  # the reader ended that epoch
            assert "redis has fewer events of epoch" in caplog.text
        epoch, offset = await broker.publish_numbered("s", Message("fresh"))
        assert epoch != read["s"][0].epoch and offset == 1
        after = [(e.epoch, e.offset, e.payload) for e in (await received(6, "s"))[5:]]
        assert after == [(epoch, 1, Message("fresh"))]  # and none of the renumbered ones
    finally:
        raw.close()
        await broker.close()


@pytest.mark.gen_test(timeout=30)
async def test_publishing_that_timed_out_resumes_once_redis_answers(redis: Redis) -> None:
    """Redis pauses writes only (CLIENT PAUSE WRITE): the publisher times out and goes
    local while the reader still reads; once writes are accepted again, publications are
    numbered again (the reader, not failing itself, finds out that Redis answers)."""
    import redis as redis_py

    reading = Reading(redis.url, timeout=0.5)
    broker = await reading.start("r")
    raw = redis_py.Redis(port=redis.port)
    try:
        raw.client_pause(1500, all=False)  # (writes only)
        broker.publish("r", Message("paused"))
        seen = await reading.received(1)
        assert [(e.offset, e.payload) for e in seen] == [(0, Message("paused"))]  # local
        await asyncio.sleep(1.5)  # writes accepted again
        _, offset = await broker.publish_numbered("r", Message("numbered again"))
        assert offset >= 1 and broker.up
    finally:
        raw.close()
        await broker.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_an_earlier_tornws_wrote_is_read_on(redis: Redis) -> None:
    """Entries whose id was ``<offset>-1`` (time in field ``t``, no field ``o``): read,
    numbered on, resumed across; an entry tornws did not write is skipped."""
    import redis as redis_py

    raw = redis_py.Redis(port=redis.port, decode_responses=True)
    millis = str(int(time.time() * 1000))
    for offset in (1, 2):
        fields = {"e": "0ld", "p": encode_payload(Message(f"old {offset}")), "t": millis}
        raw.xadd("tornws:room:r:stream", {**fields, "k": "1"}, id=f"{offset}-1")
    raw.set("tornws:room:r:epoch", "0ld")
    raw.set("tornws:room:r:n", 2)
    reading = Reading(redis.url)
    broker = await reading.start("r")
    try:
        raw.xadd("tornws:room:r:stream", {"not": "tornws's"})  # skipped (and logged)
        assert await broker.publish_numbered("r", Message("new")) == ("0ld", 3)
        assert [(e.epoch, e.offset) for e in await reading.received(1)] == [("0ld", 3)]
        replay = await broker.recover("r", "0ld", 2)
        assert [(e.offset, e.payload) for e in replay or []] == [(3, Message("new"))]
        stranger = [i for i, f in raw.xrange("tornws:room:r:stream") if "not" in f]
        raw.xdel("tornws:room:r:stream", *stranger)  # (without it, the range is whole)
        replay = await broker.recover("r", "0ld", 1)
        assert [(e.offset, e.payload) for e in replay or []] == [
            (2, Message("old 2")),
            (3, Message("new")),
        ]
    finally:
        raw.close()
        await broker.close()


class Live:
    """A /live client that keeps the pushes arriving while it waits for a reply."""

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

    async def pubs(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` publications pushed (waiting for the rest)."""
        while sum(p["type"] == "pub" for p in self.pushes) < count:
            self.pushes.append(json.loads(await asyncio.wait_for(self.socket.recv(), 5)))
        pubs = [p for p in self.pushes if p["type"] == "pub"]
        self.pushes = []
        return pubs[:count]

    async def close(self) -> None:
        await self.socket.close()


async def live(server: Server) -> Live:
    socket = await websockets.asyncio.client.connect(
        f"{server.url}/live",
        subprotocols=["tornws.v1"],  # type: ignore[list-item]
    )
    return Live(socket)


@pytest.mark.gen_test(timeout=60)
async def test_live_channels_span_processes_and_resume_on_another(
    pair: tuple[Server, Server],
) -> None:
    """/live on two processes: publications from either are numbered in one sequence and
    reach subscribers on both; a subscriber that left and comes back on the other
    process gets exactly what it missed, then what follows."""
    a, b = pair
    ann, bob = await live(a), await live(b)
    first = await ann.command(1, "subscribe", channel="news")
    await bob.command(1, "subscribe", channel="news")
    epoch = first["epoch"]
    offsets = []
    for i, (sender, ident) in enumerate(((ann, 2), (bob, 2), (ann, 3), (bob, 3))):
        offsets.append((await sender.command(ident, "publish", channel="news", data=i))["offset"])
    assert offsets == list(range(first["offset"] + 1, first["offset"] + 5))
    for client in (ann, bob):  # every publication, from both processes, in one order
        assert [(p["epoch"], p["offset"], p["data"]) for p in await client.pubs(4)] == [
            (epoch, offset, i) for i, offset in enumerate(offsets)
        ]
    await ann.close()
    # Missed while away: published on b, where ann will come back.
    for i in range(3):
        await bob.command(10 + i, "publish", channel="news", data=f"missed {i}")
    back = await live(b)
    since = f"{epoch}:{offsets[-1]}"
    resumed = await back.command(1, "subscribe", channel="news", since=since)
    assert resumed["recovered"] is True
    assert [(p["offset"], p["data"]) for p in resumed["publications"]] == [
        (offsets[-1] + 1 + i, f"missed {i}") for i in range(3)
    ]
    assert resumed["offset"] == offsets[-1] + 3
    # Live again: a publication from the other process, and nothing twice.
    carol = await live(a)
    await carol.command(1, "publish", channel="news", data="after")
    (push,) = await back.pubs(1)
    assert (push["offset"], push["data"]) == (offsets[-1] + 4, "after")
    assert carol.pushes == []  # not subscribed: no push
    # An epoch Redis never gave: recovered false, no publications.
    stranger = await live(a)
    result = await stranger.command(1, "subscribe", channel="news", since="00000000:1")
    assert result["recovered"] is False and "publications" not in result
    for client in (bob, back, carol, stranger):
        await client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_of_subscribes_all_get_their_result(pair: tuple[Server, Server]) -> None:
    """150 connections subscribe at once: each subscribe asks Redis for its channel's
    position concurrently, and every one gets a result (redis-py's default pool raised
    "Too many connections" past 100 at once, answered as unavailable)."""
    a, _ = pair
    clients = await asyncio.gather(*(live(a) for _ in range(150)))
    subscribe = json.dumps({"id": 1, "type": "subscribe", "channel": "burst"})
    await asyncio.gather(*(client.socket.send(subscribe) for client in clients))
    replies = await asyncio.gather(
        *(asyncio.wait_for(client.socket.recv(), 10) for client in clients)
    )
    errors = [r for r in map(json.loads, replies) if "error" in r]
    assert errors == []
    await asyncio.gather(*(client.close() for client in clients))
