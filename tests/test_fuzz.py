"""Fuzz: random bytes and malformed frames at a running ``tornws serve``.

After every example the server is still running, a control client that stayed
connected the whole time still gets its echo, and the server never logged an
error.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator

import pytest
from websockets.sync.client import ClientConnection, connect

from conftest import Server, free_port

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis")
st = hypothesis.strategies


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    running = Server(
        [sys.executable, "-m", "tornws", "serve", "--port", str(port), "--max-message-size", "64k"],
        port,
    )
    yield running
    code, log = running.stop()
    assert code == 0
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture(scope="module")
def control(server: Server) -> Iterator[ClientConnection]:
    url = f"{server.url}/chat/fuzz?nick=control"
    with connect(url, subprotocols=["chat.json"], open_timeout=5) as client:  # type: ignore[list-item]
        yield client


def upgrade(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame, valid or not: any flags and opcode, masked or not, any length encoding."""
    first = draw(st.integers(0, 255))
    masked = draw(st.booleans())
    payload = draw(st.binary(max_size=300))
    form = draw(st.sampled_from(["exact", "16", "64", "lie"]))
    length = len(payload)
    if form == "16":
        header = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, length)
    elif form == "64":
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, length)
    elif form == "lie":
        claimed = draw(st.integers(0, 2**63 - 1))
        header = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, claimed)
    else:
        header = bytes([first, (0x80 if masked else 0) | min(length, 125)])
        payload = payload[:125]
    mask = draw(st.binary(min_size=4, max_size=4)) if masked else b""
    return header + mask + payload


def check_server(server: Server, control: ClientConnection, garbage: bytes, path: str) -> None:
    sock = upgrade(server.port, path)
    try:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the server answers (close frame) or just closes
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may cut a connection that broke the protocol
    finally:
        sock.close()
    assert server.process.poll() is None, "the server exited"
    control.send(json.dumps({"type": "message", "text": "still there?"}))
    # The room also carries the fuzz clients' joins, lines and leaves: skip them.
    while True:
        event = json.loads(control.recv(timeout=5))
        if event.get("sender") == "control" and event["text"] == "still there?":
            break


SETTINGS = hypothesis.settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


@SETTINGS
@hypothesis.given(garbage=st.binary(min_size=1, max_size=2000))
def test_random_bytes(server: Server, control: ClientConnection, garbage: bytes) -> None:
    check_server(server, control, garbage, "/echo")


@SETTINGS
@hypothesis.given(sequence=st.lists(frames(), min_size=1, max_size=6))
def test_malformed_frames_in_a_chat_room(
    server: Server, control: ClientConnection, sequence: list[bytes]
) -> None:
    check_server(server, control, b"".join(sequence), "/chat/fuzz?nick=fuzzer")
