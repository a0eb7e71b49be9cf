"""Rooms of local connections, shared by every handler of one application.

The registry is plain Python: no sockets, no event loop. A *member* is anything
with a ``deliver(envelope)`` method (tornws's handlers are); a room is a name.
Publishing goes through the registry's :class:`~tornws.broker.Broker`, which
calls :meth:`Registry.deliver` back with an :class:`~tornws.broker.Envelope`.

Guarantees:

- Delivery iterates an immutable snapshot of the room (members in the order they
  joined, within the groups described below), so members may join and leave
  (even from inside ``deliver``) without breaking a fan-out in progress.
- A member whose ``deliver`` raises is logged and removed from that room; the
  other members still receive the message.
- ``leave_all`` removes a member from every room; tornws's handlers call it when
  their connection closes.

A member may also offer a shortcut, ``direct_delivery() -> (codec, sender)``,
meaning "my ``deliver`` sends ``envelope.encode(codec)`` to
``sender.send_message`` when it is not ``None``, nothing else" — except, for a
codec whose ``echo_own`` is false, to the member whose ``connection_id`` is the
payload's ``origin`` (a plain-text chat user does not get their own line back).
The registry then encodes once per codec and calls the senders in a plain loop,
without a call to ``deliver`` per member. It is asked when the member joins, and
again when :meth:`Registry.update` is called for it: a member that needs its own
``deliver`` for a while (a chat connection not greeted yet) answers ``None``
then, and asks for an update once it does not. This is the one fan-out path of
every room kind: ``/broadcast``, the chat, channels.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple, Protocol

from ._settings import kept
from .broker import Broker, Codec, Envelope, MemoryBroker
from .frames import Message
from .stats import Histogram

__all__ = ["Member", "Registry", "Sender"]

log = logging.getLogger(__name__)

#: The key under which an application's registry is kept in its settings.
SETTINGS_KEY = "tornws.registry"


class Member(Protocol):
    """What a room holds: anything that can receive an envelope."""

    def deliver(self, envelope: Envelope, /) -> None:
        """Receive one published message. Must not block; may raise (it is then removed)."""


class Sender(Protocol):
    """What a direct delivery sends to (:class:`tornws.protocol.Protocol` is one)."""

    def send_message(self, message: Message, /) -> bool: ...


class _Group(NamedTuple):
    """The members of one room that take direct delivery with one codec."""

    codec: Codec
    senders: tuple[Sender, ...]
    #: The members, index for index with ``senders``.
    owners: tuple[Member, ...]
    #: The codec's ``echo_own`` is false: a payload's ``origin`` member is skipped.
    skip_origin: bool


class _Plan(NamedTuple):
    """How to deliver to one room, computed when its membership changes."""

    members: tuple[Member, ...]
    #: Delivered without a call per member: one encode and one loop per group.
    direct: tuple[_Group, ...]
    #: The members that get ``deliver(envelope)``.
    others: tuple[Member, ...]


class _Members:
    """One room's members, in join order, grouped the way a fan-out uses them."""

    __slots__ = ("by_id", "direct", "members", "name", "others", "plan")

    def __init__(self, name: str) -> None:
        #: The room's name (one string shared by every membership in it).
        self.name = name
        #: member → its codec when it takes direct delivery, else None.
        self.members: dict[Member, Codec | None] = {}
        #: codec → {member: sender}, for the members with direct delivery.
        self.direct: dict[Codec, dict[Member, Sender]] = {}
        #: The members that get ``deliver(envelope)``.
        self.others: dict[Member, None] = {}
        #: connection id → member, for the members with direct delivery that have one.
        self.by_id: dict[str, Member] = {}
        self.plan: _Plan | None = None

    def add(self, member: Member) -> None:
        direct = getattr(member, "direct_delivery", None)
        target = direct() if direct is not None else None
        if target is None:
            self.members[member] = None
            self.others[member] = None
        else:
            codec, sender = target
            self.members[member] = codec
            self.direct.setdefault(codec, {})[member] = sender
            connection_id = getattr(member, "connection_id", None)
            if connection_id is not None:
                self.by_id[connection_id] = member
        self.plan = None

    def remove(self, member: Member) -> None:
        codec = self.members.pop(member)
        if codec is None:
            del self.others[member]
        else:
            group = self.direct[codec]
            del group[member]
            if not group:
                del self.direct[codec]
            connection_id = getattr(member, "connection_id", None)
            if connection_id is not None:
                self.by_id.pop(connection_id, None)
        self.plan = None

    def get_plan(self) -> _Plan:
        """The plan, rebuilt after a change with C-level copies only (no call per member)."""
        plan = self.plan
        if plan is None:
            plan = self.plan = _Plan(
                tuple(self.members),
                tuple(
                    _Group(
                        codec,
                        tuple(group.values()),
                        tuple(group),
                        not getattr(codec, "echo_own", True),
                    )
                    for codec, group in self.direct.items()
                ),
                tuple(self.others),
            )
        return plan


class Registry:
    """Rooms → local members, publishing through a broker.

    Args:
        broker: carries published messages to the members; a new
            :class:`~tornws.broker.MemoryBroker` when omitted.
    """

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.broker.attach(self.deliver)
        # Members in the order they joined: a fan-out goes through them in that
        # order, which is about the order the kernel allocated their sockets in
        # (measured: sends in a shuffled order cost +25% at 10,000).
        self._rooms: dict[str, _Members] = {}
        # member → its room, or a set of rooms when it is in several (most members,
        # a connection in its chat room or one channel's subscription, are in one:
        # no set of one per member).
        self._memberships: dict[Member, str | set[str]] = {}
        #: Seconds from a publish to the last local member's send.
        self.fanout_seconds = Histogram()

    @classmethod
    def for_application(cls, application: Any) -> Registry:
        """The registry shared by every tornws handler of ``application``.

        Created on first use and kept in ``application.settings``; pass
        ``registry=`` to :func:`tornws.add_routes` or to a handler's
        ``initialize`` to use another one.
        """
        return kept(application, SETTINGS_KEY, cls)

    # Membership

    def join(self, room: str, member: Member) -> bool:
        """Add ``member`` to ``room``; ``False`` if it was a member already."""
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = _Members(room)
            self.broker.subscribe(room)
        elif member in members.members:
            return False
        members.add(member)
        rooms = self._memberships.get(member)
        if rooms is None:
            self._memberships[member] = members.name
        elif isinstance(rooms, str):
            self._memberships[member] = {rooms, members.name}
        else:
            rooms.add(members.name)
        return True

    def leave(self, room: str, member: Member) -> bool:
        """Remove ``member`` from ``room``; ``False`` if it was not a member."""
        members = self._rooms.get(room)
        if members is None or member not in members.members:
            return False
        members.remove(member)
        rooms = self._memberships[member]
        if isinstance(rooms, str):
            del self._memberships[member]
        else:
            rooms.discard(room)
            if len(rooms) == 1:
                self._memberships[member] = rooms.pop()
        if not members.members:
            del self._rooms[room]
            self.broker.unsubscribe(room)
        return True

    def update(self, member: Member) -> None:
        """Ask ``member``'s ``direct_delivery()`` again in every room it is in (a member
        whose answer changed: e.g. a chat connection once its greeting is sent)."""
        for room in self._rooms_of(member):
            members = self._rooms[room]
            members.remove(member)
            members.add(member)

    def leave_all(self, member: Member) -> list[str]:
        """Remove ``member`` from every room; return the rooms it left."""
        rooms = sorted(self._rooms_of(member))
        for room in rooms:
            self.leave(room, member)
        return rooms

    def members(self, room: str) -> tuple[Member, ...]:
        """The local members of ``room`` (an immutable snapshot)."""
        members = self._rooms.get(room)
        return members.get_plan().members if members is not None else ()

    def count(self, room: str) -> int:
        """How many local members ``room`` has."""
        members = self._rooms.get(room)
        return len(members.members) if members is not None else 0

    def rooms(self) -> list[str]:
        """The rooms that have local members, sorted."""
        return sorted(self._rooms)

    def rooms_of(self, member: Member) -> frozenset[str]:
        """The rooms ``member`` is in."""
        return frozenset(self._rooms_of(member))

    def _rooms_of(self, member: Member) -> tuple[str, ...] | set[str]:
        rooms = self._memberships.get(member)
        if rooms is None:
            return ()
        return (rooms,) if isinstance(rooms, str) else rooms

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
        room = self._rooms.get(envelope.room)
        if room is None:
            return 0
        plan = room.get_plan()
        started = time.perf_counter()
        failed: list[Member] = []
        encodings = envelope.encodings  # (the envelope's cache, looked up here: no call)
        for group in plan.direct:
            codec = group.codec
            try:
                message = encodings[codec]
            except KeyError:
                try:
                    message = encodings[codec] = codec.encode(envelope)
                except Exception:
                    self._failed(group.owners, envelope, failed)
                    continue
            if message is None:
                continue
            senders = group.senders
            if group.skip_origin:
                origin = room.by_id.get(getattr(envelope.payload, "origin", None) or "")
                if origin is not None and room.members.get(origin) is codec:
                    index = group.owners.index(origin)
                    self._send(senders[:index], group.owners[:index], message, envelope, failed)
                    index += 1
                    self._send(senders[index:], group.owners[index:], message, envelope, failed)
                    continue
            self._send(senders, group.owners, message, envelope, failed)
        for member in plan.others:
            try:
                member.deliver(envelope)
            except Exception:
                self._failed((member,), envelope, failed)
        self.fanout_seconds.observe(time.perf_counter() - started)
        for member in failed:
            self.leave(envelope.room, member)
        return len(plan.members) - len(failed)

    def _send(
        self,
        senders: tuple[Sender, ...],
        owners: tuple[Member, ...],
        message: Message,
        envelope: Envelope,
        failed: list[Member],
    ) -> None:
        """``message`` to every sender, in order; one that raises is noted in ``failed``."""
        remaining = senders
        while remaining:  # a plain loop (no index: no int allocated per receiver)
            sender = None
            try:
                for sender in remaining:
                    sender.send_message(message)
                return
            except Exception:  # `sender` raised: log it, go on from the next one
                index = senders.index(sender)
                self._failed((owners[index],), envelope, failed)
                remaining = senders[index + 1 :]

    @staticmethod
    def _failed(members: tuple[Member, ...], envelope: Envelope, failed: list[Member]) -> None:
        for member in members:
            log.exception(
                "%r raised while receiving offset %d of room %r; removed from the room",
                member,
                envelope.offset,
                envelope.room,
            )
            failed.append(member)
