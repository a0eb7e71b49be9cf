"""Running an application until SIGINT or SIGTERM, then draining it.

:func:`drain` is the graceful shutdown, usable by embedders too: ``/healthz``
turns 503 and new upgrades get 503 with ``Retry-After`` (so a load balancer
moves traffic away), messages already queued are sent, then every connection
is closed (1001 going away, or 1012 for a restart) in jittered batches spread
over a window, so that reconnecting clients do not all arrive at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .frames import CloseCode
from .hub import Hub
from .node import Node
from .registry import Registry

__all__ = ["drain", "run_workers", "serve", "ssl_context"]

log = logging.getLogger(__name__)

#: Seconds over which :func:`drain` spreads the closes by default.
DEFAULT_DRAIN_WINDOW = 2.0
#: Seconds :func:`drain` waits, after the window, for connections to finish closing.
DEFAULT_DRAIN_TIMEOUT = 10.0
#: Seconds a new TCP connection has to send its request (``idle_connection_timeout``).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Smallest pause between two batches of closes.
_BATCH_INTERVAL = 0.05


async def drain(
    application: tornado.web.Application | Node,
    *,
    code: int = CloseCode.GOING_AWAY,
    reason: str = "server shutting down",
    window: float = DEFAULT_DRAIN_WINDOW,
    timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> int:
    """Close every tornws connection of ``application`` gracefully (or of a
    :class:`~tornws.node.Node`); return how many there were.

    From the call on, the node's ``draining`` is true: ``/healthz`` answers 503 and
    upgrades are refused with 503 + ``Retry-After``. The open connections are
    shuffled and closed with ``code``/``reason`` in batches, one every 50 ms or
    more, over ``window`` seconds; until its turn a connection keeps receiving.
    Each close frame follows what was already queued for that connection, so
    nothing accepted before it is lost. Returns once every connection has
    closed, or ``timeout`` seconds after the window, when the rest are cut.
    """
    if isinstance(application, Registry):
        raise TypeError("drain() takes the Application (or its tornws.Node), not a Registry")
    node = application if isinstance(application, Node) else Node.for_application(application)
    node.draining = True
    loop = asyncio.get_running_loop()
    start = loop.time()
    connections = list(node.connections)
    random.shuffle(connections)
    count = len(connections)
    batches = max(1, min(count, int(window / _BATCH_INTERVAL)))
    log.info(
        "draining: closing %d connection(s) with %d over %.1f s, in %d batch(es)",
        count,
        code,
        window,
        batches,
    )
    slot = window / batches
    for index in range(batches):
        due = start + index * slot + random.uniform(0, slot)
        await asyncio.sleep(max(0.0, due - loop.time()))
        for connection in connections[index::batches]:
            connection.close(code, reason)
    # Upgrades that passed admission before draining began (rare): close them too.
    for connection in list(node.connections):
        if connection not in connections:
            connection.close(code, reason)
    deadline = loop.time() + timeout
    while node.connections and loop.time() < deadline:
        await asyncio.sleep(0.02)
    left = list(node.connections)
    if left:
        log.warning("drain timeout: cutting %d connection(s) that did not close", len(left))
        for connection in left:
            abort = getattr(connection, "abort", None)
            if abort is not None:
                abort()
    return count


def ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+, Python's defaults) from a certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


#: Connections the kernel may hold unaccepted (capped by ``net.core.somaxconn``). Tornado's
#: default, 128, drops the SYNs of a reconnect storm: clients then wait seconds to retry.
BACKLOG = 4096


async def serve(
    application: tornado.web.Application,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    close_code: int = CloseCode.GOING_AWAY,
    drain_window: float = DEFAULT_DRAIN_WINDOW,
    shutdown_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    **server_options: Any,
) -> None:
    """Serve ``application`` on ``host:port`` until SIGINT, SIGTERM or ``stop`` is set.

    On stop: :func:`drain` (``close_code``, ``drain_window``,
    ``shutdown_timeout``) while still listening, so that late clients get a 503
    rather than a refused connection; then the listening sockets and the
    remaining HTTP connections close and the function returns: within
    ``drain_window + shutdown_timeout`` seconds and a little more.

    Args:
        port: ``0`` picks a free port; the log line ``listening on ...`` names it.
        close_code: 1001 (going away) or 1012 (service restart: come back soon).
        reuse_port: bind with ``SO_REUSEPORT``, so that several processes
            share the port and the kernel spreads connections among them.
        **server_options: passed to ``tornado.httpserver.HTTPServer`` (for
            example ``ssl_options``, see :func:`ssl_context`).
    """
    # Also the handshake timeout: a client must send its request within it.
    server_options.setdefault("idle_connection_timeout", DEFAULT_HANDSHAKE_TIMEOUT)
    sockets = tornado.netutil.bind_sockets(port, host, reuse_port=reuse_port, backlog=BACKLOG)
    server = tornado.httpserver.HTTPServer(application, **server_options)
    server.add_sockets(sockets)
    scheme = "https" if server_options.get("ssl_options") else "http"
    for sock in sockets:
        address = sock.getsockname()
        shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
        log.info("listening on %s://%s:%d", scheme, shown, address[1])

    registry = Registry.for_application(application)
    Hub.for_application(application).bind(asyncio.get_running_loop())
    await registry.broker.start()
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    try:
        await stop.wait()
        await drain(application, code=close_code, window=drain_window, timeout=shutdown_timeout)
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), timeout=1.0)
        log.info("stopped")
    except asyncio.TimeoutError:
        log.info("stopped (some HTTP connections were still open)")
    finally:
        try:  # (a second signal while the broker says goodbye: "already shutting down")
            await registry.broker.close()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    name = signal.Signals(signum).name
    if stop.is_set():
        log.info("received %s: already shutting down", name)
    else:
        log.info("received %s: draining", name)
    stop.set()


def run_workers(count: int, worker: Callable[[], int], *, max_restarts: int = 10) -> int:
    """Run ``worker()`` in ``count`` forked processes; return 0 if all ended with 0.

    The parent forwards SIGTERM and SIGINT to the workers and waits for them; a
    worker that dies on its own (not while shutting down) is replaced, at most
    ``max_restarts`` times in all. Call it before any event loop exists: each
    worker starts its own (``worker`` typically runs ``asyncio.run(serve(...,
    reuse_port=True))``).
    """
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = worker()
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            spawn(index)
        log.info("started %d workers: %s", count, " ".join(map(str, children)))
        status = 0
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0:
                status = 1
                log.warning("worker %d (pid %d) exited with %d", index, pid, code)
                if not stopping and max_restarts > 0:
                    max_restarts -= 1
                    spawn(index)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
