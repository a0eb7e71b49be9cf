"""The connection core, fed bytes and time: no socket, no event loop, no clock."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from test_frames import client_frame

from tornws.connection import Connection, State
from tornws.frames import CloseCode, Opcode, encode_close, encode_frame
from tornws.stats import Stats


class Peer:
    """The delegate: records every event and every byte the core hands out (and, with
    :func:`receive`, every message it gives back)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.sent = b""

    def send_frame(self, frame: bytes) -> None:
        self.sent += frame

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self.events.append(("pong", payload))

    def on_closing(self) -> None:
        self.events.append(("closing", None))

    def on_closed(self) -> None:
        self.events.append(("closed", None))

    def describe(self) -> str:
        return "/test peer=nowhere"

    def take(self) -> bytes:
        sent, self.sent = self.sent, b""
        return sent


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    """What the server sends to close (unmasked)."""
    return encode_frame(Opcode.CLOSE, encode_close(code, reason))


def core(**options: Any) -> tuple[Connection, Peer]:
    peer = Peer()
    options.setdefault("max_size", 1024)
    return Connection(peer, **options), peer


def receive(connection: Connection, peer: Peer, data: bytes, now: float) -> None:
    """Feed ``data`` and take every message the core gives back, as a transport does."""
    message = connection.receive(data, now)
    while message is not None:
        peer.events.append(("message", message))
        message = connection.next_message()


def text(data: str, **kwargs: Any) -> bytes:
    return client_frame(Opcode.TEXT, data.encode(), **kwargs)


def test_connection_delivers_messages_split_anywhere() -> None:
    """Text and binary messages arrive whole and in order, however the bytes are split."""
    connection, peer = core()
    stream = text("héllo") + client_frame(Opcode.BINARY, b"\x00\xff") + text("")
    for i in range(len(stream)):  # one byte at a time
        receive(connection, peer, stream[i : i + 1], now=0.0)
    assert peer.events == [("message", "héllo"), ("message", b"\x00\xff"), ("message", "")]
    assert connection.messages_in == 3 and connection.state is State.OPEN and peer.sent == b""


def test_connection_assembles_fragments_and_answers_pings_between_them() -> None:
    """A fragmented text (a multi-byte character split across fragments) is one message;
    a ping between its fragments is answered at once with the same payload."""
    data = "añb".encode()
    stream = (
        client_frame(Opcode.TEXT, data[:2], fin=False)
        + client_frame(Opcode.PING, b"hb")
        + client_frame(Opcode.CONTINUATION, data[2:])
    )
    connection, peer = core()
    receive(connection, peer, stream, now=0.0)
    assert peer.events == [("ping", b"hb"), ("message", "añb")]
    assert peer.sent == encode_frame(Opcode.PONG, b"hb")


def test_connection_answers_the_peers_close_with_its_code() -> None:
    """Closing handshake started by the peer: the same code goes back, the state is
    CLOSED, the code and reason are kept, and nothing after the close is delivered."""
    connection, peer = core()
    payload = struct.pack("!H", 4001) + b"bye"
    receive(connection, peer, client_frame(Opcode.CLOSE, payload) + text("late"), now=0.0)
    assert peer.take() == close_frame(4001)
    assert connection.state is State.CLOSED
    assert (connection.close_code, connection.close_reason) == (4001, "bye")
    assert peer.events == [("closing", None), ("closed", None)]
    receive(connection, peer, text("later"), now=0.0)
    assert peer.events == [("closing", None), ("closed", None)] and peer.sent == b""


def test_connection_closing_handshake_started_here() -> None:
    """close() sends a close frame and waits (CLOSING); messages that arrive meanwhile
    are not delivered; the peer's close ends it without a second close frame."""
    connection, peer = core()
    connection.close(CloseCode.GOING_AWAY, "restart")
    assert peer.take() == close_frame(1001, "restart")
    assert connection.state is State.CLOSING
    connection.close(1000)  # once only
    assert peer.take() == b""
    receive(connection, peer, text("in flight") + client_frame(Opcode.CLOSE, b"\x03\xe9"), now=0.0)
    assert peer.events == [("closing", None), ("closed", None)]
    assert connection.state is State.CLOSED and peer.sent == b""
    assert connection.close_code == 1001


def test_connection_close_with_a_reason_only_means_1000() -> None:
    connection, peer = core()
    connection.close(reason="done")
    assert peer.take() == close_frame(1000, "done")


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (client_frame(Opcode.TEXT, b"x", masked=False), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.TEXT, b"\xff\xfe"), CloseCode.INVALID_DATA),
        (client_frame(Opcode.TEXT, b"\xc3", fin=False), None),  # fine so far: more may come
        (client_frame(Opcode.BINARY, b"x" * 1025), CloseCode.MESSAGE_TOO_BIG),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CLOSE, b"\x03\xe8\xff"), CloseCode.INVALID_DATA),
        (client_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),
        (client_frame(0x3, b"x"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.TEXT, b"x", rsv=0x40), CloseCode.PROTOCOL_ERROR),
    ],
)
def test_connection_fails_with_the_code_of_the_violation(stream: bytes, code: int | None) -> None:
    """What the peer gets wrong fails the connection: a close frame with 1002, 1007 or
    1009, then CLOSED at once (RFC 6455 7.1.7); nothing is delivered."""
    connection, peer = core()
    receive(connection, peer, stream, now=0.0)
    if code is None:
        assert connection.state is State.OPEN and peer.sent == b""
        return
    sent = peer.take()
    assert sent[0] == 0x88 and int.from_bytes(sent[2:4], "big") == code
    assert connection.state is State.CLOSED
    assert peer.events == [("closing", None), ("closed", None)]


def test_connection_keepalive_pings_and_closes_1011_when_the_pong_is_late() -> None:
    """check(now) sends a ping every interval and says when to look again; a pong in
    time is measured; a pong later than the timeout closes with 1011."""
    stats = Stats()
    connection, peer = core(ping_interval=20.0, ping_timeout=10.0, now=100.0, stats=stats)
    assert connection.check(100.0) == 120.0
    assert peer.sent == b""
    assert connection.check(120.0) == 130.0  # pinged: its pong is due by 130
    assert peer.take() == encode_frame(Opcode.PING, b"")
    receive(connection, peer, client_frame(Opcode.PONG, b""), now=120.5)
    assert stats.ping_rtt_seconds.count == 1 and stats.ping_rtt_seconds.sum == 0.5
    assert connection.check(130.0) == 140.0  # answered: next ping at 140
    assert connection.check(140.0) == 150.0
    assert peer.take() == encode_frame(Opcode.PING, b"")
    assert connection.check(149.9) == 150.0
    assert connection.check(150.0) is None  # no pong: closed
    assert peer.take() == close_frame(1011, "keepalive ping timeout")
    assert connection.state is State.CLOSING


def test_connection_keepalive_with_a_timeout_longer_than_the_interval() -> None:
    """While a ping awaits its pong, no new ping is sent and check() waits for the
    timeout (it never asks to be called again at once)."""
    connection, peer = core(ping_interval=5.0, ping_timeout=12.0)
    assert connection.check(5.0) == 17.0
    peer.take()
    assert connection.check(10.0) == 17.0 and peer.sent == b""
    assert connection.check(17.0) is None and connection.state is State.CLOSING


def test_connection_idle_timeout_counts_messages_not_pings() -> None:
    """No message for idle_timeout seconds closes with 1000 "idle timeout"; a message
    moves the deadline, a ping does not."""
    stats = Stats()
    connection, peer = core(idle_timeout=30.0, stats=stats)
    assert connection.check(0.0) == 30.0
    receive(connection, peer, text("hi"), now=10.0)
    assert connection.check(30.0) == 40.0
    receive(connection, peer, client_frame(Opcode.PING, b""), now=35.0)
    peer.take()
    assert connection.check(40.0) is None
    assert peer.take() == close_frame(1000, "idle timeout")
    assert stats.idle_closes == 1


def test_connection_rate_limit_allows_bursts_then_fails_1008() -> None:
    """rate_limit=(3, 1.0): a burst of three passes, a fourth right after fails the
    connection with 1008; a second later the bucket has refilled."""
    stats = Stats()
    connection, peer = core(rate_limit=(3, 1.0), stats=stats)
    receive(connection, peer, text("a") + text("b") + text("c"), now=0.0)
    receive(connection, peer, text("d") + text("e") + text("f"), now=1.0)
    assert [e[1] for e in peer.events] == ["a", "b", "c", "d", "e", "f"]
    receive(connection, peer, text("g"), now=1.1)
    assert peer.take() == close_frame(1008, "message rate limit")
    assert connection.state is State.CLOSED and stats.rate_limited == 1
    assert peer.events[-1] == ("closed", None)


def test_connection_holds_what_follows_until_asked() -> None:
    """receive() gives back the first message only; the rest waits, unparsed, until
    next_message() is called (a handler still busy holds the next messages back), and
    feed() adds to it without parsing."""
    connection, peer = core()
    assert connection.receive(text("first") + text("second"), now=0.0) == "first"
    connection.feed(client_frame(Opcode.PING, b"p") + text("third"))
    assert peer.sent == b"" and peer.events == []
    assert connection.next_message() == "second"
    assert connection.next_message() == "third"
    assert peer.take() == encode_frame(Opcode.PONG, b"p")
    assert connection.next_message() is None and connection.messages_in == 3


def test_connection_lost_is_closed_without_a_close_frame() -> None:
    connection, peer = core()
    connection.lost()
    assert connection.state is State.CLOSED and peer.sent == b"" and peer.events == []
    connection.close(1000)
    assert peer.sent == b""


def test_connection_keepalive_without_a_timeout_pings_every_interval() -> None:
    """ping_timeout 0 (no timeout): a ping every interval, pong or not, and check() never
    asks to be called again at once."""
    connection, peer = core(ping_interval=20.0, ping_timeout=0.0)
    assert connection.check(20.0) == 40.0
    assert connection.check(30.0) == 40.0
    assert connection.check(40.0) == 60.0
    assert peer.take() == encode_frame(Opcode.PING, b"") * 2
    assert connection.state is State.OPEN
