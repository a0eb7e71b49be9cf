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
