"""This process's part of a tornws application: its open connections, their counters, its drain.

A :class:`Node` is kept per Tornado application (in its settings, beside the
:class:`~tornws.registry.Registry` of its rooms) and shared by every tornws
handler of it. The handlers add themselves when their upgrade is answered and
remove themselves when they close; admission (:mod:`tornws.admission`) counts
them against the limits, :func:`tornws.drain` closes them, ``/metrics`` and
``/healthz`` read it.
"""

from __future__ import annotations

from typing import Any, Protocol

from ._settings import kept
from .stats import Stats

__all__ = ["Closable", "Node"]

#: The key under which an application's node is kept in its settings.
SETTINGS_KEY = "tornws.node"


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

    def close_all(self, code: int, reason: str) -> int:
        """Start closing every open connection with ``code``; return how many."""
        connections = list(self.connections)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)
