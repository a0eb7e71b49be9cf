"""Shared fixtures: the demo app on 127.0.0.1, Tornado's WebSocket client, subprocesses.

pytest-tornado provides ``http_server`` (serving the ``app`` fixture) and
``http_port``; tests request ``http_server`` to start the server. Its
``io_loop`` is replaced here (see :func:`io_loop`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.ioloop
import tornado.websocket

import tornws

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Set by .ci/run: a test that would skip (a missing service or tool) fails instead.
REQUIRE_ALL = os.environ.get("TORNWS_TEST_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but TORNWS_TEST_REQUIRE_ALL=1 forbids skips: {report.longrepr}"


@pytest.fixture
def io_loop() -> Iterator[tornado.ioloop.IOLoop]:
    """A new IOLoop on a new asyncio loop, set as the current loop for the test.

    Replaces pytest-tornado 0.8.1's fixture, which calls ``IOLoop()`` and
    ``make_current()``: those ask ``asyncio.get_event_loop()`` for the loop to
    restore later, which warns (Python 3.12+) when none is set, and Tornado 6.6
    deprecates ``make_current``. This is what Tornado's own ``AsyncTestCase``
    does: ``IOLoop(make_current=False)``, the asyncio loop set explicitly, the
    tasks a test left behind cancelled and run to their end, then everything
    closed.
    """
    loop = tornado.ioloop.IOLoop(make_current=False)
    asyncio_loop = loop.asyncio_loop  # type: ignore[attr-defined]
    asyncio.set_event_loop(asyncio_loop)
    try:
        yield loop
    finally:
        pending = [task for task in asyncio.all_tasks(asyncio_loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_sync(lambda: asyncio.wait(pending))
        asyncio.set_event_loop(None)
        loop.close(all_fds=True)


@pytest.fixture
def registry() -> tornws.Registry:
    return tornws.Registry()


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    """The demo app (the contract of ``tornws serve``), with a small size limit for speed."""
    return tornws.make_app(registry=registry)


@pytest.fixture
def node(app: Any) -> tornws.Node:
    """The ``app``'s node: its open tornws connections and their counters."""
    return tornws.Node.for_application(app)


@pytest.fixture
def ws_url(http_server: Any, http_port: int) -> str:
    """``ws://127.0.0.1:<port>`` of the running ``app``."""
    return f"ws://127.0.0.1:{http_port}"


@pytest.fixture
def http_url(http_server: Any, http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def ws_connect(io_loop: Any) -> Iterator[Any]:
    """Tornado's ``websocket_connect``, closing every connection it made at teardown."""
    connections: list[tornado.websocket.WebSocketClientConnection] = []

    async def connect(url: str, **kwargs: Any) -> tornado.websocket.WebSocketClientConnection:
        connection = await tornado.websocket.websocket_connect(url, **kwargs)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[Any], timeout: float = 15.0, host: str = "127.0.0.1"
) -> None:
    """Return once host:port accepts connections; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"server exited with {process.returncode}:\n{out}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")


class Server:
    """A server started as a subprocess; stopped (SIGTERM, then SIGKILL) at teardown.

    Its output is read all along by a thread (a full pipe would block the
    server's logging, and so the server), and returned by :meth:`stop`.
    """

    def __init__(
        self,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port
        self.url = f"ws://{host}:{port}"
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env} if env else None,
        )
        self._output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        try:
            wait_for_port(port, self.process, host=host)
        finally:
            self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._output.append(line)

    @property
    def output(self) -> str:
        """What it printed so far."""
        return "".join(self._output)

    def stop(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM, wait; return (exit status, everything it printed)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode, self.output


@pytest.fixture
def start_server() -> Iterator[Any]:
    """``start_server(args, port)`` runs a server subprocess for the test's duration."""
    servers: list[Server] = []

    def start(args: list[str], port: int) -> Server:
        server = Server(args, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def tornws_serve(start_server: Any) -> Server:
    """``tornws serve`` (the installed console script) on a free port."""
    port = free_port()
    return start_server([sys.executable, "-m", "tornws", "serve", "--port", str(port)], port)
