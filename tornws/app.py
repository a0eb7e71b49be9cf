"""Assembling tornws's routes: into your application, or as the demo app.

- :func:`routes` returns the ``URLSpec`` list, for an ``Application`` you build.
- :func:`add_routes` adds them to an ``Application`` that already runs, keeping
  its handlers, settings (cookie secret included) and authentication.
- :func:`make_app` builds the demo application that ``tornws serve`` runs
  (routes in ``docs/`` and the README), the browser chat page at ``/`` included.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.routing import URLSpec

from . import deflate
from .api import api_routes
from .auth import log_request
from .chat import ROOM_PATTERN, ChatHandler
from .demo import BroadcastHandler, EchoHandler
from .handlers import DEFAULT_COMPRESSION
from .live import LiveHandler
from .metrics import MetricsHandler
from .node import Node
from .page import STATIC_DIR, ChatPageHandler, StaticHandler
from .registry import Registry

__all__ = ["ENDPOINTS", "HealthHandler", "add_routes", "make_app", "routes"]


def _check_prefix(prefix: str) -> str:
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"prefix must be empty or start with '/' and not end with '/': {prefix!r}")
    return prefix


def routes(
    prefix: str = "",
    *,
    registry: Registry | None = None,
    page: bool = False,
    live: dict[str, Any] | None = None,
    chat: dict[str, Any] | None = None,
    **options: Any,
) -> list[URLSpec]:
    """The tornws routes under ``prefix``: ``/echo``, ``/broadcast``, ``/chat``,
    ``/chat/<room>`` and ``/live``.

    Args:
        prefix: ``""`` or a path such as ``"/ws"`` (routes become ``/ws/echo``, …).
        registry: the rooms' registry; by default the application's own
            (:meth:`Registry.for_application`), shared with every other tornws
            route of the application.
        page: also the browser chat page at ``<prefix>/`` and its files under
            ``<prefix>/_tornws/``.
        live: options of ``/live`` only (:class:`~tornws.live.LiveHandler`:
            ``authorizer``, ``max_subscriptions``).
        chat: options of ``/chat`` and ``/chat/<room>`` only
            (:class:`~tornws.chat.ChatHandler`: ``default_room``,
            ``room_authorizer``, ``crowd``).
        **options: handler options for every route (``compression``,
            ``origins``, ``max_message_size``, ``user_loader``; see
            :mod:`tornws.handlers`).
    """
    prefix = _check_prefix(prefix)
    if options.get("compression") is not None:  # a bad setting fails here, not per request
        deflate.check_options({**DEFAULT_COMPRESSION, **options["compression"]})
    kwargs = dict(options, registry=registry)
    if "origins" in kwargs:  # (one set for every connection, not one each)
        kwargs["origins"] = frozenset(kwargs["origins"])
    chat_kwargs = {**kwargs, **(chat or {})}
    specs = [
        URLSpec(f"{prefix}/echo", EchoHandler, kwargs, name="tornws.echo"),
        URLSpec(f"{prefix}/broadcast", BroadcastHandler, kwargs, name="tornws.broadcast"),
        URLSpec(f"{prefix}/chat", ChatHandler, chat_kwargs, name="tornws.chat"),
        URLSpec(
            f"{prefix}/chat/({ROOM_PATTERN})", ChatHandler, chat_kwargs, name="tornws.chat_room"
        ),
        URLSpec(f"{prefix}/live", LiveHandler, {**kwargs, **(live or {})}, name="tornws.live"),
    ]
    if page:
        page_options = {
            "chat_path": f"{prefix}/chat",
            "static_path": f"{prefix}/_tornws",
            "endpoints": tuple((prefix + path, what) for path, what in ENDPOINTS),
            "user_loader": options.get("user_loader"),
        }
        specs += [
            URLSpec(f"{prefix}/", ChatPageHandler, page_options, name="tornws.page"),
            URLSpec(f"{prefix}/_tornws/(.*)", StaticHandler, {"path": STATIC_DIR}),
        ]
    return specs


def add_routes(
    application: tornado.web.Application,
    prefix: str = "",
    *,
    registry: Registry | None = None,
    host_pattern: str = ".*$",
    page: bool = False,
    **options: Any,
) -> Registry:
    """Add tornws's routes to an existing Tornado application; return their registry.

    The application keeps its own handlers (they are matched first), settings,
    cookies and ``get_current_user``; pass ``user_loader=YourBaseHandler.get_current_user``
    so the chat knows your users. Example::

        app = tornado.web.Application([(r"/", MainHandler)], cookie_secret="...")
        registry = tornws.add_routes(app, "/ws", user_loader=BaseHandler.get_current_user)
    """
    registry = registry if registry is not None else Registry.for_application(application)
    application.add_handlers(host_pattern, routes(prefix, registry=registry, page=page, **options))
    return registry


class HealthHandler(tornado.web.RequestHandler):
    """``GET /healthz``: 200 ``ok`` while the server accepts connections, 503
    ``draining`` once a drain began (so a load balancer stops sending clients)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        if Node.for_application(self.application).draining:
            self.set_status(503)
            self.finish("draining\n")
        else:
            self.finish("ok\n")


#: The demo app's WebSocket routes, as listed on the chat page.
ENDPOINTS = [
    ("/echo", "every message back to its sender"),
    ("/broadcast", "every message to every connection on /broadcast, sender included"),
    ("/chat", "the chat room 'lobby' (subprotocols chat.json, chat)"),
    ("/chat/<room>", "the chat room <room>"),
    ("/live", "channels: many subscriptions on one connection (subprotocol tornws.v1)"),
]


def make_app(
    *,
    registry: Registry | None = None,
    handler_options: dict[str, Any] | None = None,
    chat_options: dict[str, Any] | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> tornado.web.Application:
    """The demo application of ``tornws serve``.

    Args:
        registry: the rooms' registry (a new one by default).
        handler_options: options for every WebSocket route (see :func:`routes`).
        chat_options: options of the chat routes only (``chat`` of :func:`routes`).
        api_key: enables the HTTP server API under ``/api`` (:mod:`tornws.api`);
            without it, ``/api/...`` answers 404.
        **settings: Tornado application settings.
    """
    registry = registry if registry is not None else Registry()
    handlers: list[Any] = [
        URLSpec(r"/healthz", HealthHandler),
        URLSpec(r"/metrics", MetricsHandler),
        *api_routes(api_key),
        *routes(registry=registry, page=True, chat=chat_options, **(handler_options or {})),
    ]
    defaults = {"tornws.registry": registry, "log_function": log_request}
    return tornado.web.Application(handlers, **{**defaults, **settings})
