"""Real services the tests start on 127.0.0.1 (free ports): redis-server, and a
master, a replica and three Sentinels of it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port, wait_for_port

REDIS = shutil.which("redis-server")


class Redis:
    """redis-server on 127.0.0.1, no persistence: a restart loses everything."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert REDIS
        self.process = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """``kill -9``: no goodbye to anyone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


class Sentinels:
    """A master, its replica and three Sentinels monitoring them as ``service``, on
    127.0.0.1; the master is taken for down after ``down_after_ms`` without an answer
    (a quorum of 2), and a failover promotes the replica."""

    def __init__(self, service: str = "tornws", down_after_ms: int = 1000) -> None:
        assert REDIS
        self.service = service
        # (No 5 s wait before the first sync: a replica that has not synced yet would have
        # nothing to give when promoted.)
        self._dir = tempfile.TemporaryDirectory(prefix="tornws-sentinel-")
        self.master = Redis("--repl-diskless-sync-delay", "0", "--dir", self._dir.name)
        # (The replica writes what it receives to dump.rdb in its --dir.)
        self.replica = Redis(
            "--replicaof", "127.0.0.1", str(self.master.port), "--dir", self._dir.name
        )
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            config = Path(self._dir.name, f"sentinel-{port}.conf")
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self._dir.name}\n"
                f"sentinel monitor {service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} 10000\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            process = subprocess.Popen(
                [REDIS, str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append(process)
            wait_for_port(port, process)
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.url = f"redis+sentinel://{hosts}/0/{service}"
        self.wait_until_watched()

    def master_port(self) -> int | None:
        """The master's port as the Sentinels say (the majority), or ``None``."""
        import redis

        said: dict[int, int] = {}
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1.0, decode_responses=True)
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
        replica = redis.Redis(port=self.replica.port, socket_timeout=1.0, decode_responses=True)
        try:
            while replica.info("replication")["master_link_status"] != "up":
                assert time.monotonic() < deadline, "the replica did not sync with the master"
                time.sleep(0.05)
        finally:
            replica.close()
        while time.monotonic() < deadline:
            ready = 0
            for port in self.ports:
                client = redis.Redis(port=port, socket_timeout=1.0, decode_responses=True)
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
        raise AssertionError("the Sentinels did not find the replica and each other")

    def cut_replica(self, timeout: float = 10.0) -> None:
        """The replica stops receiving the master's writes (it can no longer log in to
        the master: a wrong ``masterauth``), as behind a broken link; it stays eligible
        for promotion."""
        import redis

        replica = redis.Redis(port=self.replica.port, decode_responses=True)
        master = redis.Redis(port=self.master.port, decode_responses=True)
        try:
            replica.config_set("masterauth", "not-the-password")
            master.client_kill_filter(_type="replica")
            deadline = time.monotonic() + timeout
            while replica.info("replication")["master_link_status"] == "up":
                assert time.monotonic() < deadline, "the replica still follows the master"
                time.sleep(0.05)
        finally:
            replica.close()
            master.close()

    def fail_over(self, timeout: float = 30.0) -> float:
        """``kill -9`` the master; return the seconds until the Sentinels name the replica."""
        old = self.master_port()
        assert old == self.master.port, old
        started = time.monotonic()
        self.master.kill()
        while time.monotonic() - started < timeout:
            if self.master_port() == self.replica.port:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"no failover within {timeout} s")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        self.replica.stop()
        self.master.stop()
        self._dir.cleanup()
