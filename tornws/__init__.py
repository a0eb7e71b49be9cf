"""tornws: a WebSocket server framework on Tornado.

Rooms and fan-out on a shared registry, subprotocol selection, a chat over
``chat.json`` and plain ``chat``, and the ``tornws`` command (``serve``,
``client``). Handlers are Tornado ``WebSocketHandler`` subclasses.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .app import add_routes, make_app, routes
from .broker import Broker, Codec, Envelope, MemoryBroker
from .chat import ChatHandler
from .demo import BroadcastHandler, EchoHandler
from .exceptions import ConfigError, HandshakeError, TornwsError
from .frames import CloseCode, Message
from .handlers import WebSocketHandler
from .node import Node
from .registry import Member, Registry
from .server import drain, serve
from .stats import Stats

__all__ = [
    "BroadcastHandler",
    "Broker",
    "ChatHandler",
    "CloseCode",
    "Codec",
    "ConfigError",
    "EchoHandler",
    "Envelope",
    "HandshakeError",
    "Member",
    "MemoryBroker",
    "Message",
    "Node",
    "Registry",
    "Stats",
    "TornwsError",
    "WebSocketHandler",
    "__version__",
    "add_routes",
    "drain",
    "make_app",
    "routes",
    "serve",
]
