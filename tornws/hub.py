"""Publishing from the host application's own code: :class:`Hub`.

The handlers of a tornws application publish what their clients send; a
:class:`Hub` lets everything else in the process do it too — the
application's HTTP handlers, its background tasks, its worker threads::

    hub = tornws.Hub.for_application(app)
    position = await hub.publish("news", {"title": "hello"})   # a /live channel
    await hub.publish("#ann", {"unread": 3})                   # every connection of ann
    await hub.say("lobby", "the deploy is done")               # a chat room
    hub.publish_threadsafe("news", data).result(timeout=5)     # from a worker thread
    await hub.disconnect("ann")                                # e.g. after a logout

Everything goes through the application's registry and broker: on the memory
broker it reaches this process; on Redis (``tornws serve --broker``) every
process, numbered in the same sequence as the clients' publications, kept in
the channel's history and resumable. From another process altogether (a
Django or Celery worker), use :class:`tornws.publisher.Publisher` on the same
Redis.

``disconnect(user)`` closes every connection of that user, on every process,
with close code :data:`DISCONNECT_CODE` (3000, "Unauthorized" in the IANA
registry of WebSocket close codes): a client should sign in again, not
reconnect at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from .chat import ChatEvent
from .exceptions import ConfigError
from .live import CHANNEL_PATTERN, Publication, channel_room
from .node import CONTROL_ROOM, DISCONNECT_CODE, DISCONNECT_REASON, Disconnect, Node
from .registry import Registry

__all__ = [
    "Hub",
    "Position",
    "check_channel",
    "disconnect_message",
    "publication",
    "user_channel",
]

#: The key under which an application's hub is kept in its settings.
SETTINGS_KEY = "tornws.hub"

_VALID_CHANNEL = re.compile(f"#?{CHANNEL_PATTERN}")


def publication(channel: str, data: Any) -> tuple[str, Publication]:
    """``(room, publication)`` of ``data`` (any JSON) for ``channel``; ValueError for an
    invalid channel or data JSON cannot encode (what every publishing path checks)."""
    check_channel(channel)
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data is not JSON: {exc}") from None
    return channel_room(channel), Publication(text)


def disconnect_message(
    user: Any, code: int = DISCONNECT_CODE, reason: str = DISCONNECT_REASON
) -> Disconnect:
    """The :class:`Disconnect` for ``user``; ValueError for a code outside 3000-4999."""
    if not 3000 <= code <= 4999:
        raise ValueError(f"code must be an application close code (3000-4999), not {code}")
    return Disconnect(str(user), code, reason)


class Position(NamedTuple):
    """Where a publication landed in its channel: ``str()`` is ``"<epoch>:<offset>"``,
    the form a client's ``since`` takes."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


def user_channel(user: Any) -> str:
    """The channel that reaches every ``/live`` connection of ``user``: ``#<user>``."""
    return f"#{user}"


def check_channel(channel: Any) -> str:
    """``channel`` if it is a valid channel name (``#<user>`` included), else ValueError."""
    if not isinstance(channel, str) or not _VALID_CHANNEL.fullmatch(channel):
        raise ValueError(
            f"invalid channel {channel!r}: 1 to 128 of A-Z a-z 0-9 _ . : @ ~ -, "
            "after an optional # (a user's channel)"
        )
    return channel


class Hub:
    """The server side of a tornws application, for the rest of the application.

    One per application (:meth:`for_application`), on the application's
    registry and node. Its coroutines run on the application's event loop; the
    ``*_threadsafe`` methods may be called from any thread.
    """

    def __init__(self, registry: Registry | None = None, node: Node | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        self.node = node if node is not None else Node()
        #: The loop the hub's coroutines run on, where the ``*_threadsafe`` methods send
        #: their calls: the one it was made on, else the first one any of its
        #: coroutines ran on or the application's first connection opened on, or
        #: the one given to :meth:`bind`.
        self.loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # (made outside a loop: bound later)
            self.loop = asyncio.get_running_loop()

    @classmethod
    def for_application(cls, application: Any) -> Hub:
        """The hub of ``application``: created on first use (on its registry and node),
        kept in its settings."""
        settings: dict[str, Any] = application.settings
        hub = settings.get(SETTINGS_KEY)
        if hub is None:
            hub = settings[SETTINGS_KEY] = cls(
                Registry.for_application(application), Node.for_application(application)
            )
        elif not isinstance(hub, cls):
            raise TypeError(
                f"application.settings[{SETTINGS_KEY!r}] is a {type(hub).__name__}, "
                "not a tornws Hub"
            )
        return hub

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the ``*_threadsafe`` calls on ``loop`` (by default: the loop the hub was
        made on, or the first one a coroutine of it ran on)."""
        self.loop = loop

    # Publishing

    async def publish(self, channel: str, data: Any) -> Position:
        """Publish ``data`` (anything JSON can encode) to ``channel`` — a ``/live``
        channel, or ``#<user>`` for every ``/live`` connection of that user — and
        return where it landed. Its subscribers get it as a ``pub`` push.

        Raises:
            ValueError: an invalid channel name, or data JSON cannot encode.
            BrokerUnavailableError: the broker could not number it.
        """
        self._remember_loop()
        return await self._number(*publication(channel, data))

    async def publish_once(
        self, channel: str, data: Any, key: str, seconds: float
    ) -> tuple[Position, bool] | None:
        """:meth:`publish` with an idempotency ``key``: ``(position, repeated)``, where a
        publication with the same key in the last ``seconds`` (in any process of a Redis
        broker) is answered again instead of published; ``None`` on a broker that
        reaches no other process (nothing published: remember keys yourself)."""
        self._remember_loop()
        once = await self.registry.broker.publish_once(*publication(channel, data), key, seconds)
        if once is None:
            return None
        return Position(once[0], once[1]), once[2]

    async def say(self, room: str, text: str, *, nick: str = "server") -> Position:
        """Post ``text`` to the chat room ``room`` as ``nick``: its members see it like
        any chat line (plain-text members as ``<nick>: <text>``)."""
        self._remember_loop()
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        return await self._number(room, ChatEvent("message", nick, text))

    async def broadcast(self, channels: Iterable[str], data: Any) -> list[Position]:
        """:meth:`publish` the same ``data`` to each of ``channels``, in order."""
        names = [check_channel(c) for c in channels]
        return [await self.publish(channel, data) for channel in names]

    def publish_threadsafe(self, channel: str, data: Any) -> concurrent.futures.Future[Position]:
        """:meth:`publish` from any thread: returns a ``concurrent.futures.Future``
        (``.result(timeout)`` waits for the position)."""
        return self._threadsafe(self.publish(channel, data))

    def say_threadsafe(
        self, room: str, text: str, *, nick: str = "server"
    ) -> concurrent.futures.Future[Position]:
        """:meth:`say` from any thread."""
        return self._threadsafe(self.say(room, text, nick=nick))

    async def _number(self, room: str, payload: object) -> Position:
        broker = self.registry.broker
        numbered = broker.publish_numbered_now(room, payload)
        if numbered is None:
            numbered = await broker.publish_numbered(room, payload)
        return Position(*numbered)

    def _threadsafe(self, coroutine: Any) -> concurrent.futures.Future[Position]:
        loop = self.loop
        if loop is None or loop.is_closed():
            coroutine.close()
            raise ConfigError(
                "the hub has no event loop yet: make it (Hub.for_application(app)) on the "
                "application's loop, or call hub.bind(loop), before using it from a thread"
            )
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def _remember_loop(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    # Users

    async def disconnect(
        self, user: Any, *, code: int = DISCONNECT_CODE, reason: str = DISCONNECT_REASON
    ) -> None:
        """Close every connection of ``user`` (as ``str(user)``), in every process the
        broker reaches, with ``code`` (default 3000) and ``reason``."""
        self._remember_loop()
        # To every process with signed-in connections, this one included.
        message = disconnect_message(user, code, reason)
        self.registry.broker.publish(CONTROL_ROOM, message, keep=False)

    def disconnect_threadsafe(self, user: Any) -> concurrent.futures.Future[None]:
        """:meth:`disconnect` from any thread."""
        return self._threadsafe(self.disconnect(user))  # type: ignore[return-value]

    def users(self) -> dict[str, int]:
        """The signed-in users with connections in this process, and how many each."""
        return self.node.users()

    # What is where

    async def presence(self, channel: str) -> dict[str, Any]:
        """``{"count", "members"}`` of ``channel``'s subscriptions in every process the
        broker reaches (as the ``/live`` ``presence`` command answers)."""
        check_channel(channel)
        members = await self.registry.broker.presence(channel_room(channel))
        return {"count": len(members), "members": members}

    async def channels(self) -> dict[str, int]:
        """The ``/live`` channels with subscribers in this process, each with its
        subscribers in every process the broker reaches."""
        prefix = channel_room("")
        broker = self.registry.broker
        return {
            room[len(prefix) :]: await broker.presence_count(room)
            for room in self.registry.rooms()
            if room.startswith(prefix) and not room.startswith(prefix + "#")
        }
