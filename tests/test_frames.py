"""tornws.frames: messages encoded once, close codes, frame encoding and parsing (no sockets)."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import pytest

from tornws.connection import Reader
from tornws.exceptions import ProtocolError
from tornws.frames import CloseCode, Message, Opcode, encode_frame, is_valid_close_code


def test_message_text_is_encoded_once_to_utf8() -> None:
    """A str makes a text message whose payload is its UTF-8 bytes."""
    message = Message("héllo")
    assert not message.binary
    assert message.payload == "héllo".encode()
    assert message.data == "héllo"
    assert len(message) == 6


def test_message_bytes_like_makes_binary() -> None:
    """bytes, bytearray and memoryview make binary messages with the same payload."""
    for data in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        message = Message(data)
        assert message.binary
        assert message.data == b"\x00\xff"


def test_message_equality_includes_type() -> None:
    """A text and a binary message with the same bytes differ."""
    assert Message("a") == Message("a")
    assert Message("a") != Message(b"a")
    assert len({Message("a"), Message("a"), Message(b"a")}) == 2


def test_close_codes_have_rfc_values() -> None:
    """The close codes users meet carry RFC 6455's numbers."""
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.UNSUPPORTED_DATA == 1003
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.SERVICE_RESTART == 1012


# Encoding and parsing (pure, byte by byte).


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    masked: bool = True,
) -> bytes:
    """A frame as a client sends it (masked with a random key unless told)."""
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, bit | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not masked:
        return header + payload
    key = mask if mask is not None else os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self.events.append(("pong", payload))

    def on_close_frame(self, code: int | None, reason: str) -> None:
        self.events.append(("close", (code, reason)))


def drain(reader: Reader, recorder: Recorder) -> None:
    """Take every complete message, in order with the control frames met on the way."""
    while (message := reader.next_message()) is not None:
        recorder.events.append(("data", message))


def read(data: bytes, **options: Any) -> list[tuple[str, Any]]:
    recorder = Recorder()
    reader = Reader(recorder, max_size=options.pop("max_size", 1 << 20), **options)
    reader.feed(data)
    drain(reader, recorder)
    return recorder.events


@pytest.mark.parametrize(("size", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_encode_frame_length_forms(size: int, header: int) -> None:
    """Lengths use the 7-bit, 16-bit or 64-bit form at the RFC's boundaries."""
    frame = encode_frame(Opcode.BINARY, b"x" * size)
    assert len(frame) == header + size
    assert frame[0] == 0x82


def test_message_frame_is_built_once_and_shared() -> None:
    """A Message's frame is the same bytes object however often it is read."""
    message = Message("hi")
    assert message.frame == b"\x81\x02hi"
    assert message.frame is message.frame


def test_reader_any_split_gives_the_same_messages() -> None:
    """Feeding one byte at a time yields exactly what feeding all at once yields."""
    stream = (
        client_frame(Opcode.TEXT, "héllo".encode())
        + client_frame(Opcode.BINARY, b"\x00" * 300)
        + client_frame(Opcode.TEXT, b"frag", fin=False)
        + client_frame(Opcode.PING, b"p")
        + client_frame(Opcode.CONTINUATION, b"ment")
        + client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    whole = read(stream)
    recorder = Recorder()
    reader = Reader(recorder, max_size=1 << 20)
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        drain(reader, recorder)
    assert (
        recorder.events
        == whole
        == [
            ("data", "héllo"),
            ("data", b"\x00" * 300),
            ("ping", b"p"),
            ("data", "fragment"),
            ("close", (1000, "bye")),
        ]
    )


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(Opcode.TEXT, b"x", masked=False), 1002),
        (client_frame(Opcode.TEXT, b"x", rsv=0x40), 1002),
        (client_frame(Opcode.TEXT, b"x", rsv=0x20), 1002),
        (client_frame(0x3, b"x"), 1002),
        (client_frame(0xB, b"x"), 1002),
        (client_frame(Opcode.PING, b"x", fin=False), 1002),
        (client_frame(Opcode.PING, b"x" * 126), 1002),
        (client_frame(Opcode.CONTINUATION, b"x"), 1002),
        (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"), 1002),
        (client_frame(Opcode.TEXT, b"\xff\xfe"), 1007),
        (client_frame(Opcode.CLOSE, b"\x03"), 1002),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1005)), 1002),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 2999)), 1002),
        (client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
    ids=[
        "unmasked",
        "rsv1-without-deflate",
        "rsv2",
        "opcode-3",
        "opcode-11",
        "fragmented-ping",
        "long-ping",
        "lone-continuation",
        "text-inside-fragments",
        "invalid-utf8",
        "close-1-byte",
        "close-1005",
        "close-2999",
        "close-reason-utf8",
    ],
)
def test_reader_protocol_errors_carry_the_close_code(frame: bytes, code: int) -> None:
    """Each violation of RFC 6455 raises ProtocolError with the code to fail with."""
    with pytest.raises(ProtocolError) as info:
        read(frame)
    assert info.value.code == code


def test_reader_refuses_oversize_from_the_header_alone() -> None:
    """A frame declaring more than max_size fails at once, before its payload arrives."""
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + b"\x00" * 4
    with pytest.raises(ProtocolError) as info:
        read(header, max_size=1000)
    assert info.value.code == 1009


def test_reader_refuses_oversize_fragments_in_total() -> None:
    """Fragments count together against max_size."""
    frames = client_frame(Opcode.BINARY, b"x" * 600, fin=False) + client_frame(
        Opcode.CONTINUATION, b"x" * 600
    )
    with pytest.raises(ProtocolError) as info:
        read(frames, max_size=1000)
    assert info.value.code == 1009


def test_reader_fails_invalid_utf8_in_a_fragment_before_the_end() -> None:
    """Invalid UTF-8 in the first fragment fails without waiting for the last one."""
    with pytest.raises(ProtocolError) as info:
        read(client_frame(Opcode.TEXT, b"ok\xff", fin=False))
    assert info.value.code == 1007


def test_reader_utf8_split_across_fragments_is_fine() -> None:
    """A character split between two fragments is valid text."""
    euro = "€".encode()
    frames = client_frame(Opcode.TEXT, euro[:1], fin=False) + client_frame(
        Opcode.CONTINUATION, euro[1:]
    )
    assert read(frames) == [("data", "€")]


def test_reader_close_codes() -> None:
    """Registered and private codes are valid; reserved and unassigned ones are not."""
    assert all(is_valid_close_code(c) for c in (1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999))
    assert not any(is_valid_close_code(c) for c in (0, 999, 1004, 1005, 1006, 1015, 2000, 5000))
    assert read(client_frame(Opcode.CLOSE, b"")) == [("close", (None, ""))]


def test_reader_gives_one_message_at_a_time_and_keeps_the_rest() -> None:
    """Messages come one per next_message(), in order; what follows stays unparsed
    (a ping after the first message is not answered before the second is asked for)."""
    recorder = Recorder()
    reader = Reader(recorder, max_size=1 << 20)
    stream = client_frame(Opcode.TEXT, b"0") + client_frame(Opcode.PING, b"p")
    stream += client_frame(Opcode.TEXT, b"1") + client_frame(Opcode.TEXT, b"2")
    reader.feed(stream)
    assert reader.next_message() == "0"
    assert recorder.events == [] and reader.buffered == len(stream) - 7
    assert reader.next_message() == "1"
    assert recorder.events == [("ping", b"p")]
    assert reader.next_message() == "2"
    assert reader.next_message() is None and reader.buffered == 0


def test_reader_reads_nothing_after_a_close_frame() -> None:
    """A message after the peer's close frame is neither returned nor kept."""
    recorder = Recorder()
    reader = Reader(recorder, max_size=1 << 20)
    reader.feed(
        client_frame(Opcode.CLOSE, struct.pack("!H", 1000)) + client_frame(Opcode.TEXT, b"x")
    )
    assert reader.next_message() is None
    reader.feed(client_frame(Opcode.TEXT, b"y"))
    assert reader.next_message() is None
    assert recorder.events == [("close", (1000, ""))] and reader.buffered == 0


def test_reader_inflates_compressed_messages() -> None:
    """With permessage-deflate negotiated, RSV1 messages are inflated (also when fragmented)."""
    compressor = zlib.compressobj(wbits=-15)
    body = compressor.compress(b"hello hello hello") + compressor.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]

    def inflate(data: bytes) -> bytes:
        return zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff")

    assert read(client_frame(Opcode.TEXT, body, rsv=0x40), inflate=inflate) == [
        ("data", "hello hello hello")
    ]
    split = client_frame(Opcode.TEXT, body[:5], rsv=0x40, fin=False) + client_frame(
        Opcode.CONTINUATION, body[5:]
    )
    assert read(split, inflate=inflate) == [("data", "hello hello hello")]
    with pytest.raises(ProtocolError) as info:
        read(client_frame(Opcode.TEXT, b"\xff\xff\xff", rsv=0x40), inflate=inflate)
    assert info.value.code == 1007
