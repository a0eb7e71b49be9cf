"""Rooms of local connections, shared by every handler of one application.

The registry is plain Python: no sockets, no event loop. A *member* is anything
with a ``deliver(envelope)`` method (tornws's handlers are); a room is a name.
Publishing goes through the registry's :class:`~tornws.broker.Broker`, which
calls :meth:`Registry.deliver` back with an :class:`~tornws.broker.Envelope`.

Guarantees:

- Delivery iterates an immutable snapshot of the room, so members may join and
  leave (even from inside ``deliver``) without breaking a fan-out in progress.
- A member whose ``deliver`` raises is logged and removed from that room; the
  other members still receive the message.
- ``leave_all`` removes a member from every room; tornws's handlers call it when
  their connection closes.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Protocol

from .broker import Broker, Envelope, MemoryBroker
from .stats import Stats

__all__ = ["Connection", "Member", "Registry"]

log = logging.getLogger(__name__)

#: The key under which an application's registry is kept in its settings.
SETTINGS_KEY = "tornws.registry"


class Member(Protocol):
    """What a room holds: anything that can receive an envelope."""

    def deliver(self, envelope: Envelope, /) -> None:
        """Receive one published message. Must not block; may raise (it is then removed)."""


class Connection(Protocol):
    """An open connection the registry can close at shutdown."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Registry:
    """Rooms → local members, publishing through a broker.

    Args:
        broker: carries published messages to the members; a new
            :class:`~tornws.broker.MemoryBroker` when omitted.
    """

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.broker.attach(self.deliver)
        self._rooms: dict[str, set[Member]] = {}
        self._snapshots: dict[str, tuple[Member, ...]] = {}
        self._memberships: dict[Member, set[str]] = {}
        self._guests = itertools.count(1)
        #: Every open tornws connection of the application (for shutdown and counts).
        self.connections: set[Connection] = set()
        #: Counters of those connections (outgoing bytes, slow consumers, refusals).
        self.stats = Stats()
        #: Set by :func:`tornws.server.drain`: ``/healthz`` answers 503, upgrades get 503.
        self.draining = False

    @classmethod
    def for_application(cls, application: Any) -> Registry:
        """The registry shared by every tornws handler of ``application``.

        Created on first use and kept in ``application.settings``; pass
        ``registry=`` to :func:`tornws.add_routes` or to a handler's
        ``initialize`` to use another one.
        """
        settings: dict[str, Any] = application.settings
        registry = settings.get(SETTINGS_KEY)
        if registry is None:
            registry = settings[SETTINGS_KEY] = cls()
        elif not isinstance(registry, Registry):
            raise TypeError(
                f"application.settings[{SETTINGS_KEY!r}] is a {type(registry).__name__}, "
                "not a tornws Registry"
            )
        return registry

    # Membership

    def join(self, room: str, member: Member) -> bool:
        """Add ``member`` to ``room``; ``False`` if it was a member already."""
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = set()
            self.broker.subscribe(room)
        elif member in members:
            return False
        members.add(member)
        self._snapshots.pop(room, None)
        self._memberships.setdefault(member, set()).add(room)
        return True

    def leave(self, room: str, member: Member) -> bool:
        """Remove ``member`` from ``room``; ``False`` if it was not a member."""
        members = self._rooms.get(room)
        if members is None or member not in members:
            return False
        members.discard(member)
        self._snapshots.pop(room, None)
        rooms = self._memberships[member]
        rooms.discard(room)
        if not rooms:
            del self._memberships[member]
        if not members:
            del self._rooms[room]
            self.broker.unsubscribe(room)
        return True

    def leave_all(self, member: Member) -> list[str]:
        """Remove ``member`` from every room; return the rooms it left."""
        rooms = sorted(self._memberships.get(member, ()))
        for room in rooms:
            self.leave(room, member)
        return rooms

    def members(self, room: str) -> tuple[Member, ...]:
        """The local members of ``room`` (an immutable snapshot)."""
        snapshot = self._snapshots.get(room)
        if snapshot is None:
            members = self._rooms.get(room)
            if not members:
                return ()
            snapshot = self._snapshots[room] = tuple(members)
        return snapshot

    def rooms(self) -> list[str]:
        """The rooms that have local members, sorted."""
        return sorted(self._rooms)

    def rooms_of(self, member: Member) -> frozenset[str]:
        """The rooms ``member`` is in."""
        return frozenset(self._memberships.get(member, ()))

    # Messages

    def publish(self, room: str, payload: object, *, keep: bool = True) -> None:
        """Send ``payload`` to every member of ``room``, in every process the broker reaches.

        ``keep=False``: not into the room's history (nobody resumes this room, or
        the payload is too big to keep).
        """
        if keep:
            self.broker.publish(room, payload)  # (brokers written before ``keep`` work too)
        else:
            self.broker.publish(room, payload, keep=False)

    def deliver(self, envelope: Envelope) -> int:
        """Hand ``envelope`` to each local member of its room; return how many took it.

        Called by the broker. Each member receives the same envelope object, so
        an encoding computed by one (``envelope.encode(codec)``) serves all.
        """
        members = self.members(envelope.room)
        if not members:
            return 0
        started = time.perf_counter()
        failed: list[Member] = []
        for member in members:
            try:
                member.deliver(envelope)
            except Exception:
                log.exception(
                    "%r raised while receiving offset %d of room %r; removed from the room",
                    member,
                    envelope.offset,
                    envelope.room,
                )
                failed.append(member)
        self.stats.fanout_seconds.observe(time.perf_counter() - started)
        for member in failed:
            self.leave(envelope.room, member)
        return len(members) - len(failed)

    # Connections

    def next_guest_name(self) -> str:
        """``guest-1``, ``guest-2``, …: a name for a user who did not give one."""
        return f"guest-{next(self._guests)}"

    def close_all(self, code: int, reason: str) -> int:
        """Start closing every open connection with ``code``; return how many."""
        connections = list(self.connections)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)
