"""``tornws bench --failover`` (or ``python -m tornws.bench.failover``): what a Redis
failover costs, measured.

:class:`Replicated` runs a master, its replica and three Sentinels (``redis-server
--sentinel``, quorum 2, ``down-after-milliseconds 1000``) on 127.0.0.1; the tests use
it too. Each case starts a fresh one, and a :class:`tornws.publisher.AsyncPublisher`
through the Sentinels publishes numbered publications to one channel, one after the
other, for 1 s; then ``kill -9`` of the master. Once the Sentinels have promoted the
replica, the new master's counter for the channel is read (what it had of the old
master's numbering), then publishing goes on until one publication is numbered by the
new master. Figures per case:

- ``rate``: publications confirmed per second before the kill; ``p50_ms``: their latency;
- ``promoted_s``: from the kill to the Sentinels naming the replica;
- ``failover_s``: from the kill to the first publication numbered by the new master;
- ``confirmed``: publications the old master confirmed (a position returned);
- ``lost``: those of them the new master does not have (their offsets are above its
  counter): a resume across them answers ``recovered: false``;
- ``refused``: publications not confirmed (``WAIT`` ran out: NotReplicatedError), which
  their publisher knows were not made safe.

The cases: the replica in sync, or cut off from the master halfway (its link broken:
what a network partition between them, or a replica that fell behind, does), each
without and with ``WAIT`` for one replica (``replicas=1``, 0.5 s at most).

Needs redis-server and the ``redis`` extra. Linux, 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple

from ..exceptions import BrokerUnavailableError, ConfigError, NotReplicatedError

__all__ = ["LOCAL", "Host", "RedisProcess", "Replicated", "failover", "lines", "measure"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("a Redis failover needs redis-server (apt-get install redis-server)")
    return binary


class Host(NamedTuple):
    """Where a server runs: the addresses it listens on (the first is the one the others
    are given), the address this process reaches it at, and the command prefix that runs
    a program there (``ip netns exec NAME``, say). :data:`LOCAL`: 127.0.0.1 itself."""

    addresses: tuple[str, ...] = ("127.0.0.1",)
    reach: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return self.addresses[0]


LOCAL = Host()


def _open_to(host: Host) -> tuple[str, ...]:
    """Off a loopback address, without a password: Redis's protected mode off (the
    hosts of a test network)."""
    return () if host == LOCAL else ("--protected-mode", "no")


class RedisProcess:
    """``redis-server`` on ``host`` (a free port unless given), without persistence,
    with ``extra`` arguments; its files in ``directory``."""

    def __init__(self, *extra: str, directory: str, port: int = 0, host: Host = LOCAL) -> None:
        self.host = host
        self.port = port or _free_port()
        self.url = f"redis://{host.address}:{self.port}/0"
        self.args = [
            *host.prefix, _redis_server(), "--port", str(self.port),
            "--bind", " ".join(host.addresses), "--save", "", "--appendonly", "no",
            "--dir", directory, *_open_to(host), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.port, self.process, self.host.reach)

    def kill(self) -> None:
        """``kill -9``: no goodbye to anyone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _wait_listening(
    port: int, process: subprocess.Popen[bytes], host: str = "127.0.0.1", timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


class Replicated:
    """A master, its replica and three Sentinels monitoring them as ``service``, on
    127.0.0.1; the master is taken for down after ``down_after_ms`` without an answer
    (a quorum of 2), and a failover promotes the replica. ``url`` is the Sentinels'
    ``redis+sentinel://`` URL. The master, the replica and the Sentinels run on
    ``hosts`` (each on ``host`` if not given). Blocking calls: run them in a thread from
    a loop."""

    def __init__(
        self,
        service: str = "tornws",
        down_after_ms: int = 1000,
        host: Host = LOCAL,
        hosts: tuple[Host, Host, Host] | None = None,
    ) -> None:
        self.service = service
        master_host, replica_host, host = hosts or (host, host, host)
        self.host = host
        self._dir = tempfile.TemporaryDirectory(prefix="tornws-sentinel-")
        where = self._dir.name
        # (No 5 s wait before the first sync: a replica that has not synced yet would have
        # nothing to give when promoted.)
        sync = ("--repl-diskless-sync-delay", "0")
        self.master = RedisProcess(*sync, directory=where, host=master_host)
        # (The replica writes what it receives to dump.rdb in its directory. Its own port:
        # the Sentinels' answer tells them apart by it.)
        port = _free_port()
        while port == self.master.port:
            port = _free_port()
        replicaof = ("--replicaof", master_host.address, str(self.master.port))
        self.replica = RedisProcess(*replicaof, directory=where, port=port, host=replica_host)
        self.ports = [_free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            config = Path(where, f"sentinel-{port}.conf")
            config.write_text(
                f"port {port}\nbind {' '.join(host.addresses)}\ndir {where}\n"
                f"protected-mode {'yes' if host == LOCAL else 'no'}\n"
                f"sentinel monitor {service} {master_host.address} {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} 10000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            process = subprocess.Popen(
                [*host.prefix, _redis_server(), str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append(process)
            _wait_listening(port, process, host.reach)
        sentinels = ",".join(f"{host.address}:{port}" for port in self.ports)
        self.url = f"redis+sentinel://{sentinels}/0/{service}"
        self.wait_until_watched()

    def _client(self, port: int, host: Host | None = None) -> Any:
        """A client of a Sentinel (``port``), or of ``host``'s server there."""
        import redis

        reach = (host or self.host).reach
        return redis.Redis(host=reach, port=port, socket_timeout=1.0, decode_responses=True)

    def client(self, server: RedisProcess) -> Any:
        """A client of the master or the replica (close it)."""
        return self._client(server.port, server.host)

    def master_port(self) -> int | None:
        """The master's port as the Sentinels say (the majority), or ``None``."""
        import redis

        said: dict[int, int] = {}
        for port in self.ports:
            client = self._client(port)
            try:
                answer = client.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if answer:
                said[int(answer[1])] = said.get(int(answer[1]), 0) + 1
        best = max(said.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= 2 else None

    def wait_until_watched(self, timeout: float = 15.0) -> None:
        """Until the replica is in sync and every Sentinel knows it and the others (a
        failover can then be agreed)."""
        import redis

        deadline = time.monotonic() + timeout
        replica = self.client(self.replica)
        try:
            while replica.info("replication")["master_link_status"] != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with the master")
                time.sleep(0.05)
        finally:
            replica.close()
        while time.monotonic() < deadline:
            ready = 0
            for port in self.ports:
                client = self._client(port)
                try:
                    master = client.sentinel_master(self.service)
                    if int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= 2:
                        ready += 1
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            if ready == len(self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError("the Sentinels did not find the replica and each other")

    def cut_replica(self, timeout: float = 10.0) -> None:
        """The replica stops receiving the master's writes (it can no longer log in to
        the master: a wrong ``masterauth``), as behind a broken link; it stays eligible
        for promotion."""
        replica, master = self.client(self.replica), self.client(self.master)
        try:
            replica.config_set("masterauth", "not-the-password")
            master.client_kill_filter(_type="replica")
            deadline = time.monotonic() + timeout
            while replica.info("replication")["master_link_status"] == "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica still follows the master")
                time.sleep(0.05)
        finally:
            replica.close()
            master.close()

    def fail_over(self, timeout: float = 30.0) -> float:
        """``kill -9`` the master; return the seconds until the Sentinels name the replica."""
        started = time.monotonic()
        self.master.kill()
        return self.wait_promoted(started, timeout)

    def wait_promoted(self, since: float, timeout: float = 30.0) -> float:
        """Seconds from ``since`` (monotonic) until the Sentinels name the replica."""
        while time.monotonic() - since < timeout:
            if self.master_port() == self.replica.port:
                return time.monotonic() - since
            time.sleep(0.02)
        raise RuntimeError(f"no failover within {timeout} s")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        self.replica.stop()
        self.master.stop()
        self._dir.cleanup()


async def measure(*, wait: bool, lagging: bool, seconds: float = 1.0) -> dict[str, Any]:
    """One case of the module docstring; its figures."""
    from ..hub import publication
    from ..publisher import AsyncPublisher

    group = await asyncio.to_thread(Replicated)
    publisher = AsyncPublisher(
        group.url, replicas=1 if wait else 0, replica_timeout=0.5, timeout=1.0
    )
    try:
        confirmed, latencies, refused, rate = await _publish(publisher, group, seconds, lagging)
        killed = time.monotonic()
        group.master.kill()
        promoted = await asyncio.to_thread(group.wait_promoted, killed)
        new = group.client(group.replica)  # what it had of the numbering
        try:
            room = publication("ha", None)[0]
            epoch, counter = new.mget([f"tornws:room:{room}:{kind}" for kind in ("epoch", "n")])
        finally:
            new.close()
        while True:  # until a publication is numbered by the new master
            try:
                await publisher.publish("ha", "after")
                break
            except NotReplicatedError:  # (numbered: the new master has no replica yet)
                break
            except BrokerUnavailableError:
                if time.monotonic() - killed > 60:
                    raise
                await asyncio.sleep(0.01)
        failed_over = time.monotonic() - killed
    finally:
        await publisher.close()
        await asyncio.to_thread(group.stop)
    lost = [p for p in confirmed if p[0] != epoch or p[1] > int(counter or 0)]
    return {
        "wait": wait,
        "lagging": lagging,
        "rate": round(rate),
        "p50_ms": round(median(latencies) * 1000, 2) if latencies else None,
        "promoted_s": round(promoted, 2),
        "failover_s": round(failed_over, 2),
        "confirmed": len(confirmed),
        "lost": len(lost),
        "refused": refused,
    }


async def _publish(
    publisher: Any, group: Replicated, seconds: float, lagging: bool
) -> tuple[list[tuple[str, int]], list[float], int, float]:
    """Publish one after the other for ``seconds`` (cutting the replica off halfway if
    ``lagging``): the positions confirmed, their latencies, how many were refused, and
    the confirmations per second."""
    confirmed: list[tuple[str, int]] = []
    latencies: list[float] = []
    refused = 0
    started = time.monotonic()
    cut = False
    while time.monotonic() - started < seconds:
        if lagging and not cut and time.monotonic() - started >= seconds / 2:
            await asyncio.to_thread(group.cut_replica)
            cut = True
        sent = time.monotonic()
        try:
            position = await publisher.publish("ha", len(confirmed) + refused)
        except NotReplicatedError:
            refused += 1
            continue
        latencies.append(time.monotonic() - sent)
        confirmed.append(position)
    return confirmed, latencies, refused, len(confirmed) / (time.monotonic() - started)


async def failover() -> list[dict[str, Any]]:
    """Every case of the module docstring, in turn."""
    cases = []
    for lagging in (False, True):
        for wait in (False, True):
            cases.append(await measure(wait=wait, lagging=lagging))
    return cases


def lines(cases: list[dict[str, Any]]) -> list[str]:
    """The cases as text lines, for the bench's report."""
    out = [
        "failover (kill -9 of the Redis master, Sentinels on 127.0.0.1; one publisher):",
        "  replica   WAIT  publ./s  p50 ms  promoted  first new  confirmed  lost  refused",
    ]
    for case in cases:
        out.append(
            f"  {'cut off' if case['lagging'] else 'in sync':9} {'1' if case['wait'] else '-':>4}"
            f"  {case['rate']:>7}  {case['p50_ms']:>6}  {case['promoted_s']:>6} s"
            f"  {case['failover_s']:>7} s  {case['confirmed']:>9}  {case['lost']:>4}"
            f"  {case['refused']:>7}"
        )
    return out


if __name__ == "__main__":
    print("\n".join(lines(asyncio.run(failover()))))
