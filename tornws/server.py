"""Running an application until SIGINT or SIGTERM, then shutting down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .frames import CloseCode
from .registry import Registry

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(
    application: tornado.web.Application,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    shutdown_timeout: float = 5.0,
    stop: asyncio.Event | None = None,
    **server_options: Any,
) -> None:
    """Serve ``application`` on ``host:port`` until SIGINT, SIGTERM or ``stop`` is set.

    On stop: the listening sockets close, every tornws connection is closed
    with 1001 (going away), and the function returns once they are closed or
    ``shutdown_timeout`` seconds have passed.

    Args:
        port: ``0`` picks a free port; the log line ``listening on ...`` names it.
        **server_options: passed to ``tornado.httpserver.HTTPServer`` (for
            example ``ssl_options``).
    """
    sockets = tornado.netutil.bind_sockets(port, host)
    server = tornado.httpserver.HTTPServer(application, **server_options)
    server.add_sockets(sockets)
    scheme = "https" if server_options.get("ssl_options") else "http"
    for sock in sockets:
        address = sock.getsockname()
        shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
        log.info("listening on %s://%s:%d", scheme, shown, address[1])

    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    try:
        await stop.wait()
        server.stop()
        registry = Registry.for_application(application)
        count = registry.close_all(CloseCode.GOING_AWAY, "server shutting down")
        log.info("shutting down: closing %d connection(s)", count)
        deadline = loop.time() + shutdown_timeout
        while registry.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await server.close_all_connections()
        log.info("stopped")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    name = signal.Signals(signum).name
    if stop.is_set():
        log.info("received %s: already shutting down", name)
    else:
        log.info("received %s", name)
    stop.set()
