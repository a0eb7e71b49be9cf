"""tornws: a WebSocket server framework on Tornado.

Rooms and fan-out on a shared registry, subprotocol selection, a chat over
``chat.json`` and plain ``chat``, and the ``tornws`` command (``serve``,
``client``, ``bench``). Handlers are Tornado ``WebSocketHandler`` subclasses.

The top level holds every public name of these modules, and only those (tested):
:mod:`~tornws.app`, :mod:`~tornws.broker`, :mod:`~tornws.chat`,
:mod:`~tornws.demo`, :mod:`~tornws.exceptions`, :mod:`~tornws.frames`,
:mod:`~tornws.handlers`, :mod:`~tornws.node`, :mod:`~tornws.registry`,
:mod:`~tornws.server`, :mod:`~tornws.stats`. The other modules are reached by
their path: :mod:`tornws.admission`, :mod:`tornws.auth`, :mod:`tornws.client`,
:mod:`tornws.connection` (the socket-free connection core),
:mod:`tornws.deflate`, :mod:`tornws.metrics`, :mod:`tornws.redis_broker`,
:mod:`tornws.transport` (the Tornado adapter), :mod:`tornws.bench`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .app import (
    ENDPOINTS,
    HealthHandler,
    add_routes,
    make_app,
    routes,
)
from .broker import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_AGE,
    DEFAULT_HISTORY_BYTES,
    Broker,
    Codec,
    Envelope,
    MemoryBroker,
)
from .chat import (
    JSON,
    NICK_MAX_LENGTH,
    READY_TIMEOUT,
    ROOM_PATTERN,
    TEXT,
    ChatEvent,
    ChatHandler,
    ChatInputError,
    JsonCodec,
    TextCodec,
    error_event,
    next_guest_name,
    parse_since,
    presence_event,
    resumed_event,
    validate_nick,
)
from .demo import (
    BroadcastHandler,
    EchoHandler,
)
from .exceptions import (
    BrokerUnavailableError,
    ConfigError,
    HandshakeError,
    ProtocolError,
    TornwsError,
)
from .frames import (
    CloseCode,
    Data,
    Message,
    Opcode,
    Reader,
    ReaderDelegate,
    encode_close,
    encode_frame,
    is_valid_close_code,
    unmask,
)
from .handlers import (
    DEFAULT_COMPRESSION,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_OUTGOING,
    DEFAULT_OUTGOING_BUDGET,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_RETRY_AFTER,
    VERBATIM,
    WebSocketHandler,
)
from .node import (
    Closable,
    Node,
)
from .registry import (
    Member,
    Registry,
    Sender,
)
from .server import (
    drain,
    run_workers,
    serve,
    ssl_context,
)
from .stats import (
    Histogram,
    Stats,
    Traffic,
)

__all__ = [
    "DEFAULT_COMPRESSION",
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_AGE",
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OUTGOING",
    "DEFAULT_OUTGOING_BUDGET",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_RETRY_AFTER",
    "ENDPOINTS",
    "JSON",
    "NICK_MAX_LENGTH",
    "READY_TIMEOUT",
    "ROOM_PATTERN",
    "TEXT",
    "VERBATIM",
    "BroadcastHandler",
    "Broker",
    "BrokerUnavailableError",
    "ChatEvent",
    "ChatHandler",
    "ChatInputError",
    "Closable",
    "CloseCode",
    "Codec",
    "ConfigError",
    "Data",
    "EchoHandler",
    "Envelope",
    "HandshakeError",
    "HealthHandler",
    "Histogram",
    "JsonCodec",
    "Member",
    "MemoryBroker",
    "Message",
    "Node",
    "Opcode",
    "ProtocolError",
    "Reader",
    "ReaderDelegate",
    "Registry",
    "Sender",
    "Stats",
    "TextCodec",
    "TornwsError",
    "Traffic",
    "WebSocketHandler",
    "__version__",
    "add_routes",
    "drain",
    "encode_close",
    "encode_frame",
    "error_event",
    "is_valid_close_code",
    "make_app",
    "next_guest_name",
    "parse_since",
    "presence_event",
    "resumed_event",
    "routes",
    "run_workers",
    "serve",
    "ssl_context",
    "unmask",
    "validate_nick",
]
