"""The ``tornws`` command as real subprocesses: serve, client, errors, shutdown."""

from __future__ import annotations

import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, free_port
from processes import Interactive, run, tornws_command


@pytest.fixture
def interactive() -> Iterator[Any]:
    started: list[Interactive] = []

    def start(*args: str) -> Interactive:
        process = Interactive(tornws_command(*args))
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_cli_scripted_echo(tornws_serve: Server) -> None:
    """`printf 'hi\\n' | tornws client ws://…/echo` prints the echo and exits 0."""
    result = run(tornws_command("client", f"{tornws_serve.url}/echo"), stdin="hi\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    assert "Connection closed: 1000 (normal closure)." in result.stderr


def test_cli_console_script_installed(tornws_serve: Server) -> None:
    """The `tornws` console script is the same command as `python -m tornws`."""
    script = Path(sys.executable).with_name("tornws")
    result = run([str(script), "client", f"{tornws_serve.url}/echo"], stdin="via script\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via script\n"


def test_cli_three_terminals_chat(tornws_serve: Server, interactive: Any) -> None:
    """Three `tornws client`s in /chat/lobby see each other's lines and join/leave notices."""
    url = f"{tornws_serve.url}/chat/lobby"
    ann = interactive("client", f"{url}?nick=ann")
    ann.out.expect("* you are ann in lobby")
    bob = interactive("client", f"{url}?nick=bob")
    bob.out.expect("* you are bob in lobby")
    ann.out.expect("* bob joined")
    cat = interactive("client", f"{url}?nick=cat")
    cat.out.expect("* you are cat in lobby; here: ann, bob, cat")
    ann.out.expect("* cat joined")
    bob.out.expect("* cat joined")
    ann.send("hello all")
    assert bob.out.expect("ann:") == "ann: hello all"
    assert cat.out.expect("ann:") == "ann: hello all"
    cat.send("hi ann")
    assert ann.out.expect("cat:") == "cat: hi ann"
    assert bob.out.expect("cat:") == "cat: hi ann"
    assert cat.finish() == 0
    ann.out.expect("* cat left")
    bob.out.expect("* cat left")
    assert "ann: hello all" not in ann.out.seen  # no echo of one's own lines


def test_cli_client_refused_connection(interactive: Any) -> None:
    """Nothing listening: one clear line on stderr, exit 1, no traceback."""
    result = run(tornws_command("client", f"ws://127.0.0.1:{free_port()}/echo"))
    assert result.returncode == 1
    assert result.stderr.startswith("Cannot connect to ws://127.0.0.1:")
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_client_404(tornws_serve: Server) -> None:
    """A handshake on an unknown path: one line naming HTTP 404, exit 1."""
    result = run(tornws_command("client", f"{tornws_serve.url}/nope"))
    assert result.returncode == 1
    assert result.stderr == f"Handshake refused by {tornws_serve.url}/nope: HTTP 404 Not Found\n"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/echo", "127.0.0.1:8765", ""])
def test_cli_client_bad_url(url: str) -> None:
    """A URL that is not ws:// or wss:// is a usage error (exit 2) that says so."""
    result = run(tornws_command("client", url))
    assert result.returncode == 2
    assert "URL must start with ws:// or wss://" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_client_subprotocol_and_header(tornws_serve: Server) -> None:
    """--subprotocol is offered and reported; --origin from another host gets 403."""
    ok = run(
        tornws_command("client", "--subprotocol", "chat.json", f"{tornws_serve.url}/chat?nick=j"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "(subprotocol: chat.json, extensions: none)" in ok.stderr
    assert '"type":"presence"' in ok.stdout
    refused = run(
        tornws_command("client", "--origin", "http://elsewhere.example", f"{tornws_serve.url}/echo")
    )
    assert refused.returncode == 1
    assert "HTTP 403" in refused.stderr


def test_cli_serve_sigterm_closes_connections_with_1001(
    interactive: Any, start_server: Any
) -> None:
    """SIGTERM: connected clients get close 1001 and the server exits 0."""
    port = free_port()
    server = start_server(tornws_command("serve", "--port", str(port)), port)
    client = interactive("client", f"ws://127.0.0.1:{port}/echo")
    client.err.expect("Connected to")
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(10)
    status, output = server.stop()
    assert status == 0, output
    assert "received SIGTERM" in output and "closing 1 connection(s)" in output
    assert "stopped" in output
    assert client.err.expect("Connection closed:") == (
        "Connection closed: 1001 (going away), reason: server shutting down."
    )
    assert client.process.wait(10) == 0


def test_cli_serve_logs_lifecycle(tornws_serve: Server) -> None:
    """serve logs where it listens, each open and close, and refusals with their reason."""
    run(tornws_command("client", f"{tornws_serve.url}/echo"), stdin="x\n")
    run(tornws_command("client", "--subprotocol", "bad", f"{tornws_serve.url}/chat"))
    _, output = tornws_serve.stop()
    assert f"listening on http://127.0.0.1:{tornws_serve.port}" in output
    assert "open /echo peer=127.0.0.1 subprotocol=None" in output
    assert "close /echo peer=127.0.0.1 code=1000" in output
    assert "refused /chat peer=127.0.0.1 status=400 reason='unsupported subprotocol bad" in output


def test_cli_serve_logs_each_connection_as_it_happens(tornws_serve: Server) -> None:
    """The open line is there while the connection is still open (lines are buffered
    for one event-loop turn at most), in the usual format; a warning too."""
    import re
    import time

    from websockets.sync.client import connect

    def line(text: str) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [line for line in tornws_serve.output.splitlines() if text in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} line within 5 s:\n{tornws_serve.output}")

    with connect(f"{tornws_serve.url}/echo") as client:
        opened = line("open /echo peer=127.0.0.1")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO tornws\.handlers: open /echo .*", opened
        ), opened
        client.send("still here")
        assert client.recv(5) == "still here"
    line("close /echo peer=127.0.0.1 code=1000")


def test_cli_serve_user_app(tmp_path: Path, start_server: Any) -> None:
    """`tornws serve --app module:factory` serves the user's own application."""
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent("""
        import tornado.web
        import tornws

        class Shout(tornws.WebSocketHandler):
            def on_message(self, message):
                self.write_message(message.upper())

        def make():
            return tornado.web.Application([(r"/shout", Shout)])
    """)
    )
    port = free_port()
    server = start_server(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from tornws.cli import main; sys.exit(main())",
            str(tmp_path),
            "serve",
            "--port",
            str(port),
            "--app",
            "myapp:make",
        ],
        port,
    )
    result = run(tornws_command("client", f"{server.url}/shout"), stdin="quiet\n")
    assert result.stdout == "QUIET\n"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "--app takes module:factory"),
        ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
        ("tornws:no_such_factory", "module 'tornws' has no 'no_such_factory'"),
        ("tornws:Registry", "Registry() returned Registry, not a tornado.web.Application"),
    ],
)
def test_cli_serve_bad_app_is_one_line(spec: str, message: str) -> None:
    """A wrong --app is exit 2 with one line that says what is wrong."""
    result = run(tornws_command("serve", "--port", str(free_port()), "--app", spec))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_serve_port_in_use(tornws_serve: Server) -> None:
    """A port already taken: one line, exit 2."""
    result = run(tornws_command("serve", "--port", str(tornws_serve.port)))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{tornws_serve.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_version_and_help() -> None:
    """--version names the version; --help lists the commands."""
    import tornws

    assert run(tornws_command("--version")).stdout == f"tornws {tornws.__version__}\n"
    helptext = run(tornws_command("--help")).stdout
    assert "serve" in helptext and "client" in helptext


def test_cli_serve_ping_interval(start_server: Any) -> None:
    """--ping-interval 0.2 pings every 0.2 s (a client sees the pings); a negative one is
    refused in one line, exit 2."""
    import asyncio

    import tornado.websocket

    port = free_port()
    start_server(tornws_command("serve", "--port", str(port), "--ping-interval", "0.2"), port)

    async def pings() -> int:
        seen: list[bytes] = []
        connection = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/echo")
        connection.on_ping = seen.append  # type: ignore[method-assign]
        await asyncio.sleep(0.7)
        connection.close()
        return len(seen)

    assert asyncio.run(pings()) >= 2
    refused = run(tornws_command("serve", "--port", "0", "--ping-interval", "-1"))
    assert refused.returncode == 2 and "--ping-interval must be 0 (off) or more" in refused.stderr
