"""The demo's relays: ``/echo`` and ``/broadcast`` (the chat is in :mod:`tornws.chat`)."""

from __future__ import annotations

from typing import Any

from .frames import Message
from .handlers import WebSocketHandler
from .registry import Registry

__all__ = ["BroadcastHandler", "EchoHandler"]


class EchoHandler(WebSocketHandler):
    """Sends every message back to its sender: text stays text, binary stays binary."""

    def on_message(self, message: str | bytes) -> None:
        self.send(Message(message))


class BroadcastHandler(WebSocketHandler):
    """Relays every message, verbatim and with its type, to every connection on the route.

    The sender receives its own messages too. The message is encoded once, and
    the same :class:`~tornws.frames.Message` is handed to every receiver.

    Args (``initialize``, besides the common ones):
        room: the registry room the route's connections share; by default the
            request path, so two broadcast routes never mix.
    """

    def initialize(
        self, registry: Registry | None = None, *, room: str | None = None, **options: Any
    ) -> None:
        super().initialize(registry, **options)
        self.room = room if room is not None else f"broadcast:{self.request.path}"

    def open(self, *args: str, **kwargs: str) -> None:
        self.registry.join(self.room, self)

    def on_message(self, message: str | bytes) -> None:
        # Straight to the broker (it stamps, then the registry delivers); nobody resumes it.
        self.registry.broker.publish(self.room, Message(message), keep=False)
