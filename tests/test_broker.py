"""tornws.broker: the memory broker's order and offsets, envelopes encoded once (no sockets)."""

from __future__ import annotations

import pytest

from tornws.broker import Envelope, MemoryBroker
from tornws.frames import Message


def attached() -> tuple[MemoryBroker, list[Envelope]]:
    broker = MemoryBroker()
    seen: list[Envelope] = []
    broker.attach(seen.append)
    return broker, seen


def test_memory_broker_numbers_each_room_from_one() -> None:
    """Offsets count from 1 per subscribed room, in publish order."""
    broker, seen = attached()
    broker.subscribe("a")
    broker.subscribe("b")
    for room, payload in [("a", 1), ("b", 2), ("a", 3)]:
        broker.publish(room, payload)
    assert [(e.room, e.offset, e.payload) for e in seen] == [("a", 1, 1), ("b", 1, 2), ("a", 2, 3)]


def test_memory_broker_drops_rooms_without_members() -> None:
    """Publishing to an unsubscribed room delivers nothing and keeps no state."""
    broker, seen = attached()
    broker.publish("nobody", "x")
    broker.subscribe("r")
    broker.unsubscribe("r")
    broker.publish("r", "y")
    assert seen == []


def test_memory_broker_queues_publishes_made_during_delivery() -> None:
    """A publish from inside a delivery is delivered after it, so all see one order."""
    broker = MemoryBroker()
    order: list[tuple[str, int]] = []

    def deliver(envelope: Envelope) -> None:
        order.append((f"start {envelope.payload}", envelope.offset))
        if envelope.payload == "first":
            broker.publish("r", "reaction")
        order.append((f"end {envelope.payload}", envelope.offset))

    broker.attach(deliver)
    broker.subscribe("r")
    broker.publish("r", "first")
    assert order == [
        ("start first", 1),
        ("end first", 1),
        ("start reaction", 2),
        ("end reaction", 2),
    ]


def test_broker_attaches_once() -> None:
    """A broker serves one registry; a second attach says so."""
    broker, _ = attached()
    with pytest.raises(RuntimeError, match="one broker per Registry"):
        broker.attach(print)


def test_envelope_encodes_once_per_codec() -> None:
    """Every member sharing a codec gets the same Message object; the codec runs once."""
    calls: list[int] = []

    class Upper:
        def encode(self, envelope: Envelope, /) -> Message | None:
            calls.append(envelope.offset)
            return Message(str(envelope.payload).upper())

    codec = Upper()
    envelope = Envelope("r", 7, "hi")
    first = envelope.encode(codec)
    assert first == Message("HI")
    assert all(envelope.encode(codec) is first for _ in range(100))
    assert calls == [7]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def history_broker(**options: float) -> tuple[MemoryBroker, list[Envelope], Clock]:
    clock = Clock()
    broker = MemoryBroker(clock=clock, **options)  # type: ignore[arg-type]
    seen: list[Envelope] = []
    broker.attach(seen.append)
    return broker, seen, clock


def test_since_returns_exactly_what_followed() -> None:
    broker, seen, _ = history_broker()
    broker.subscribe("r")
    for i in range(5):
        broker.publish("r", i)
    epoch = seen[0].epoch
    assert len(epoch) == 8 and {e.epoch for e in seen} == {epoch}
    assert broker.since("r", epoch, 2) == seen[2:]
    assert broker.since("r", epoch, 0) == seen
    assert broker.since("r", epoch, 5) == []  # up to date
    assert broker.since("r", epoch, 6) is None  # from the future
    assert broker.since("r", "other", 2) is None  # another epoch
    assert broker.since("elsewhere", epoch, 2) is None


def test_since_never_replays_part_of_what_was_missed() -> None:
    """Past the count bound or the age bound, ``since`` says None rather than a partial list."""
    broker, seen, clock = history_broker(history=3, history_age=10.0)
    broker.subscribe("r")
    for i in range(5):
        broker.publish("r", i)
    epoch = seen[0].epoch
    assert broker.since("r", epoch, 2) == seen[2:]  # 3, 4, 5: all kept
    assert broker.since("r", epoch, 1) is None  # 2 is gone
    clock.now += 11
    broker.publish("r", 5)
    assert broker.since("r", epoch, 5) == seen[5:]
    assert broker.since("r", epoch, 4) is None  # 5 is too old


def test_an_empty_room_keeps_its_history_for_the_history_age() -> None:
    """A client that was the room's last member can still resume; after the age, the
    room comes back with a new epoch and offsets from 1."""
    broker, seen, clock = history_broker(history_age=60.0)
    broker.subscribe("r")
    broker.publish("r", "a")
    broker.unsubscribe("r")
    epoch = seen[0].epoch
    clock.now += 30
    broker.subscribe("r")
    broker.publish("r", "b")
    assert (seen[1].epoch, seen[1].offset) == (epoch, 2)
    assert broker.since("r", epoch, 1) == [seen[1]]
    broker.unsubscribe("r")
    clock.now += 61
    broker.subscribe("other")  # any call forgets expired rooms
    broker.subscribe("r")
    broker.publish("r", "c")
    assert seen[2].epoch != epoch and seen[2].offset == 1
    assert broker.since("r", epoch, 2) is None


def test_history_zero_keeps_nothing() -> None:
    broker, seen, _ = history_broker(history=0)
    broker.subscribe("r")
    broker.publish("r", "a")
    assert broker.since("r", seen[0].epoch, 0) is None
    assert broker.since("r", seen[0].epoch, 1) == []
    broker.unsubscribe("r")
    broker.subscribe("r")
    broker.publish("r", "b")
    assert seen[1].offset == 1 and seen[1].epoch != seen[0].epoch


def test_history_is_bounded_in_bytes_and_unkept_messages_end_it() -> None:
    broker, seen, _ = history_broker(history_bytes=10_000)
    broker.subscribe("r")
    for _ in range(10):
        broker.publish("r", Message(b"x" * 3000))  # about 3 KB each: 3 fit
    epoch = seen[0].epoch
    assert broker.since("r", epoch, 7) == seen[7:]
    assert broker.since("r", epoch, 6) is None
    broker.publish("r", Message("big"), keep=False)
    broker.publish("r", Message("after"))
    assert broker.since("r", epoch, 10) is None  # 11 was not kept: no resume across it
    assert broker.since("r", epoch, 11) == seen[11:]


def test_memory_broker_presence_is_this_process_entries_at_once() -> None:
    """presence_add/remove keep entries per room in the order added; presence_now answers
    at once with all of them (a memory broker holds all there is), as do the awaitables;
    a key added again replaces its entry; removing what is not there is nothing."""
    import asyncio

    broker, _ = attached()
    broker.presence_add("r", "c-1", "ann")
    broker.presence_add("r", "c-2", {"id": "c-2", "user": None, "info": None})
    broker.presence_add("other", "c-1", "ann")
    broker.presence_add("r", "c-1", "ann2")
    assert broker.presence_now("r") == ["ann2", {"id": "c-2", "user": None, "info": None}]
    assert asyncio.run(broker.presence("r")) == broker.presence_now("r")
    assert asyncio.run(broker.presence_count("r")) == 2
    broker.presence_remove("r", "c-1")
    broker.presence_remove("r", "nobody")
    broker.presence_remove("nowhere", "c-1")
    assert broker.presence_now("r") == [{"id": "c-2", "user": None, "info": None}]
    broker.presence_remove("r", "c-2")
    assert broker.presence_now("r") == [] and asyncio.run(broker.presence_count("r")) == 0
    assert broker.presence_local("other") == ["ann"]
    assert broker._presence.keys() == {"other"}  # (an emptied room costs nothing)
