"""This process's part of a tornws application: its open connections, their counters, its drain.

A :class:`Node` is kept per Tornado application (in its settings, beside the
:class:`~tornws.registry.Registry` of its rooms) and shared by every tornws
handler of it. The handlers add themselves when their upgrade is answered and
remove themselves when they close; admission (:mod:`tornws.admission`) counts
them against the limits, :func:`tornws.drain` closes them, ``/metrics`` and
``/healthz`` read it.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from ._settings import kept
from .stats import Stats

__all__ = [
    "CONTROL_ROOM",
    "DISCONNECT_CODE",
    "DISCONNECT_REASON",
    "Closable",
    "Disconnect",
    "Node",
]

#: The key under which an application's node is kept in its settings.
SETTINGS_KEY = "tornws.node"
#: The close code of a disconnected user's connections (:meth:`tornws.Hub.disconnect`):
#: 3000, "Unauthorized" in the IANA registry of WebSocket close codes.
DISCONNECT_CODE = 3000
DISCONNECT_REASON = "disconnected by the server"
#: The room every process with signed-in connections reads for control messages
#: (disconnects): one room for all users, not one per user.
CONTROL_ROOM = "tornws.control"


class Disconnect:
    """A control message, published to :data:`CONTROL_ROOM`: close every connection
    of ``user`` with ``code`` and ``reason``."""

    __slots__ = ("code", "reason", "user")

    def __init__(
        self, user: str, code: int = DISCONNECT_CODE, reason: str = DISCONNECT_REASON
    ) -> None:
        self.user = user
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Disconnect {self.user!r} {self.code}>"


class _Control:
    """A node's member of :data:`CONTROL_ROOM`: carries out control messages here."""

    __slots__ = ("__weakref__", "node")

    def __init__(self, node: Node) -> None:
        self.node = node

    def deliver(self, envelope: Any) -> None:
        message = envelope.payload
        if isinstance(message, Disconnect):
            for connection in list(self.node._users.get(message.user, ())):
                connection.close(message.code, message.reason)


class Closable(Protocol):
    """An open connection that a node can close (tornws's handlers are)."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Node:
    """The open tornws connections of one application in this process."""

    def __init__(self) -> None:
        #: Every open tornws connection (handlers whose upgrade was answered).
        self.connections: set[Closable] = set()
        #: Counters of those connections (outgoing bytes, slow consumers, refusals, …).
        self.stats = Stats()
        #: Set by :func:`tornws.drain`: ``/healthz`` answers 503, upgrades get 503.
        self.draining = False
        self._users: dict[str, set[Closable]] = {}  # user -> their connections here
        self._control = _Control(self)
        self._control_registries: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    def for_application(cls, application: Any) -> Node:
        """The node of ``application``: created on first use, kept in its settings."""
        return kept(application, SETTINGS_KEY, cls)

    def opened(self, connection: Closable, ip: str) -> None:
        """Count ``connection`` (from client address ``ip``) as open."""
        self.connections.add(connection)
        self.stats.by_ip[ip] += 1

    def closed(self, connection: Closable, ip: str) -> None:
        """Count ``connection`` as closed (the other half of :meth:`opened`)."""
        self.connections.discard(connection)
        by_ip = self.stats.by_ip
        by_ip[ip] -= 1
        if by_ip[ip] <= 0:
            del by_ip[ip]

    def user_opened(self, user: Any, connection: Closable, registry: Any) -> None:
        """Count ``connection`` as one of signed-in ``user``'s (``str(user)``): a
        :class:`Disconnect` for that user, published to :data:`CONTROL_ROOM` of
        ``registry`` from any process, closes it."""
        self._users.setdefault(str(user), set()).add(connection)
        if registry not in self._control_registries:
            self._control_registries.add(registry)
            registry.join(CONTROL_ROOM, self._control)

    def user_closed(self, user: Any, connection: Closable) -> None:
        """The other half of :meth:`user_opened`."""
        name = str(user)
        connections = self._users.get(name)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._users[name]

    def users(self) -> dict[str, int]:
        """The signed-in users with connections here, and how many each."""
        return {user: len(connections) for user, connections in self._users.items()}

    def close_all(self, code: int, reason: str) -> int:
        """Start closing every open connection with ``code``; return how many."""
        connections = list(self.connections)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)
