"""tornws.registry: rooms, membership and fan-out, with no sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tornws.broker import Broker, Envelope
from tornws.registry import Registry


class Member:
    """A member that records what it receives; ``on_deliver`` runs inside delivery."""

    def __init__(self, name: str, on_deliver: Any = None) -> None:
        self.name = name
        self.received: list[object] = []
        self.on_deliver = on_deliver

    def deliver(self, envelope: Envelope) -> None:
        self.received.append(envelope.payload)
        if self.on_deliver is not None:
            self.on_deliver(envelope)

    def __repr__(self) -> str:
        return f"<Member {self.name}>"


def test_registry_join_leave_members() -> None:
    """join adds once, leave removes once, members and rooms reflect both."""
    registry = Registry()
    a, b = Member("a"), Member("b")
    assert registry.join("r", a) is True
    assert registry.join("r", a) is False
    registry.join("r", b)
    registry.join("s", a)
    assert set(registry.members("r")) == {a, b}
    assert registry.rooms() == ["r", "s"]
    assert registry.rooms_of(a) == {"r", "s"}
    assert registry.leave("r", a) is True
    assert registry.leave("r", a) is False
    assert registry.members("r") == (b,)
    assert registry.rooms_of(a) == {"s"}
    assert registry.leave_all(a) == ["s"]
    assert registry.rooms_of(a) == frozenset()
    assert registry.rooms() == ["r"]
    assert registry.members("nowhere") == ()
    # Three rooms, then down to one and none, in any order.
    for room in ("x", "y", "z"):
        registry.join(room, a)
    assert registry.rooms_of(a) == {"x", "y", "z"}
    registry.leave("y", a)
    registry.leave("x", a)
    assert registry.rooms_of(a) == {"z"}
    registry.join("x", a)
    assert registry.leave_all(a) == ["x", "z"]
    assert registry.rooms_of(a) == frozenset() and registry.rooms() == ["r"]


def test_registry_publish_reaches_every_member_of_the_room_only() -> None:
    """A message published to a room reaches its members, not other rooms'."""
    registry = Registry()
    a, b, c = Member("a"), Member("b"), Member("c")
    registry.join("r", a)
    registry.join("r", b)
    registry.join("other", c)
    registry.publish("r", "hello")
    assert a.received == ["hello"]
    assert b.received == ["hello"]
    assert c.received == []


def test_registry_failing_member_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    """A member that raises is logged and removed; every other member still receives."""
    registry = Registry()

    def explode(envelope: Envelope) -> None:
        raise RuntimeError("boom")

    members = [Member(f"m{i}") for i in range(5)]
    bad = Member("bad", explode)
    for member in [*members[:2], bad, *members[2:]]:
        registry.join("r", member)
    with caplog.at_level(logging.ERROR, logger="tornws.registry"):
        registry.publish("r", 1)
    assert all(m.received == [1] for m in members)
    assert bad not in registry.members("r")
    assert "boom" in caplog.text and "removed from the room" in caplog.text
    registry.publish("r", 2)
    assert all(m.received == [1, 2] for m in members)
    assert bad.received == [1]


def test_registry_member_vanishing_mid_broadcast() -> None:
    """Members leaving and joining during a fan-out neither break it nor skip anyone."""
    registry = Registry()
    members = [Member(f"m{i}") for i in range(10)]
    newcomer = Member("new")

    def churn(envelope: Envelope) -> None:
        for member in members[5:]:
            registry.leave_all(member)
        registry.join("r", newcomer)

    members[0].on_deliver = churn
    for member in members:
        registry.join("r", member)
    registry.publish("r", "x")  # delivered to the snapshot taken when it started
    assert all(m.received == ["x"] for m in members)
    registry.publish("r", "y")
    assert set(registry.members("r")) == {*members[:5], newcomer}
    assert all(m.received == ["x", "y"] for m in members[:5])
    assert all(m.received == ["x"] for m in members[5:])
    assert newcomer.received == ["y"]


def test_registry_same_envelope_for_every_member() -> None:
    """Fan-out hands one envelope object to all members (so one encoding serves all)."""
    registry = Registry()
    seen: list[Envelope] = []

    class Recorder:
        def deliver(self, envelope: Envelope) -> None:
            seen.append(envelope)

    for _ in range(50):
        registry.join("r", Recorder())
    registry.publish("r", "x")
    assert len(seen) == 50
    assert all(envelope is seen[0] for envelope in seen)


def test_registry_subscribes_broker_to_rooms_with_local_members_only() -> None:
    """The broker hears subscribe on a room's first member and unsubscribe on its last."""
    calls: list[tuple[str, str]] = []

    class Recording(Broker):
        def publish(self, room: str, payload: object) -> None:
            calls.append(("publish", room))

        def subscribe(self, room: str) -> None:
            calls.append(("subscribe", room))

        def unsubscribe(self, room: str) -> None:
            calls.append(("unsubscribe", room))

    registry = Registry(Recording())
    a, b = Member("a"), Member("b")
    registry.join("r", a)
    registry.join("r", b)
    registry.publish("r", "x")
    registry.leave("r", a)
    registry.leave_all(b)
    assert calls == [("subscribe", "r"), ("publish", "r"), ("unsubscribe", "r")]


def test_registry_for_application_is_shared_and_checked() -> None:
    """One registry per application, kept in its settings; a wrong object is refused."""

    class App:
        def __init__(self, settings: dict[str, Any]) -> None:
            self.settings = settings

    app = App({})
    first = Registry.for_application(app)
    assert Registry.for_application(app) is first
    with pytest.raises(TypeError, match="not a tornws Registry"):
        Registry.for_application(App({"tornws.registry": "not a registry"}))


class Upper:
    """A codec: the payload upper-cased, ``None`` for payloads that are not ``str``."""

    def encode(self, envelope: Envelope) -> Any:
        return envelope.payload.upper() if isinstance(envelope.payload, str) else None


class Direct:
    """A member with the shortcut: the registry sends to it without calling ``deliver``."""

    def __init__(self, name: str, codec: Any, fail: bool = False) -> None:
        self.name = name
        self.codec = codec
        self.fail = fail
        self.received: list[object] = []

    def direct_delivery(self) -> tuple[Any, Any]:
        return self.codec, self

    def send_message(self, message: object) -> bool:
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        self.received.append(message)
        return True

    def deliver(self, envelope: Envelope) -> None:  # pragma: no cover - must not be called
        raise AssertionError("deliver called despite direct_delivery")

    def __repr__(self) -> str:
        return f"<Direct {self.name}>"


def test_registry_direct_members_get_one_encoding_per_codec(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Members offering direct_delivery get envelope.encode(codec), encoded once per codec;
    one that raises is logged and removed, the ones after it still receive; plain members
    are called as before; a codec answering None sends nothing."""
    registry = Registry()
    upper, other = Upper(), Upper()
    direct = [Direct(f"d{i}", upper, fail=(i == 2)) for i in range(5)]
    second = Direct("e", other)
    plain = Member("plain")
    for member in [*direct, second, plain]:
        registry.join("r", member)
    with caplog.at_level(logging.ERROR, logger="tornws.registry"):
        assert registry.deliver(Envelope("r", 1, "hi")) == 6
    assert "d2 broke" in caplog.text and "removed from the room" in caplog.text
    assert direct[2] not in registry.members("r")
    for member in [*direct[:2], *direct[3:], second]:
        assert member.received == ["HI"]
    assert plain.received == ["hi"]
    registry.deliver(Envelope("r", 2, 42))  # Upper gives None: the direct members get nothing
    assert direct[0].received == ["HI"] and plain.received == ["hi", 42]


def test_registry_delivers_in_join_order() -> None:
    """A fan-out goes through the members in the order they joined (rejoining goes last)."""
    registry = Registry()
    order: list[str] = []
    members = [Member(f"m{i}", lambda e, i=i: order.append(f"m{i}")) for i in range(50)]
    for member in reversed(members):
        registry.join("r", member)
    registry.leave("r", members[10])
    registry.join("r", members[10])
    registry.publish("r", "x")
    expected = [f"m{i}" for i in reversed(range(50)) if i != 10] + ["m10"]
    assert order == expected
    assert [m.name for m in registry.members("r")] == expected  # type: ignore[attr-defined]


def test_registry_asks_for_direct_delivery_once_per_join() -> None:
    """direct_delivery() is asked when a member joins, not again when others come and go
    (a room of thousands is not walked member by member on each change)."""
    registry = Registry()
    asked: list[str] = []

    class Counting(Direct):
        def direct_delivery(self) -> tuple[Any, Any]:
            asked.append(self.name)
            return super().direct_delivery()

    first, second = Counting("a", Upper()), Counting("b", Upper())
    registry.join("r", first)
    registry.deliver(Envelope("r", 1, "x"))
    registry.join("r", second)
    registry.deliver(Envelope("r", 2, "y"))
    registry.leave("r", second)
    registry.deliver(Envelope("r", 3, "z"))
    assert asked == ["a", "b"]
    assert first.received == ["X", "Y", "Z"] and second.received == ["Y"]


class Lines:
    """A codec like the plain-text chat's: no echo of a member's own payloads."""

    echo_own = False

    def encode(self, envelope: Envelope) -> Any:
        return f"line {envelope.payload.text}"


class Said:
    def __init__(self, text: str, origin: str) -> None:
        self.text, self.origin = text, origin


def test_registry_direct_path_skips_the_origin_for_codecs_without_echo() -> None:
    """For a codec with ``echo_own = False`` the member whose connection_id is the
    payload's origin gets nothing; the other members
    get the message, each once."""
    registry = Registry()
    lines, upper = Lines(), Upper()
    members = [Direct(f"t{i}", lines) for i in range(4)] + [Direct("u", upper)]
    for i, member in enumerate(members):
        member.connection_id = f"c{i}"  # type: ignore[attr-defined]
        registry.join("r", member)
    for origin in ("c0", "c2", "c3", "elsewhere", ""):
        for member in members:
            member.received.clear()
        registry.deliver(Envelope("r", 1, Said("hi", origin)))
        assert [len(m.received) for m in members[:4]] == [
            0 if origin == f"c{i}" else 1 for i in range(4)
        ]


def test_registry_update_moves_a_member_between_paths() -> None:
    """``update`` asks a member's direct_delivery() again: a member that answered None
    (called one by one) is on the direct path afterwards, in every room it is in."""
    registry = Registry()

    class Late(Direct):
        ready = False

        def direct_delivery(self) -> tuple[Any, Any] | None:  # type: ignore[override]
            return super().direct_delivery() if self.ready else None

        def deliver(self, envelope: Envelope) -> None:
            self.received.append(("slow", envelope.payload))

    late = Late("late", Upper())
    registry.join("a", late)
    registry.join("b", late)
    registry.deliver(Envelope("a", 1, "x"))
    late.ready = True
    registry.update(late)
    registry.deliver(Envelope("a", 2, "y"))
    registry.deliver(Envelope("b", 1, "z"))
    assert late.received == [("slow", "x"), "Y", "Z"]
