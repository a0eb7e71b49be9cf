"""Redis behind Sentinel: ``--broker redis+sentinel://…``, and a failover under way.

The failover tests run a real master, its replica and three ``redis-server --sentinel``
on 127.0.0.1 (tests/services.py) and ``kill -9`` the master. They need redis-server and
redis-py; they skip without them, except under ``TORNWS_TEST_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_redis import chat, events, first_to_cross, say, until

from tornws.exceptions import ConfigError
from tornws.redis_broker import SentinelURL, check_url, parse_sentinel_url

from conftest import Server, free_port
from services import REDIS, Sentinels


def test_a_sentinel_url_names_the_sentinels_the_database_and_the_service() -> None:
    assert parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/2/cache") == (
        SentinelURL([("10.0.0.1", 26379), ("10.0.0.2", 26380)], "cache", 2, None, None)
    )
    # python-socketio's form: credentials (the master's), the service defaults to mymaster.
    assert parse_sentinel_url("redis+sentinel://ann:p%40ss@[::1]:26379") == (
        SentinelURL([("::1", 26379)], "mymaster", 0, "ann", "p@ss")
    )
    assert parse_sentinel_url("redis+sentinel://:secret@h:1/0/") == (
        SentinelURL([("h", 1)], "mymaster", 0, None, "secret")
    )


def test_a_password_is_not_shown_in_errors_or_logs() -> None:
    from tornws.redis_broker import redacted

    assert redacted("redis://ann:s3cret@h:1/0") == "redis://ann:***@h:1/0"
    assert redacted("redis+sentinel://:s3cret@h:1,h:2/0/s") == "redis+sentinel://:***@h:1,h:2/0/s"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ConfigError) as refused:
        check_url("redis+sentinel://ann:s3cret@h/0/s", "--broker")
    assert "s3cret" not in str(refused.value) and "ann:***@h" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h/0/s", "'h' is not HOST:PORT"),
        ("redis+sentinel://h:1,h2/0/s", "'h2' is not HOST:PORT"),
        ("redis+sentinel://h:99999/0/s", "'h:99999' is not HOST:PORT"),
        ("redis+sentinel://h:1/zero/s", "the database 'zero' is not a number"),
        ("redis+sentinel://h:1/0/s/t", "expected /DB/SERVICE after the Sentinels"),
        ("sentinel://h:1/0/s", "expected a redis://, rediss://, unix:// or redis+sentinel:// URL"),
    ],
)
def test_a_malformed_url_is_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)):
        check_url(url, "--broker")


def test_serve_and_publish_refuse_a_malformed_sentinel_url() -> None:
    from processes import run, tornws_command

    for command in (("serve", "--port", "0"), ("publish", "news", "1")):
        result = run(tornws_command(*command, "--broker", "redis+sentinel://h/0/s"))
        assert result.returncode == 2, result.stderr
        assert "--broker redis+sentinel://h/0/s: 'h' is not HOST:PORT" in result.stderr


pytest.importorskip("redis", reason="pip install 'tornws[redis]'")


@pytest.fixture
def sentinels() -> Iterator[Sentinels]:
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    group = Sentinels()
    yield group
    group.stop()


@pytest.fixture
def pair(sentinels: Sentinels) -> Iterator[tuple[Server, Server]]:
    """Two tornws processes on the Sentinels' master."""
    servers = []
    for _ in range(2):
        port = free_port()
        args = [sys.executable, "-m", "tornws", "serve", "--port", str(port)]
        servers.append(Server([*args, "--broker", sentinels.url], port))
    yield servers[0], servers[1]
    for server in servers:
        code, log = server.stop()
        assert code == 0, log
        assert "Traceback" not in log, log


async def messages_until(client: Any, text: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The chat messages received up to and including the one that says ``text``."""
    seen = await until(client, lambda e: e.get("text") == text, timeout)
    return [e for e in seen if e["type"] == "message"]


@pytest.mark.gen_test(timeout=90)
async def test_after_a_failover_every_process_carries_on_with_the_new_master(
    sentinels: Sentinels, pair: tuple[Server, Server]
) -> None:
    from tornws.publisher import Publisher

    a, b = pair
    ann = await chat(a, "ha", "ann")
    await events(ann, 2)  # presence, own join
    bob = await chat(b, "ha", "bob")
    await until(bob, lambda e: e["type"] == "join" and e["nick"] == "bob")
    for i in range(5):
        await ann.send(say(f"before {i}"))
    before = await messages_until(bob, "before 4")
    assert [e["text"] for e in before] == [f"before {i}" for i in range(5)]
    last = before[-1]

    loop = asyncio.get_running_loop()
    seconds = await loop.run_in_executor(None, sentinels.fail_over)
    assert seconds < 15, seconds

    # Until the processes reach the new master, a line is delivered on its own process
    # only (id 0); then it crosses again.
    first = await first_to_cross(ann, bob)
    assert first["epoch"] == last["epoch"] and first["id"] > last["id"]  # the new master's
    # Numbered from there on, by the new master, in one order for everyone.
    for i in range(5):
        await bob.send(say(f"after {i}"))
    after = await messages_until(ann, "after 4")
    ids = [e["id"] for e in after if e["text"].startswith("after")]
    assert ids == list(range(ids[0], ids[0] + 5)) and ids[0] > first["id"]

    # Presence spans both processes on the new master.
    await ann.send(json.dumps({"type": "presence"}))
    listed = (await until(ann, lambda e: e["type"] == "presence"))[-1]
    assert listed["members"] == ["ann", "bob"]

    # A publisher elsewhere reaches both processes through the Sentinels.
    with Publisher(sentinels.url) as publisher:
        position = await loop.run_in_executor(None, publisher.say, "ha", "from a script")
    assert position.epoch == last["epoch"] and position.offset == ids[-1] + 1
    for client in (ann, bob):
        said = (await messages_until(client, "from a script"))[-1]
        assert (said["sender"], said["id"]) == ("server", position.offset)

    # A resume on the other process gets exactly what the new master numbered after it.
    since = f"{last['epoch']}:{last['id']}"
    carol = await chat(b, "ha", "carol", since=since)
    replay = await until(carol, lambda e: e["type"] == "resumed")
    assert replay[-1]["recovered"] is True, replay[-1]
    replayed = [e for e in replay if e["type"] == "message"]
    assert replayed[-1]["id"] == position.offset
    assert [e["id"] for e in replayed] == list(range(last["id"] + 1, position.offset + 1))
    for client in (ann, bob, carol):
        await client.close()
    replica = f"(127.0.0.1:{sentinels.replica.port})"
    for server in (a, b):
        assert "redis connection lost" in server.output, server.output
        connected = [line for line in server.output.splitlines() if "redis connected" in line]
        assert connected and connected[-1].endswith(replica), connected
        metrics = await metrics_of(server)  # the outage, counted
        assert metrics["tornws_broker_up"] == 1 and metrics["tornws_broker_outages_total"] >= 1
        assert metrics["tornws_broker_history_losses_total"] == 0


async def metrics_of(server: Server) -> dict[str, float]:
    """``/metrics`` of ``server``, the samples without labels."""
    import tornado.httpclient

    pytest.importorskip("prometheus_client", reason="pip install 'tornws[metrics]'")
    url = server.url.replace("ws://", "http://") + "/metrics"
    response = await tornado.httpclient.AsyncHTTPClient().fetch(url)
    samples = {}
    for line in response.body.decode().splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            samples[name] = float(value)
    return samples


@pytest.mark.gen_test(timeout=90)
async def test_events_the_promoted_replica_never_had_are_not_numbered_again(
    sentinels: Sentinels, pair: tuple[Server, Server]
) -> None:
    """Replication is asynchronous: events the master acknowledged after its replica fell
    behind are gone with the master. Their ids are not given to other events: the room
    starts a new epoch, and a resume from before the loss is refused (recovered false)."""
    a, b = pair
    ann = await chat(a, "gap", "ann")
    await events(ann, 2)
    bob = await chat(b, "gap", "bob")
    await until(bob, lambda e: e["type"] == "join" and e["nick"] == "bob")
    for i in range(3):
        await ann.send(say(f"kept {i}"))
    kept = (await messages_until(bob, "kept 2"))[-1]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sentinels.cut_replica)
    for i in range(3):
        await ann.send(say(f"lost {i}"))
    lost = await messages_until(bob, "lost 2")  # delivered live, acknowledged by the master
    assert [e["id"] for e in lost] == [kept["id"] + 1, kept["id"] + 2, kept["id"] + 3]
    assert {e["epoch"] for e in lost} == {kept["epoch"]}
    await loop.run_in_executor(None, sentinels.fail_over)

    # Each process, back on Redis, compares the room with what it read: the first finds
    # fewer events there and starts the room's new epoch.
    replica = f"(127.0.0.1:{sentinels.replica.port})"
    deadline = time.monotonic() + 30
    while not all(f"{replica}\n" in server.output for server in (a, b)):
        assert time.monotonic() < deadline, (a.output, b.output)
        await asyncio.sleep(0.1)
    logs = a.output + b.output
    assert logs.count("lost some (a failover before they reached the replica?)") == 1, logs
    from tornws.publisher import Publisher

    with Publisher(sentinels.url) as publisher:  # (a publisher that reads no room)
        position = await loop.run_in_executor(None, publisher.say, "gap", "after the loss")
    assert position.epoch != kept["epoch"] and position.offset == 1  # not id 7 again
    for client in (ann, bob):
        said = (await messages_until(client, "after the loss"))[-1]
        assert (said["epoch"], said["id"]) == position
    crossed = await first_to_cross(ann, bob)
    for client in (ann, bob):  # later events: numbered on in the new epoch, everywhere
        await client.send(say(f"then from {client is ann}"))
    for client in (ann, bob):
        then = [e for e in await messages_until(client, "then from False") if e["id"]]
        assert then[-1]["epoch"] == position.epoch and then[-1]["id"] > crossed["id"] > 1
    for since in (lost[-1], kept):  # (the kept events are in the old epoch: refused too)
        carol = await chat(b, "gap", "carol", since=f"{since['epoch']}:{since['id']}")
        resumed = (await until(carol, lambda e: e["type"] == "resumed"))[-1]
        assert resumed["recovered"] is False, resumed
        await carol.close()
    for client in (ann, bob):
        await client.close()
    losses = [(await metrics_of(s))["tornws_broker_history_losses_total"] for s in (a, b)]
    assert sorted(losses) == [0, 1]  # (the first process back found it)


def test_tornws_publish_reaches_the_new_master(sentinels: Sentinels) -> None:
    import redis

    from processes import run, tornws_command

    first = run(tornws_command("publish", "--broker", sentinels.url, "news", json.dumps("one")))
    assert first.returncode == 0, first.stderr
    sentinels.fail_over()
    # The replica has what the master acknowledged before it died (here, on one host, it
    # was replicated at once); the next publication continues the channel's sequence.
    for _ in range(100):
        second = run(tornws_command("publish", "--broker", sentinels.url, "news", '"two"'))
        if second.returncode == 0:
            break
        time.sleep(0.1)
    assert second.returncode == 0, second.stderr
    epoch, offset = first.stdout.strip().split(":")
    assert second.stdout.strip() == f"{epoch}:{int(offset) + 1}", (first.stdout, second.stdout)
    replica = redis.Redis(port=sentinels.replica.port)
    try:
        assert replica.info("replication")["role"] == "master"
    finally:
        replica.close()


@pytest.mark.gen_test(timeout=60)
async def test_with_wait_a_publication_is_confirmed_only_once_a_replica_has_it(
    sentinels: Sentinels,
) -> None:
    from tornws.broker import Envelope
    from tornws.exceptions import NotReplicatedError
    from tornws.frames import Message
    from tornws.publisher import Publisher
    from tornws.redis_broker import RedisBroker

    from processes import run, tornws_command

    seen: list[Envelope] = []
    durable = RedisBroker(sentinels.url, replicas=1, replica_timeout=0.3)
    durable.attach(seen.append)
    await durable.start()
    publisher = Publisher(sentinels.url, replicas=1, replica_timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        durable.subscribe("news")
        ready = durable.ready("news")
        if ready is not None:
            await ready
        epoch, offset = await durable.publish_numbered("news", Message("replicated"))
        assert offset == 1
        assert (await loop.run_in_executor(None, publisher.say, "news", "too")).offset == 2

        await loop.run_in_executor(None, sentinels.cut_replica)
        started = time.monotonic()
        with pytest.raises(NotReplicatedError) as refused:
            await durable.publish_numbered("news", Message("only on the master"))
        assert 0.25 < time.monotonic() - started < 5
        assert (refused.value.epoch, refused.value.offset) == (epoch, 3)
        assert "0 of 1 replica(s) confirmed it within 0.3 s" in str(refused.value)
        assert durable.unreplicated == 1
        with pytest.raises(NotReplicatedError) as refused:
            await loop.run_in_executor(None, publisher.say, "news", "nor this")
        assert refused.value.offset == 4
        # Published all the same: the members got them (and without WAIT, nothing is said).
        for _ in range(100):
            if len(seen) >= 4:
                break
            await asyncio.sleep(0.02)
        assert [e.offset for e in seen] == [1, 2, 3, 4]
        with Publisher(sentinels.url) as hasty:
            assert hasty.say("news", "unconfirmed").offset == 5
        command = tornws_command(
            "publish", "--broker", sentinels.url, "--wait-replicas", "1", "news", "1"
        )
        result = await loop.run_in_executor(None, run, command)
        assert result.returncode == 1, result
        assert "but 0 of 1 replica(s) confirmed it within 1 s" in result.stderr
    finally:
        publisher.close()
        await durable.close()


def test_wait_replicas_needs_a_broker() -> None:
    from processes import run, tornws_command

    result = run(tornws_command("serve", "--port", "0", "--wait-replicas", "1"))
    assert result.returncode == 2
    assert "--wait-replicas needs --broker" in result.stderr


@pytest.mark.gen_test(timeout=120)
async def test_a_failover_loses_what_the_replica_lacked_unless_wait_was_asked() -> None:
    """The bench's failover (tornws bench --failover): with the replica cut off halfway,
    the publications the master confirmed after that are gone with it; with WAIT for one
    replica, none that was confirmed is lost (those not replicated were refused)."""
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    from tornws.bench.failover import lines, measure

    hasty = await measure(wait=False, lagging=True, seconds=0.6)
    durable = await measure(wait=True, lagging=True, seconds=0.6)
    assert hasty["confirmed"] > hasty["lost"] > 0, hasty  # (the first half was replicated)
    assert hasty["refused"] == 0, hasty
    assert durable["lost"] == 0 and durable["refused"] >= 1, durable
    assert durable["confirmed"] > 0, durable
    for case in (hasty, durable):
        assert case["promoted_s"] <= case["failover_s"] < 15, case
    table = lines([hasty, durable])
    assert table[2].split()[:2] == ["cut", "off"] and table[3].split()[2] == "1"
