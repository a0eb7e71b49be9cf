"""tornws on separate network hosts (tests/netns.py): the Redis master, its replica and
three Sentinels on a host each, two tornws hosts, the clients on another (this process's).

Needs root (network namespaces, veth, bridges), iproute2, redis-server and redis-py;
skips with the reason without them, except under ``TORNWS_TEST_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netns import Network, unavailable
from test_redis import chat, events, first_to_cross, live, say, until
from test_sentinel import messages_until, metrics_of

from conftest import Server
from services import REDIS, Sentinels

pytest.importorskip("redis", reason="pip install 'tornws[redis]'")

PORT = 8000  # (each host has its own ports)


class Topology:
    def __init__(self, network: Network, redis: Sentinels, servers: list[Server]) -> None:
        self.network = network
        self.redis = redis
        self.a, self.b = servers


@pytest.fixture
def hosts() -> Iterator[Topology]:
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    network = Network()
    servers: list[Server] = []
    redis = None
    try:
        master, replica, watchers = (network.host(n, front=True, back=True) for n in "mrs")
        redis = Sentinels(hosts=(master, replica, watchers))  # a host each
        for name in ("a", "b"):
            host = network.host(name, front=True, back=True)
            command = [*host.prefix, sys.executable, "-m", "tornws", "serve"]
            command += ["--host", host.reach, "--port", str(PORT), "--broker", redis.url]
            servers.append(Server(command, PORT, host=host.reach))
        yield Topology(network, redis, servers)
        for server in servers:
            code, log = server.stop()
            assert code == 0, log
            assert "Traceback" not in log, log
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()
        network.close()


@pytest.mark.gen_test(timeout=120)
async def test_rooms_and_channels_cross_hosts_and_outlive_the_master(hosts: Topology) -> None:
    a, b = hosts.a, hosts.b
    ann = await chat(a, "far", "ann")
    await events(ann, 2)
    bob = await chat(b, "far", "bob")
    await until(bob, lambda e: e["type"] == "join" and e["nick"] == "bob")
    reader, writer = await live(b), await live(a)
    await reader.command(1, "subscribe", channel="news")
    await writer.command(1, "publish", channel="news", data="from host a")
    [pushed] = await reader.pubs(1)
    assert pushed["data"] == "from host a"

    loop = asyncio.get_running_loop()
    for n in range(30):
        if n == 10:  # kill -9 of the master, on its own host, mid-stream
            await loop.run_in_executor(None, hosts.redis.master.kill)
        await ann.send(say(f"n{n}"))
        await asyncio.sleep(0.05)
    got: list[dict[str, Any]] = []
    await first_to_cross(ann, bob, timeout=60, seen=got)
    got = [e for e in got if e["type"] == "message"]
    numbered = [e["id"] for e in got if e["id"]]
    assert numbered == sorted(set(numbered))  # one order, none repeated
    assert [e["text"] for e in got if e["id"]][:10] == [f"n{n}" for n in range(10)]
    assert hosts.redis.master_port() == hosts.redis.replica.port
    answer = await writer.command(2, "publish", channel="news", data="after the failover")
    [pushed] = await reader.pubs(1)
    assert (pushed["data"], pushed["offset"]) == ("after the failover", answer["offset"])
    for client in (ann, bob):
        await client.close()
    for client in (reader, writer):
        await client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_partitioned_host_serves_its_own_members_and_heals(hosts: Topology) -> None:
    """Host a's link to Redis down for 10 s while both hosts keep chatting."""
    a, b = hosts.a, hosts.b
    ann = await chat(a, "split", "ann")
    await events(ann, 2)
    carol = await chat(a, "split", "carol")
    bob = await chat(b, "split", "bob")
    dan = await chat(b, "split", "dan")
    for client in (ann, carol, bob):
        await until(client, lambda e: e["type"] == "join" and e["nick"] == "dan")
    await ann.send(say("before"))
    before = (await messages_until(dan, "before"))[-1]

    hosts.network.cut("a")
    cut = time.monotonic()
    late: list[float] = []
    try:
        for i in range(10):
            sent = time.monotonic()
            await ann.send(say(f"a {i}"))
            await bob.send(say(f"b {i}"))
            got = (await messages_until(carol, f"a {i}", timeout=8))[-1]
            late.append(time.monotonic() - sent)
            assert got["id"] == 0  # this host's members only, unnumbered
            assert (await messages_until(dan, f"b {i}"))[-1]["id"] > before["id"]
            await asyncio.sleep(max(0, cut + i + 1 - time.monotonic()))
    finally:
        hosts.network.heal("a")
    assert time.monotonic() - cut >= 10
    assert max(late[1:]) < 1.0, late  # (the first waited for the command timeout)
    heard = [e.get("text") for e in await messages_until(bob, "b 9")]
    assert not any(text and text.startswith("a ") for text in heard)  # cut off: not heard

    crossed = await first_to_cross(ann, bob, timeout=30)
    assert crossed["epoch"] == before["epoch"] and crossed["id"] > before["id"]
    metrics = await metrics_of(a)
    assert metrics["tornws_broker_up"] == 1 and metrics["tornws_broker_outages_total"] >= 1
    assert "redis" in a.output and "unreachable" in a.output, a.output
    # A resume on host a after the heal gets what host b said meanwhile.
    eve = await chat(a, "split", "eve", since=f"{before['epoch']}:{before['id']}")
    replay: list[dict[str, Any]] = await until(eve, lambda e: e["type"] == "resumed")
    assert replay[-1]["recovered"] is True, replay[-1]
    texts = [e.get("text") for e in replay]
    assert all(f"b {i}" in texts for i in range(10)), texts
    for client in (ann, carol, bob, dan, eve):
        await client.close()
