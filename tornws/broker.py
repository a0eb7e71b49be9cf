"""Brokers carry room messages from the publisher to every member, in one order.

The :class:`~tornws.registry.Registry` never delivers a published message
directly: it hands it to its broker, and the broker hands it back, stamped with
the room's next offset, to :meth:`Registry.deliver` of every registry that has
members in the room. That seam is what lets rooms span processes: the default
:class:`MemoryBroker` loops back within the process; a Redis broker (a later
extra) carries the same envelopes between processes.

Contract for a broker:

- :meth:`Broker.publish` returns at once; delivery may happen before it returns
  (memory) or later (network).
- Within a room, every registry receives envelopes in increasing ``offset``
  order, and all registries see the same order.
- :meth:`Broker.subscribe` is called when a room gets its first local member and
  :meth:`Broker.unsubscribe` when it loses its last: a broker only needs to
  deliver rooms that are subscribed.
"""

from __future__ import annotations

import abc
import collections
from typing import Callable, Protocol

from .frames import Message

__all__ = ["Broker", "Codec", "Envelope", "MemoryBroker"]


class Codec(Protocol):
    """Turns a published payload into the message one kind of member receives."""

    def encode(self, envelope: Envelope, /) -> Message | None:
        """Return the message to send, or ``None`` when this kind of member gets nothing."""


class Envelope:
    """A payload published to a room, as a broker hands it back for delivery.

    Attributes:
        room: the room it was published to.
        offset: its position in the room: 1 for the room's first message, then
            increasing by one.
        payload: what the publisher passed to ``publish``.
    """

    __slots__ = ("_encoded", "offset", "payload", "room")

    def __init__(self, room: str, offset: int, payload: object) -> None:
        self.room = room
        self.offset = offset
        self.payload = payload
        self._encoded: dict[Codec, Message | None] = {}

    def encode(self, codec: Codec) -> Message | None:
        """The payload encoded by ``codec``, computed once per codec and envelope.

        Every member that shares a codec receives the very same
        :class:`~tornws.frames.Message`: a fan-out to N members encodes once,
        not N times.
        """
        try:
            return self._encoded[codec]
        except KeyError:
            message = self._encoded[codec] = codec.encode(self)
            return message

    def __repr__(self) -> str:
        return f"<Envelope room={self.room!r} offset={self.offset} payload={self.payload!r}>"


Deliver = Callable[[Envelope], object]


class Broker(abc.ABC):
    """Base class of brokers; see the module docstring for the contract."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def attach(self, deliver: Deliver) -> None:
        """Called once by the registry with the function that delivers locally."""
        if self._deliver is not None:
            raise RuntimeError(
                f"{type(self).__name__} is attached to a registry already; "
                "create one broker per Registry"
            )
        self._deliver = deliver

    @abc.abstractmethod
    def publish(self, room: str, payload: object) -> None:
        """Publish ``payload`` to every member of ``room``, in every process."""

    def subscribe(self, room: str) -> None:  # noqa: B027 - optional hook
        """Called when ``room`` gets its first local member."""

    def unsubscribe(self, room: str) -> None:  # noqa: B027 - optional hook
        """Called when ``room`` loses its last local member."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to whatever carries the messages; the memory broker needs nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks."""


class MemoryBroker(Broker):
    """The in-process broker: publish delivers at once, to this process only.

    Delivery is never re-entered: a message published while another is being
    delivered (by a member reacting to it) is queued and delivered right after,
    so every member sees the same order. Offsets count from 1 while a room has
    members; a room that empties forgets its offset.
    """

    def __init__(self) -> None:
        super().__init__()
        self._offsets: dict[str, int] = {}
        self._queue: collections.deque[tuple[str, object]] = collections.deque()
        self._delivering = False

    def subscribe(self, room: str) -> None:
        self._offsets.setdefault(room, 0)

    def unsubscribe(self, room: str) -> None:
        self._offsets.pop(room, None)

    def publish(self, room: str, payload: object) -> None:
        if room not in self._offsets:
            return  # nobody in this process is in the room: nothing to deliver
        self._queue.append((room, payload))
        if self._delivering:
            return
        deliver = self._deliver
        if deliver is None:
            raise RuntimeError("MemoryBroker.publish() before attach(): pass it to a Registry")
        self._delivering = True
        try:
            while self._queue:
                room, payload = self._queue.popleft()
                offset = self._offsets.get(room)
                if offset is None:
                    continue  # the room emptied meanwhile
                self._offsets[room] = offset = offset + 1
                deliver(Envelope(room, offset, payload))
        finally:
            self._delivering = False
