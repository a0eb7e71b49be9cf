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
- Every envelope carries its room's ``epoch`` and ``offset``. While a room keeps
  its history, the epoch stays and offsets grow by one per message; when the
  history is lost (the broker restarted, or the room stayed empty longer than
  the history lasts), the room gets a new epoch and offsets start again at 1.
- :meth:`Broker.since` returns exactly the envelopes after a position, or
  ``None`` when it cannot: never part of them.

Presence: who is in a room, across every process the broker reaches. A handler
calls :meth:`Broker.presence_add` when a member should be listed (a chat user
once greeted, a ``/live`` subscription) and :meth:`Broker.presence_remove` when
it leaves, with a ``key`` unique in the room within this process (its connection
id) and a JSON-able ``entry`` (what is listed: a nick, ``{"id", "user",
"info"}``). Both return at once. :meth:`Broker.presence` lists every process's
entries, :meth:`Broker.presence_count` counts them (cheaply), and
:meth:`Broker.presence_now` answers without waiting when the broker can (the
memory broker: its entries are all there is). The base class keeps this
process's entries in dicts; a broker that spans processes shares them, and
removes the entries of a process that died without saying goodbye (see
:mod:`tornws.redis_broker`).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, Callable, Protocol

from .frames import Message

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_AGE",
    "DEFAULT_HISTORY_BYTES",
    "Broker",
    "Codec",
    "Envelope",
    "MemoryBroker",
]

log = logging.getLogger(__name__)

#: Messages a room keeps for clients that reconnect.
DEFAULT_HISTORY = 1000
#: Seconds a message is kept for them (also: how long an empty room keeps its history).
DEFAULT_HISTORY_AGE = 300.0
#: Bytes of messages a room keeps for them (an estimate: texts and payloads).
DEFAULT_HISTORY_BYTES = 256 * 1024


def _size(payload: object) -> int:
    """Roughly what keeping ``payload`` costs: its texts and bytes, plus a fixed part."""
    if isinstance(payload, Message):
        return 96 + len(payload.payload)
    if isinstance(payload, (str, bytes)):
        return 64 + len(payload)
    if dataclasses.is_dataclass(payload):
        values = [getattr(payload, field.name) for field in dataclasses.fields(payload)]
        return 96 + sum(len(v) for v in values if isinstance(v, (str, bytes)))
    return 128


class Codec(Protocol):
    """Turns a published payload into the message one kind of member receives.

    A codec may also have ``echo_own = False``: then a payload with an ``origin``
    attribute (a connection id) is not sent to that connection (see
    :mod:`tornws.registry`).
    """

    def encode(self, envelope: Envelope, /) -> Message | None:
        """Return the message to send, or ``None`` when this kind of member gets nothing."""


class Envelope:
    """A payload published to a room, as a broker hands it back for delivery.

    Attributes:
        room: the room it was published to.
        offset: its position in the room: 1 for the first message of the room's
            epoch, then increasing by one.
        payload: what the publisher passed to ``publish``.
        epoch: the room's epoch (see the module docstring).
    """

    __slots__ = ("encodings", "epoch", "offset", "payload", "room")

    def __init__(self, room: str, offset: int, payload: object, epoch: str = "") -> None:
        self.room = room
        self.offset = offset
        self.payload = payload
        self.epoch = epoch
        #: The encode-once cache: each codec's message (``None``: that kind of member
        #: gets nothing), filled by :meth:`encode` and by the registry's fan-out.
        self.encodings: dict[Codec, Message | None] = {}

    def encode(self, codec: Codec) -> Message | None:
        """The payload encoded by ``codec``, computed once per codec and envelope.

        Every member that shares a codec receives the very same
        :class:`~tornws.frames.Message`: a fan-out to N members encodes once,
        not N times.
        """
        try:
            return self.encodings[codec]
        except KeyError:
            message = self.encodings[codec] = codec.encode(self)
            return message

    def __repr__(self) -> str:
        return (
            f"<Envelope room={self.room!r} epoch={self.epoch!r} offset={self.offset} "
            f"payload={self.payload!r}>"
        )


Deliver = Callable[[Envelope], object]


class Broker(abc.ABC):
    """Base class of brokers; see the module docstring for the contract."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        #: room -> key -> entry: this process's presence entries, in the order added.
        self._presence: dict[str, dict[str, Any]] = {}
        self._at_close: list[Callable[[], object]] = []

    def attach(self, deliver: Deliver) -> None:
        """Called once by the registry with the function that delivers locally."""
        if self._deliver is not None:
            raise RuntimeError(
                f"{type(self).__name__} is attached to a registry already; "
                "create one broker per Registry"
            )
        self._deliver = deliver

    @abc.abstractmethod
    def publish(self, room: str, payload: object, *, keep: bool = True) -> None:
        """Publish ``payload`` to every member of ``room``, in every process; with
        ``keep``, also into the room's history (for :meth:`since`)."""

    def subscribe(self, room: str) -> None:  # noqa: B027 - optional hook
        """Called when ``room`` gets its first local member."""

    def unsubscribe(self, room: str) -> None:  # noqa: B027 - optional hook
        """Called when ``room`` loses its last local member."""

    def since(self, room: str, epoch: str, offset: int) -> list[Envelope] | None:
        """The envelopes of ``room`` after ``offset`` in ``epoch``, in order; ``None``
        when the broker cannot tell them all (another epoch, or some were dropped).
        The base class keeps no history: ``None``."""
        return None

    async def recover(self, room: str, epoch: str, offset: int) -> list[Envelope] | None:
        """:meth:`since` for brokers whose history is elsewhere (awaitable)."""
        return self.since(room, epoch, offset)

    async def publish_numbered(self, room: str, payload: object) -> tuple[str, int]:
        """Publish ``payload`` into ``room``'s history and return its ``(epoch, offset)``
        once the broker has numbered it (the room may have no member anywhere).

        Raises:
            BrokerUnavailableError: it could not be numbered (it may still have reached
                this process's members).
        """
        raise NotImplementedError(f"{type(self).__name__} does not number publications")

    async def publish_once(
        self, room: str, payload: object, key: str, seconds: float
    ) -> tuple[str, int, bool] | None:
        """:meth:`publish_numbered`, unless a publication with idempotency ``key`` was
        made in the last ``seconds`` in any process the broker reaches: then its
        position again, not published. ``(epoch, offset, repeated)``; ``None`` from a
        broker that reaches no other process (the caller remembers keys itself)."""
        return None

    async def claim_once(self, key: str, seconds: float) -> bool:
        """``True`` the first time ``key`` is claimed, for ``seconds``, in every process
        this broker reaches (a ticket's single use). The base class reaches no other
        process and keeps nothing: ``True`` (the caller keeps this process's claims).

        Raises:
            BrokerUnavailableError: the claim could not be checked.
        """
        return True

    #: Whether :meth:`claim_once` (and publishing) reaches other processes.
    shared = False

    def publish_numbered_now(self, room: str, payload: object) -> tuple[str, int] | None:
        """:meth:`publish_numbered` without waiting, for a broker that numbers in this
        process (the memory broker); ``None`` (nothing published): call that instead."""
        return None

    async def position(self, room: str) -> tuple[str, int]:
        """``room``'s epoch and its latest offset (0: nothing published in this epoch)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep positions")

    def ready(self, room: str) -> Awaitable[None] | None:
        """After :meth:`subscribe`: an awaitable done once the room's messages are
        delivered here, or ``None`` when they already are (the memory broker)."""
        return None

    # Presence

    def presence_add(self, room: str, key: str, entry: Any) -> None:
        """List ``entry`` (JSON-able) in ``room``'s presence under ``key`` (unique in the
        room within this process: a connection id), replacing what ``key`` had; returns
        at once (a broker that spans processes writes it in the background)."""
        entries = self._presence.get(room)
        if entries is None:
            entries = self._presence[room] = {}
        entries[key] = entry

    def presence_remove(self, room: str, key: str) -> None:
        """Stop listing ``key`` in ``room``'s presence (nothing if it is not listed)."""
        entries = self._presence.get(room)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._presence[room]

    def presence_local(self, room: str) -> list[Any]:
        """This process's entries of ``room``, in the order they were added."""
        entries = self._presence.get(room)
        return list(entries.values()) if entries is not None else []

    def presence_now(self, room: str) -> list[Any] | None:
        """Every entry of ``room`` without waiting, when this process holds them all (the
        base class and the memory broker: the same as :meth:`presence_local`); ``None``
        when they must be read elsewhere: await :meth:`presence` instead."""
        return self.presence_local(room)

    async def presence(self, room: str) -> list[Any]:
        """Every process's entries of ``room``: this process's first, in the order added.
        A broker that cannot reach the others answers with this process's (and logs it);
        it never waits long."""
        return self.presence_local(room)

    async def presence_count(self, room: str) -> int:
        """How many entries ``room`` has in every process, without listing them."""
        entries = self._presence.get(room)
        return len(entries) if entries is not None else 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to whatever carries the messages; the memory broker needs nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks (a broker that publishes elsewhere first calls the
        :meth:`at_close` callbacks, then sends what is queued)."""

    def at_close(self, callback: Callable[[], object]) -> None:
        """Have ``callback`` called when :meth:`close` begins, before the last messages go
        out: for publishers that hold messages back (/live's coalesced presence pushes)."""
        self._at_close.append(callback)

    def _closing(self) -> None:
        callbacks, self._at_close = self._at_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("%r raised while the broker was closing", callback)


class _RoomHistory:
    __slots__ = ("emptied_at", "epoch", "history", "offset", "size", "subscribed")

    def __init__(self) -> None:
        self.epoch = os.urandom(4).hex()
        self.offset = 0
        #: (when, size, envelope), oldest first.
        self.history: collections.deque[tuple[float, int, Envelope]] = collections.deque()
        self.size = 0
        self.subscribed = False
        self.emptied_at = 0.0

    def keep(self, when: float, envelope: Envelope, count: int, size: int) -> None:
        cost = _size(envelope.payload)
        history = self.history
        history.append((when, cost, envelope))
        self.size += cost
        while len(history) > count or self.size > size:
            self.size -= history.popleft()[1]

    def forget_before(self, horizon: float) -> None:
        history = self.history
        while history and history[0][0] <= horizon:
            self.size -= history.popleft()[1]


class MemoryBroker(Broker):
    """The in-process broker: publish delivers at once, to this process only.

    Delivery is never re-entered: a message published while another is being
    delivered (by a member reacting to it) is queued and delivered right after,
    so every member sees the same order.

    Each room keeps its last ``history`` messages, at most ``history_bytes`` of
    them, for ``history_age`` seconds, for :meth:`since`. A message is numbered
    and kept even when the room has no member in this process (a channel whose
    only subscriber is reconnecting); a room that has no member and no new
    message for ``history_age`` is forgotten, and comes back with a new epoch.
    ``history=0`` keeps nothing (every room then gets a new epoch whenever it
    empties); ``publish(..., keep=False)`` keeps that message out, which also
    ends what could be resumed before it.

    Presence is the base class's: this process's entries, which are all there are;
    :meth:`presence_now` answers every time.
    """

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        history_age: float = DEFAULT_HISTORY_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.history = history
        self.history_bytes = history_bytes
        self.history_age = history_age
        self._clock = clock
        self._rooms: dict[str, _RoomHistory] = {}
        self._empty: dict[str, float] = {}  # empty rooms -> when they emptied, oldest first
        self._queue: collections.deque[Envelope] = collections.deque()
        self._delivering = False

    def subscribe(self, room: str) -> None:
        self._forget_expired()
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _RoomHistory()
        state.subscribed = True
        self._empty.pop(room, None)

    def unsubscribe(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        state.subscribed = False
        if self.history:  # its epoch, offset and history last history_age more
            self._idle(room, state)
        else:
            del self._rooms[room]
        self._forget_expired()

    def _idle(self, room: str, state: _RoomHistory) -> None:
        """``room`` has no member here: forget it ``history_age`` after now."""
        state.emptied_at = self._clock()
        self._empty.pop(room, None)  # (to the end: the dict is ordered by time)
        self._empty[room] = state.emptied_at

    def _forget_expired(self) -> None:
        if not self._empty:
            return
        horizon = self._clock() - self.history_age
        empty = self._empty
        while empty:  # oldest first: stop at the first that has not expired
            room = next(iter(empty))
            if empty[room] > horizon:
                break
            del empty[room]
            del self._rooms[room]

    def publish(self, room: str, payload: object, *, keep: bool = True) -> None:
        self._stamp(room, payload, keep)

    async def publish_numbered(self, room: str, payload: object) -> tuple[str, int]:
        return self.publish_numbered_now(room, payload)

    def publish_numbered_now(self, room: str, payload: object) -> tuple[str, int]:
        envelope = self._stamp(room, payload, True, create=True)
        assert envelope is not None
        return envelope.epoch, envelope.offset

    async def position(self, room: str) -> tuple[str, int]:
        state = self._state(room)
        return state.epoch, state.offset

    def _state(self, room: str) -> _RoomHistory:
        """``room``'s state, created (without members: expiring) if it has none."""
        state = self._rooms.get(room)
        if state is None:
            self._forget_expired()
            state = self._rooms[room] = _RoomHistory()
            self._idle(room, state)
        return state

    def _stamp(
        self, room: str, payload: object, keep: bool, *, create: bool = False
    ) -> Envelope | None:
        """Number ``payload`` in ``room``, keep it (``keep``), deliver it if the room has
        members here; ``None`` when there is nothing to number it for."""
        state = self._rooms.get(room)
        if state is None:
            if not (create or (keep and self.history)):
                return None  # nobody here and nothing to keep
            state = self._state(room)
        state.offset += 1
        envelope = Envelope(room, state.offset, payload, state.epoch)
        count = self.history
        if keep and count:
            state.keep(self._clock(), envelope, count, self.history_bytes)
        elif state.history:
            state.history.clear()  # a gap: nothing before it can be resumed
            state.size = 0
        if state.subscribed:
            self._queue.append(envelope)
            if not self._delivering:
                self._deliver_queued()
        else:
            self._idle(room, state)  # the history lasts history_age after its last message
        return envelope

    def _deliver_queued(self) -> None:
        deliver = self._deliver
        if deliver is None:
            raise RuntimeError("MemoryBroker.publish() before attach(): pass it to a Registry")
        self._delivering = True
        try:
            queue = self._queue
            while queue:
                envelope = queue.popleft()
                state = self._rooms.get(envelope.room)
                if state is not None and state.subscribed:  # (else: emptied meanwhile)
                    deliver(envelope)
        finally:
            self._delivering = False

    def since(self, room: str, epoch: str, offset: int) -> list[Envelope] | None:
        state = self._rooms.get(room)
        if state is None or state.epoch != epoch or not 0 <= offset <= state.offset:
            return None
        state.forget_before(self._clock() - self.history_age)
        if offset == state.offset:
            return []
        history = state.history
        if not history or history[0][2].offset > offset + 1:
            return None  # some of the missed messages are gone
        return [envelope for _, _, envelope in history if envelope.offset > offset]
