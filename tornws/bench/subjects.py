"""The servers ``tornws bench`` measures: how to start them, pin them, and read their usage."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from ..exceptions import ConfigError

__all__ = [
    "ASYNCIO_SERVER",
    "DEFLATE_OFFER",
    "Cluster",
    "ClusterRunning",
    "Running",
    "Subject",
    "builtin_subjects",
    "cpu_seconds",
    "deflate_subjects",
    "floor_subject",
    "raise_open_files_limit",
    "rss_bytes",
]

_HERE = Path(__file__).resolve().parent
#: The asyncio version: in a checkout, examples/asyncio_version/server.py; an installed wheel
#: carries that same file as tornws/bench/asyncio_version/server.py (setup.cfg's package_dir).
ASYNCIO_SERVER = next(
    (
        path
        for path in (
            _HERE / "asyncio_version" / "server.py",
            _HERE.parents[1] / "examples" / "asyncio_version" / "server.py",
        )
        if path.is_file()
    ),
    _HERE.parents[1] / "examples" / "asyncio_version" / "server.py",
)

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid``, all its live threads, from /proc.

    Read from ``/proc/<pid>/task/*/schedstat`` (the kernel's run time, in ns),
    falling back to ``utime + stime`` in ``/proc/<pid>/stat`` (clock ticks of
    10 ms, too coarse for short windows) where schedstat is not available.
    """
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as schedstat:
                    total += int(schedstat.read().split()[0])
            except FileNotFoundError:
                continue  # the thread ended meanwhile
        return total / 1e9
    except FileNotFoundError:
        pass
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``, from /proc."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Subject:
    """A server to measure: a command to start (``{port}`` is replaced) or a running pid."""

    name: str
    command: list[str] = field(default_factory=list)
    url: str = ""
    pid: int = 0
    #: The workload groups it runs (``fanout``, ``echo``, …); empty: all but ``deflate``.
    groups: tuple[str, ...] = ()
    #: A ``Sec-WebSocket-Extensions`` offer its broadcast receivers send.
    offer: str | None = None
    #: Seconds it may take to listen (longer under a counting tool: see ``counts``).
    start_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.url:
            _check_loopback(self.url)

    def start(self, cpu: int | None) -> Running:
        """Start the server (or attach to it), pinned to ``cpu`` when given."""
        if not self.command:
            return Running(self, self.url.rstrip("/"), self.pid, None)
        port = _free_port()
        # Its output into an unlinked file (read back if it fails to start): a pipe nobody
        # reads would stall a server that logs every connection, as servers do by default.
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Running.stop
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in self.command],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,  # inherits the raised open-files limit (see run())
        )
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        running = Running(self, f"ws://127.0.0.1:{port}", process.pid, process, output)
        running.wait_listening(port, self.start_timeout)
        return running


@dataclass
class Running:
    subject: Subject
    url: str
    pid: int
    process: subprocess.Popen[bytes] | None
    #: Where the process's stdout and stderr go (``None``: elsewhere).
    output: IO[bytes] | None = None

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                error = ""
                if self.output is not None:
                    self.output.seek(0)
                    error = self.output.read().decode(errors="replace")
                raise ConfigError(f"{self.subject.name} exited at start:\n{error}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"{self.subject.name} did not listen on 127.0.0.1:{port}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """Stop a server this bench started (SIGTERM, then SIGKILL after 10 s)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.output is not None:
            self.output.close()


def _check_loopback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname not in LOOPBACK:
        raise ConfigError(f"--url must be ws:// on 127.0.0.1 or [::1] (got {url!r})")


def builtin_subjects(asyncio_server: Path = ASYNCIO_SERVER) -> list[Subject]:
    """tornws's demo app, the asyncio version, and the raw-Tornado baseline."""
    if not asyncio_server.is_file():
        raise ConfigError(
            f"the asyncio version is not at {asyncio_server}: install tornws with the bench "
            "extra (pip install 'tornws[bench]') or pass --asyncio-server PATH"
        )
    python = sys.executable
    # (Both with their default logging: a line per connection opened and closed.)
    return [
        Subject("tornws", [python, "-m", "tornws", "serve", "--port", "{port}"]),
        Subject(
            "asyncio",
            [python, str(asyncio_server), "--port", "{port}"],
            groups=("memory", "echo", "fanout", "chat", "fill", "handshake", "soak"),  # no /live
        ),
        Subject(
            "raw-tornado",
            [python, "-m", "tornws.bench.raw_tornado", "--port", "{port}"],
            groups=("memory", "echo", "fanout", "handshake"),  # no chat
        ),
        Subject(
            "websockets",
            [python, "-m", "tornws.bench.bare_websockets", "--port", "{port}"],
            groups=("memory", "echo", "handshake"),  # an echo on every path, nothing else
        ),
    ]


#: What Chromium offers.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


def deflate_subjects(asyncio_server: Path = ASYNCIO_SERVER) -> list[Subject]:
    """``--deflate``: tornws with a compressor per connection, tornws in shared mode, and
    the asyncio version with the websockets library's permessage-deflate (its default
    settings); their receivers offer permessage-deflate."""
    python = sys.executable
    serve = [python, "-m", "tornws", "serve", "--port", "{port}", "--compress"]
    asyncio_version = [python, str(asyncio_server), "--port", "{port}", "--compress"]
    group, offer = ("deflate",), DEFLATE_OFFER
    return [
        Subject("tornws+deflate", serve, groups=group, offer=offer),
        Subject("tornws+shared", [*serve, "shared"], groups=group, offer=offer),
        Subject("asyncio+deflate", asyncio_version, groups=group, offer=offer),
    ]


def floor_subject() -> Subject:
    """``--floor``: :mod:`tornws.bench.floor`, a bare ``socket.send`` loop; broadcasts only."""
    command = [sys.executable, "-m", "tornws.bench.floor", "--port", "{port}"]
    return Subject("floor", command, groups=("fanout",))


@dataclass
class Cluster(Subject):
    """``tornws serve --broker`` in two processes on one redis-server: a room across
    processes. Only the broadcast workloads run on it; receivers are spread over
    both processes, the sender is on the first; the figure is the CPU time of all
    three processes (both servers and Redis), all pinned to the server CPU."""

    processes: int = 2

    def start(self, cpu: int | None) -> Running:
        import shutil

        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise ConfigError("--redis needs redis-server (apt-get install redis-server)")
        port = _free_port()
        redis = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if cpu is not None:
            os.sched_setaffinity(redis.pid, {cpu})
        store = Running(self, f"redis://127.0.0.1:{port}", redis.pid, redis)
        store.wait_listening(port)
        from .load import BENCH_API_KEY

        command = [sys.executable, "-m", "tornws", "serve", "--port", "{port}"]
        broker = ["--broker", f"redis://127.0.0.1:{port}/0", "--log-level", "warning"]
        broker += ["--api-key", BENCH_API_KEY]  # (the publish-path workloads' HTTP API)
        servers = [
            Subject(f"{self.name}-{i}", [*command, *broker]).start(cpu)
            for i in range(self.processes)
        ]
        return ClusterRunning(self, servers[0].url, servers[0].pid, None, parts=[*servers, store])


@dataclass
class ClusterRunning(Running):
    parts: list[Running] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        """The tornws processes' URLs (not Redis's)."""
        return [part.url for part in self.parts if part.url.startswith("ws://")]

    def cpu(self) -> float:
        return sum(part.cpu() for part in self.parts)

    def rss(self) -> int:
        return sum(part.rss() for part in self.parts)

    def stop(self) -> None:
        for part in self.parts:
            part.stop()
