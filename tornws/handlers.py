"""Tornado ``WebSocketHandler`` subclasses: a base with tornws's defaults, and the demo's.

Every handler takes its dependencies through ``initialize()`` (so through the
``URLSpec`` kwargs), never from class attributes or globals:

- ``registry``: the :class:`~tornws.registry.Registry` the handler's rooms live
  in; by default the one shared by the whole application
  (:meth:`Registry.for_application`).
- ``compression``: permessage-deflate options (Tornado's
  ``get_compression_options`` format, ``{}`` for its defaults) or ``None``
  (off, the default).
- ``origins``: ``Origin`` values allowed besides the same host: exact
  (``https://app.example.com``) or a wildcard for every subdomain
  (``https://*.example.com``, which does not match ``https://example.com``).
- ``max_message_size``: bytes; bigger incoming messages close the connection
  with 1009.
- ``max_outgoing``: bytes that may wait, unsent, for one receiver (default
  1 MiB, ``0``: no bound). A message that would go over it applies
  ``slow_consumer``: ``"close"`` (the default: close 1008 ``slow consumer``,
  unsent messages freed) or ``"drop"`` (that receiver misses that message).
- ``rate_limit``: ``(messages, seconds)``, e.g. ``(100, 1.0)``: a client may
  send bursts of ``messages`` and that many per ``seconds`` on average; faster
  closes the connection with 1008 ``message rate limit``. Default: none.
- ``idle_timeout``: seconds; a client that sends no message for that long is
  closed with 1000 ``idle timeout`` (pings and pongs do not count). Default: none.
- ``user_loader``: a function ``(handler) -> user`` used as
  ``get_current_user``; pass your own base handler's ``get_current_user`` to
  share its authentication.
- ``tickets``: a :class:`tornws.auth.Tickets`: the client must present a
  ticket in the ``ticket`` query argument; its user is ``current_user``. A
  missing, forged, expired or reused ticket: HTTP 401 with the reason.
- ``require_user``: refuse (HTTP 401) a client without a current user.

Process-wide limits are application settings, checked before the upgrade
(HTTP 503 with ``Retry-After``): ``tornws_max_connections`` and
``tornws_max_connections_per_ip`` (default: none), ``tornws_outgoing_budget``
(bytes unsent over all connections, default 256 MiB), ``tornws_retry_after``
(seconds, default 5).

Logging (logger ``tornws.handlers``): one INFO line when a connection opens,
one when it closes (route, peer, subprotocol, close code, duration), and one
when a handshake is refused, with the reason. Exceptions raised by user hooks
are logged by Tornado at ERROR on ``tornado.application``.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import logging
import os
import time
import types
from collections.abc import Iterable
from typing import Any, Callable, ClassVar

import tornado.web
import tornado.websocket

from . import admission, deflate
from .admission import DEFAULT_OUTGOING_BUDGET, origin_allowed
from .auth import TicketError, Tickets
from .broker import Codec, Envelope
from .exceptions import BrokerUnavailableError, HandshakeError
from .frames import Message
from .node import Node
from .registry import Registry
from .stats import Stats
from .transport import Transport, check_handshake

__all__ = [
    "DEFAULT_COMPRESSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OUTGOING",
    "DEFAULT_OUTGOING_BUDGET",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_RETRY_AFTER",
    "VERBATIM",
    "WebSocketHandler",
]

log = logging.getLogger(__name__)

#: Incoming messages above this many bytes close the connection with 1009
#: (Tornado's own default is 10 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: Seconds between keepalive pings (Tornado's default is no pings at all).
DEFAULT_PING_INTERVAL = 20.0
#: Seconds without a pong before the connection is closed.
DEFAULT_PING_TIMEOUT = 20.0
#: Bytes that may wait unsent for one receiver before its slow-consumer policy
#: applies: a second of a busy chat room, many times over; 1000 stuck receivers
#: hold at most 1 GiB, and the outgoing budget stops new upgrades long before.
DEFAULT_MAX_OUTGOING = 1024 * 1024
#: Seconds a refused client is asked to wait (``Retry-After``).
DEFAULT_RETRY_AFTER = 5
SLOW_CONSUMER_POLICIES = ("close", "drop")
#: permessage-deflate settings under whatever ``compression`` gives. Level 1:
#: on Autobahn case 12.3.15 (1000 × 128 KiB) the server spent 4.9 s of CPU at
#: level 1 against 12.9 s at Tornado's level 6, for chat-sized JSON 2.3 µs
#: against 3.4 µs per message at the same ratio (0.106 vs 0.105). Memory level 5
#: (as the websockets library): 16 KiB of hash table per compressor instead of 128.
DEFAULT_COMPRESSION = {
    "compression_level": 1,
    "mem_level": 5,
    "server_max_window_bits": 12,
    "client_max_window_bits": 12,
}

# Connection ids: unique within the process, and across processes with high
# probability (for brokers that span processes).
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def _new_id_prefix() -> None:
    # A forked worker (`tornws serve --workers`) gets ids of its own, not its parent's.
    global _ID_PREFIX  # noqa: PLW0603 - the one module state a fork must not share
    _ID_PREFIX = os.urandom(4).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_prefix)


def _retrieve(future: Any) -> None:
    # A write that failed because the peer went away is not an error worth an
    # "exception was never retrieved" log: the close is handled by on_close.
    if not future.cancelled():
        future.exception()


class _Verbatim:
    """The codec of relays: a published :class:`Message` goes out as it is."""

    echo_own: ClassVar[bool] = True

    def encode(self, envelope: Envelope, /) -> Message | None:
        payload = envelope.payload
        return payload if isinstance(payload, Message) else None

    def __repr__(self) -> str:
        return "VERBATIM"


VERBATIM = _Verbatim()


def _slot_defaults(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, default)`` of every slot of ``cls`` and its bases that declare
    ``_slot_defaults``, except those a class attribute of a subclass overrides
    (worked out once per class, kept on it)."""
    plan: tuple[tuple[str, Any], ...] | None = vars(cls).get("_slot_plan")
    if plan is None:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("_slot_defaults", {}))
        plan = tuple(
            (name, value)
            for name, value in merged.items()
            if isinstance(getattr(cls, name, None), types.MemberDescriptorType)
        )
        type.__setattr__(cls, "_slot_plan", plan)
    return plan


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    """A Tornado ``WebSocketHandler`` with tornws's defaults, rooms and subprotocols.

    Override Tornado's hooks as usual (``open``, ``on_message``, ``on_close``,
    ``prepare``, ``check_origin``, ``get_current_user``); tornws's bookkeeping
    does not depend on them calling ``super()``.

    Subprotocols are declared, not coded: set :attr:`subprotocols` to the names
    the handler speaks, in order of preference. The server picks its most
    preferred name among those the client offers; a client that offers only
    unknown names gets HTTP 400 listing the supported ones; a client that offers
    none gets ``selected_subprotocol = None`` unless :attr:`subprotocol_required`.
    """

    #: Subprotocols this handler speaks, most preferred first.
    subprotocols: ClassVar[tuple[str, ...]] = ()
    #: Refuse (HTTP 400) clients that offer no subprotocol at all.
    subprotocol_required: ClassVar[bool] = False
    #: Run connections on Tornado's own data plane instead of tornws's (for
    #: comparison or debugging; slower, and without tornws's protocol checks).
    tornado_data_plane: ClassVar[bool] = False

    #: How published envelopes are turned into messages for this connection.
    codec: Codec = VERBATIM

    # Per connection, in slots: Tornado's own attributes then fit a shared-key instance
    # dict (at most 30 keys), ~1.2 KiB less per connection than one dict for all. The
    # defaults (for a subclass whose initialize() does not call super().initialize())
    # are in _slot_defaults; a subclass may still override any of them as a class
    # attribute. Subclasses with attributes of their own per connection do the same.
    __slots__ = (
        "_compression",
        "_counted_ip",
        "_max_message_size",
        "_node",
        "_opened_at",
        "_origins",
        "_refusal",
        "_refusal_kind",
        "_registry",
        "_require_user",
        "_tickets",
        "_user_counted",
        "_user_loader",
        "connection_id",
        "idle_timeout",
        "max_outgoing",
        "rate_limit",
        "slow_consumer",
    )
    _slot_defaults: ClassVar[dict[str, Any]] = {
        "_registry": None,
        "_node": None,
        "_compression": None,
        "_origins": frozenset(),
        "_max_message_size": None,
        "_user_loader": None,
        "_refusal": "",
        "_refusal_kind": "",
        "_counted_ip": None,
        "_user_counted": None,
        "_opened_at": None,
        "max_outgoing": DEFAULT_MAX_OUTGOING,
        "slow_consumer": "close",
        "rate_limit": None,
        "idle_timeout": None,
        "_tickets": None,
        "_require_user": False,
    }
    _registry: Registry | None
    _node: Node | None
    _compression: dict[str, Any] | None
    _origins: frozenset[str]
    _max_message_size: int | None
    _user_loader: Callable[[Any], Any] | None
    _refusal: str
    _refusal_kind: str
    _counted_ip: str | None
    _user_counted: Any  # the user this connection was counted under (Node.user_opened)
    _opened_at: float | None
    #: See the module docstring.
    max_outgoing: int
    slow_consumer: str
    rate_limit: tuple[int, float] | None
    idle_timeout: float | None
    _tickets: Tickets | None
    _require_user: bool

    def __init__(self, application: tornado.web.Application, request: Any, **kwargs: Any) -> None:
        #: Unique id of this connection, used in logs and to recognise its own messages.
        self.connection_id = f"{_ID_PREFIX}-{next(_ids)}"
        for name, value in _slot_defaults(type(self)):
            setattr(self, name, value)
        super().__init__(application, request, **kwargs)  # calls initialize(**kwargs)

    def initialize(
        self,
        registry: Registry | None = None,
        *,
        compression: dict[str, Any] | None = None,
        origins: Iterable[str] = (),
        max_message_size: int | None = None,
        user_loader: Callable[[Any], Any] | None = None,
        max_outgoing: int = DEFAULT_MAX_OUTGOING,
        slow_consumer: str = "close",
        rate_limit: tuple[int, float] | None = None,
        idle_timeout: float | None = None,
        tickets: Tickets | None = None,
        require_user: bool = False,
    ) -> None:
        """Take the handler's dependencies; see the module docstring for each."""
        if slow_consumer not in SLOW_CONSUMER_POLICIES:
            raise ValueError(f"slow_consumer must be 'close' or 'drop', not {slow_consumer!r}")
        self._registry = registry
        if compression is not None:
            deflate.check_options({**DEFAULT_COMPRESSION, **compression})
        self._compression = compression
        if origins:  # (a frozenset given is kept as it is: shared by every connection)
            self._origins = origins if type(origins) is frozenset else frozenset(origins)
        self._max_message_size = max_message_size
        self._user_loader = user_loader
        if rate_limit is not None and (rate_limit[0] < 1 or rate_limit[1] <= 0):
            raise ValueError(f"rate_limit must be (messages >= 1, seconds > 0), not {rate_limit}")
        self.max_outgoing = max_outgoing
        self.slow_consumer = slow_consumer
        self.rate_limit = rate_limit
        self.idle_timeout = idle_timeout
        self._tickets = tickets
        self._require_user = require_user

    @property
    def registry(self) -> Registry:
        """The registry given to ``initialize``, else the application's shared one."""
        if self._registry is None:
            self._registry = Registry.for_application(self.application)
        return self._registry

    @property
    def node(self) -> Node:
        """The application's :class:`~tornws.node.Node` (its open connections and counters)."""
        if self._node is None:
            self._node = Node.for_application(self.application)
        return self._node

    @property
    def tornws_stats(self) -> Stats:
        """The counters of this handler's node (read by the data plane)."""
        return self.node.stats

    # Tornado hooks, with tornws defaults

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Before Tornado's upgrade: 503 while draining or over a limit, then the
        ticket and ``require_user`` (401), then :meth:`before_upgrade`."""
        refusal = self._admission()
        if refusal is not None:
            kind, reason = refusal
            self._refusal_kind, self._refusal = kind, reason
            self.set_status(503)
            retry_after = self.settings.get("tornws_retry_after", DEFAULT_RETRY_AFTER)
            self.set_header("Retry-After", str(retry_after))
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(reason + "\n")
            return
        if self.current_user is None and (self._require_user or self._tickets is not None):
            raise HandshakeError(401, "authentication required", kind="auth")
        if self._tickets is not None and self.registry.broker.shared:
            await self._claim_ticket(self._tickets)
        self.before_upgrade(*args, **kwargs)
        await super().get(*args, **kwargs)

    async def _claim_ticket(self, tickets: Tickets) -> None:
        """A ticket this process accepted must be unused in every other one too."""
        try:
            _, nonce, expiry = tickets.claims(self.get_query_argument("ticket", ""))
        except TicketError as exc:  # (expired since it was redeemed, a moment ago)
            raise HandshakeError(401, str(exc), kind="ticket") from None
        try:
            first = await self.registry.broker.claim_once(f"ticket:{nonce}", expiry - time.time())
        except BrokerUnavailableError:
            raise HandshakeError(503, "cannot check the ticket now", kind="ticket") from None
        if not first:
            raise HandshakeError(401, "ticket already used", kind="ticket")

    def before_upgrade(self, *args: Any, **kwargs: Any) -> None:
        """Last check before the upgrade, with the URL's arguments; raise
        :class:`HandshakeError` to refuse. Runs after the limits and the
        authentication, so ``current_user`` is known."""

    def _admission(self) -> tuple[str, str] | None:
        return admission.over_limit(self.node, self.settings, self.request.remote_ip or "")

    @property
    def max_message_size(self) -> int:
        """Largest incoming message in bytes: ``max_message_size`` from ``initialize``,
        else the ``websocket_max_message_size`` setting, else 1 MiB."""
        if self._max_message_size is not None:
            return self._max_message_size
        size: int = self.settings.get("websocket_max_message_size", DEFAULT_MAX_MESSAGE_SIZE)
        return size

    @property
    def ping_interval(self) -> float | None:
        """Seconds between pings: the ``websocket_ping_interval`` setting, else 20 (0: off)."""
        interval: float | None = self.settings.get("websocket_ping_interval", DEFAULT_PING_INTERVAL)
        return interval

    @property
    def ping_timeout(self) -> float | None:
        """Seconds to wait for a pong: the ``websocket_ping_timeout`` setting, else 20."""
        timeout: float | None = self.settings.get("websocket_ping_timeout", DEFAULT_PING_TIMEOUT)
        return timeout

    def get_compression_options(self) -> dict[str, Any] | None:
        """``None`` (no permessage-deflate) unless ``compression`` was given, then
        :data:`DEFAULT_COMPRESSION` updated with it."""
        if self._compression is None:
            return None
        return {**DEFAULT_COMPRESSION, **self._compression}

    def check_origin(self, origin: str) -> bool:
        """Same host (Tornado's rule), or an origin allowed by ``origins``."""
        return super().check_origin(origin) or origin_allowed(origin, self._origins)

    def get_current_user(self) -> Any:
        """With ``tickets``: the user of the ``ticket`` query argument (redeemed
        here, once). Else the ``user_loader``'s answer, else ``None``."""
        if self._tickets is not None:
            return admission.ticket_user(self._tickets, self.get_query_argument("ticket", ""))
        return self._user_loader(self) if self._user_loader is not None else None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """Pick the most preferred of :attr:`subprotocols` that the client offers.

        Returns ``None`` (no subprotocol) when the client offers none.

        Raises:
            HandshakeError: 400 when the client offers only names this handler
                does not speak, or none while :attr:`subprotocol_required`.
        """
        if not self.subprotocols:
            return None
        offered = set(subprotocols)
        for name in self.subprotocols:
            if name in offered:
                return name
        supported = ", ".join(self.subprotocols)
        if subprotocols:
            raise HandshakeError(
                400,
                f"unsupported subprotocol {', '.join(subprotocols)}; "
                f"this endpoint supports: {supported}",
            )
        if self.subprotocol_required:
            raise HandshakeError(
                400, f"a subprotocol is required; this endpoint supports: {supported}"
            )
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A :class:`HandshakeError`'s body as plain text; Tornado's page otherwise."""
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, HandshakeError):
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(error.body + "\n")
        else:
            super().write_error(status_code, **kwargs)

    def on_finish(self) -> None:
        # Runs when the HTTP part ends: with 101 right before open(), else on refusal.
        status = self.get_status()
        if status == 101:
            self._opened_at = time.monotonic()
            self._counted_ip = ip = self.request.remote_ip or ""
            self.node.opened(self, ip)
            hub = self.settings.get("tornws.hub")
            if hub is not None and hub.loop is None:  # its threads now know where to call
                hub.bind(asyncio.get_running_loop())
            user = self.current_user
            if user is not None:  # reachable by Hub.disconnect(user), on every process
                self._user_counted = user
                self.node.user_opened(user, self, self.registry)
            log.info(
                "open %s peer=%s subprotocol=%s id=%s",
                self.request.path,
                self.request.remote_ip,
                self.selected_subprotocol,
                self.connection_id,
            )
        else:
            reason = self._refusal or self._refusal_reason(status)
            self.node.stats.rejections[self._refusal_kind or str(status)] += 1
            log.info(
                "refused %s peer=%s status=%d reason=%r",
                self.request.path,
                self.request.remote_ip,
                status,
                reason,
            )

    def _refusal_reason(self, status: int) -> str:
        # The refusals Tornado makes itself, before any tornws hook runs.
        headers = self.request.headers
        if status == 403:
            self._refusal_kind = "origin"
            return f"origin {headers.get('Origin')!r} not allowed"
        if status == 400 and headers.get("Upgrade", "").lower() != "websocket":
            return "not a WebSocket upgrade request"
        if status == 426:
            return f"unsupported Sec-WebSocket-Version {headers.get('Sec-WebSocket-Version')!r}"
        problem = check_handshake(self.request) if status in (400, 505) else None
        if problem is not None:
            self._refusal_kind = "handshake"
            return problem
        return http.client.responses.get(status, "")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HandshakeError):
            self._refusal = value.body  # logged once, by on_finish
            self._refusal_kind = value.kind
        else:
            super().log_exception(typ, value, tb)

    def on_connection_close(self) -> None:
        opened_at, self._opened_at = self._opened_at, None
        protocol = self.ws_connection  # Tornado forgets it in on_connection_close
        super().on_connection_close()  # runs on_close()
        if opened_at is None:
            return
        self.registry.leave_all(self)
        user, self._user_counted = self._user_counted, None
        if user is not None:
            self.node.user_closed(user, self)
        ip, self._counted_ip = self._counted_ip, None
        if ip is not None:
            self.node.closed(self, ip)
        log.info(
            "close %s peer=%s code=%s reason=%r duration=%.3fs messages_in=%s messages_out=%s "
            "id=%s",
            self.request.path,
            self.request.remote_ip,
            self.close_code,
            self.close_reason or "",
            time.monotonic() - opened_at,
            getattr(protocol, "messages_in", "?"),
            getattr(protocol, "messages_out", "?"),
            self.connection_id,
        )

    # tornws additions

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        """tornws's data plane (:class:`tornws.transport.Transport`), unless
        :attr:`tornado_data_plane` asks for Tornado's own."""
        if self.tornado_data_plane:
            return super().get_websocket_protocol()
        return Transport.for_handler(self)

    def abort(self) -> None:
        """Close the TCP connection now, without a closing handshake."""
        connection = self.ws_connection
        if isinstance(connection, Transport):
            connection.abort()
        elif connection is not None:
            connection.on_connection_close()  # Tornado's data plane: its abort

    def send(self, message: Message) -> bool:
        """Queue ``message`` for this connection without waiting.

        Returns ``False`` (and sends nothing) when the connection is closed or
        closing. Unlike ``write_message`` it never raises for a closed
        connection, which is what a fan-out wants, and it sends the message's
        frame bytes as they are, shared with every other receiver.
        """
        connection = self.ws_connection
        if connection is None:
            return False
        if type(connection) is Transport:
            return connection.send_message(message)
        if connection.is_closing():
            return False
        try:
            future = connection.write_message(message.payload, binary=message.binary)
        except tornado.websocket.WebSocketClosedError:
            return False
        future.add_done_callback(_retrieve)
        return True

    def deliver(self, envelope: Envelope) -> None:
        """Called by the registry for each message published to a room this connection is in.

        The default sends ``envelope.encode(self.codec)`` unless it is ``None``.
        """
        message = envelope.encode(self.codec)
        if message is not None:
            self.send(message)

    def direct_delivery(self) -> tuple[Codec, Transport] | None:
        """The registry's shortcut (see :mod:`tornws.registry`): ``(codec, protocol)``
        while ``deliver`` is this class's and the connection runs on tornws's data
        plane, else ``None`` (``deliver`` is called). Asked when the handler joins a
        room: a handler that sets its ``codec`` does so before joining."""
        if type(self).deliver is not WebSocketHandler.deliver:
            return None
        return self._direct_target()

    def _direct_target(self) -> tuple[Codec, Transport] | None:
        connection = self.ws_connection
        return (self.codec, connection) if type(connection) is Transport else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.path} id={self.connection_id}>"
