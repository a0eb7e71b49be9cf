"""tornws.client in-process: scripted and interactive output, close reporting."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from tornws.client import _Session, describe_close, format_message, run


class Terminal(io.StringIO):
    """A stdin that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.gen_test
async def test_client_scripted_echo(ws_url: str) -> None:
    """Piped input: each line is sent; replies are printed bare on stdout; exit 0."""
    out, err = io.StringIO(), io.StringIO()
    status = await run(
        f"{ws_url}/echo", stdin=io.StringIO("one\ntwo\n"), stdout=out, stderr=err, wait=0.3
    )
    assert status == 0
    assert out.getvalue() == "one\ntwo\n"
    assert f"Connected to {ws_url}/echo (subprotocol: none, extensions: none)." in err.getvalue()
    assert "Connection closed: 1000 (normal closure)." in err.getvalue()


@pytest.mark.gen_test
async def test_client_interactive_marks_incoming(ws_url: str) -> None:
    """On a terminal, incoming messages are shown as `< message` under a `> ` prompt."""
    out, err = io.StringIO(), io.StringIO()
    status = await run(f"{ws_url}/echo", stdin=Terminal("hey\n"), stdout=out, stderr=err, wait=0.3)
    assert status == 0
    assert out.getvalue().startswith("> ")  # a prompt before anything arrives
    assert "< hey\n> " in out.getvalue()


@pytest.mark.gen_test
async def test_client_reports_subprotocol_and_server_close(ws_url: str) -> None:
    """The negotiated subprotocol is shown on stderr; the chat's welcome on stdout."""
    out, err = io.StringIO(), io.StringIO()
    status = await run(
        f"{ws_url}/chat?nick=cli",
        subprotocols=["chat"],
        stdin=io.StringIO(""),
        stdout=out,
        stderr=err,
        wait=0.3,
    )
    assert status == 0
    assert "(subprotocol: chat, extensions: none)" in err.getvalue()
    assert out.getvalue() == "* you are cli in lobby; here: cli\n"


@pytest.mark.gen_test
async def test_client_server_close_with_error_code_exits_1(ws_url: str) -> None:
    """When the server closes with an error code (1009 here), it is shown and the exit is 1."""
    err = io.StringIO()
    line = "x" * (1024 * 1024 + 1)
    status = await run(
        f"{ws_url}/echo",
        stdin=io.StringIO(line + "\n"),
        stdout=io.StringIO(),
        stderr=err,
    )
    assert status == 1
    assert "Connection closed: 1009 (message too big), reason: message too big." in err.getvalue()


@pytest.mark.gen_test
async def test_client_refused_handshake_is_one_line(ws_url: str) -> None:
    """A refused handshake is one line with the status and the server's text; exit 1."""
    err = io.StringIO()
    status = await run(
        f"{ws_url}/chat",
        subprotocols=["nope"],
        stdin=io.StringIO(""),
        stdout=io.StringIO(),
        stderr=err,
    )
    assert status == 1
    assert err.getvalue() == (
        f"Handshake refused by {ws_url}/chat: HTTP 400 Bad Request: "
        "unsupported subprotocol nope; this endpoint supports: chat.json, chat\n"
    )


def test_client_stdin_reader_outlives_its_loop_quietly() -> None:
    """Input that ends after the session's loop closed is dropped, not an error in its thread."""
    loop = asyncio.new_event_loop()

    async def session() -> _Session:
        connection: Any = None  # read_stdin never touches it
        return _Session(connection, io.StringIO("late\n"), io.StringIO(), wait=0)

    late = loop.run_until_complete(session())
    loop.close()
    late.read_stdin()  # the thread's whole run; it raised "Event loop is closed"


def test_format_message_shows_binary_as_hex() -> None:
    """Binary messages print as hex, text as is."""
    assert format_message(b"\x00\xff") == "(binary) 00ff"
    assert format_message("plain") == "plain"


def test_describe_close_names_the_code() -> None:
    """Known codes are named; unknown ones are shown bare; a reason is appended."""
    assert describe_close(1009, "too big") == (
        "Connection closed: 1009 (message too big), reason: too big."
    )
    assert describe_close(4321, None) == "Connection closed: 4321."
    assert describe_close(None, None) == "Connection closed (no close code)."
