"""The chat page in a real Chromium (Debian's), driven by Playwright, against ``tornws serve``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; another path via
``TORNWS_CHROMIUM``) and the ``playwright`` package; skips without them, except
under ``TORNWS_TEST_REQUIRE_ALL=1`` (CI). Screenshots go to ``TORNWS_SCREENSHOT_DIR``
(the README's is ``docs/chat.png``), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, Server, free_port
from processes import Interactive, tornws_command
from services import REDIS, Redis

CHROMIUM = os.environ.get("TORNWS_CHROMIUM", "/usr/bin/chromium")
#: Chromium on a machine with no network and no display (shared/DESIGN.md §6).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile; every page's console errors fail the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    context.on("console", lambda message: message.type == "error" and errors.append(message.text))
    context.errors = errors
    yield context
    context.close()


def serve(port: int) -> Server:
    return Server([sys.executable, "-m", "tornws", "serve", "--port", str(port)], port)


@pytest.fixture
def server() -> Iterator[Server]:
    running = serve(free_port())
    yield running
    running.stop()


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def open_chat(context: Any, server: Server, room: str, nick: str) -> Any:
    """A page that chose ``nick`` and ``room`` in the form and is connected."""
    page = context.new_page()
    page.goto(f"{base(server)}/")
    page.fill("#nick", nick)
    page.fill("#room", room)
    page.click("#join button[type=submit]")
    expect(page.locator("#status")).to_have_text("connected")
    return page


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")
    expect(page.locator("#text")).to_have_value("")


def lines(page: Any) -> Any:
    """The chat lines (not notices) as ``nick: text``."""
    return page.locator("#messages li.message")


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TORNWS_SCREENSHOT_DIR") or tmp_path)
    path = folder / name
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_two_pages_chat_and_see_each_other(context: Any, server: Server, tmp_path: Path) -> None:
    ann = open_chat(context, server, "tea", "ann")
    expect(ann.locator("#members li")).to_have_text(["ann"])
    bob = open_chat(context, server, "tea", "bob")

    expect(ann.locator("#members li")).to_have_text(["ann", "bob"])
    expect(bob.locator("#members li")).to_have_text(["ann", "bob"])
    expect(ann.locator("#messages li.notice span").last).to_have_text("bob joined")
    expect(ann.locator("#count")).to_have_text("2")

    say(ann, "hello bob")
    say(bob, "hi ann, tea?")
    for page in (ann, bob):
        expect(lines(page).locator(".nick")).to_have_text(["ann", "bob"])
        expect(lines(page).locator(".text")).to_have_text(["hello bob", "hi ann, tea?"])
    # Your own lines come back from the server (the acknowledgement), marked as yours.
    expect(ann.locator("#messages li.own .text")).to_have_text(["hello bob"])
    expect(bob.locator("#messages li.own .text")).to_have_text(["hi ann, tea?"])
    # The page's address now names the room, a link that joins it.
    assert bob.url.endswith("/?room=tea&nick=bob")
    screenshot(ann, "chat.png", tmp_path)

    bob.click("#leave")
    expect(bob.locator("#join")).to_be_visible()
    expect(ann.locator("#members li")).to_have_text(["ann"])
    expect(ann.locator("#messages li.notice span").last).to_have_text("bob left")
    assert context.errors == []


def test_terminal_client_and_page_see_each_others_lines(context: Any, server: Server) -> None:
    page = open_chat(context, server, "mixed", "ann")
    terminal = Interactive(tornws_command("client", f"{server.url}/chat/mixed?nick=term"))
    try:
        terminal.out.expect("* you are term in mixed; here: ann, term")
        expect(page.locator("#members li")).to_have_text(["ann", "term"])

        terminal.send("hello from a terminal")
        expect(lines(page).locator(".nick")).to_have_text(["term"])
        expect(lines(page).locator(".text")).to_have_text(["hello from a terminal"])

        say(page, "hello from a browser")
        terminal.out.expect("ann: hello from a browser")

        assert terminal.finish() == 0
        expect(page.locator("#members li")).to_have_text(["ann"])
    finally:
        terminal.kill()
    assert context.errors == []


def test_html_in_messages_and_nicks_is_shown_as_text(context: Any, server: Server) -> None:
    payload = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    nick = "<b>mallory</b>"
    victim = open_chat(context, server, "xss", "ann")
    attacker = context.new_page()
    attacker.goto(f"{base(server)}/?room=xss&nick=%3Cb%3Emallory%3C%2Fb%3E")
    expect(attacker.locator("#status")).to_have_text("connected")
    say(attacker, payload)

    expect(lines(victim).locator(".text")).to_have_text([payload])
    expect(lines(victim).locator(".nick")).to_have_text([nick])
    expect(victim.locator("#members li")).to_have_text([nick, "ann"])
    assert victim.locator("#messages img, #messages script, #messages b").count() == 0
    assert victim.locator("#members b").count() == 0
    assert victim.evaluate("window.pwned") is None
    assert context.errors == []


def test_page_reconnects_after_a_server_restart(context: Any) -> None:
    port = free_port()
    first = serve(port)
    try:
        page = open_chat(context, first, "restart", "ann")
        assert first.stop()[0] == 0
    finally:
        first.stop()
    # Lost: the page says so and keeps trying, with the form closed to input.
    expect(page.locator("#status")).to_have_attribute("data-status", "reconnecting")
    expect(page.locator("#status")).to_contain_text("reconnecting")
    expect(page.locator("#text")).to_be_disabled()
    expect(page.locator("#messages li.notice span").last).to_have_text(
        "connection lost; reconnecting"
    )

    second = serve(port)
    try:
        expect(page.locator("#status")).to_have_text("connected", timeout=20_000)
        expect(page.locator("#text")).to_be_enabled()
        # A new process has a new history: the page asked to resume, and is told it cannot.
        notices = page.locator("#messages li.notice span")
        expect(notices.last).to_have_text("you joined as ann")
        expect(notices.nth(-2)).to_have_text("messages sent while you were away may be missing")
        bob = open_chat(context, second, "restart", "bob")
        expect(page.locator("#members li")).to_have_text(["ann", "bob"])
        say(bob, "welcome back")
        expect(lines(page).locator(".text")).to_have_text(["welcome back"])
    finally:
        second.stop()
    # While the server was away the browser logged failed connection attempts; nothing else.
    assert all("WebSocket connection" in error for error in context.errors), context.errors


def test_page_resumes_after_a_lost_connection(context: Any, server: Server) -> None:
    """The page's connection drops; meanwhile bob writes; on reconnecting the page asks for
    what it missed (since=) and shows it, once, in order."""
    ann = open_chat(context, server, "away", "ann")
    bob = open_chat(context, server, "away", "bob")
    say(ann, "before")
    expect(lines(bob).locator(".text")).to_have_text(["before"])
    expect(lines(ann).locator(".text")).to_have_text(["before"])  # back: since= is after it
    # Drop ann's connection, with a reconnect delay long enough for bob to talk meanwhile.
    ann.evaluate("window.tornwsChat.minDelay = 4000; window.tornwsChat.socket.close()")
    expect(ann.locator("#status")).to_have_attribute("data-status", "reconnecting")
    say(bob, "while you were away")
    say(bob, "and again")
    expect(ann.locator("#status")).to_have_text("connected", timeout=15_000)
    expect(lines(ann).locator(".text")).to_have_text(["before", "while you were away", "and again"])
    notices = ann.locator("#messages li.notice span")
    expect(notices.last).to_have_text("you joined as ann")
    expect(notices.nth(-2)).to_have_text("3 missed while away")  # own leave + 2 lines
    expect(ann.locator("#members li")).to_have_text(["ann", "bob"])
    say(bob, "live")
    expect(lines(ann).locator(".text")).to_have_text(
        ["before", "while you were away", "and again", "live"]
    )
    assert context.errors == []


def test_page_resumes_across_a_server_restart_with_redis(context: Any) -> None:
    """Two tornws processes on one Redis; the page's process restarts while someone on the
    other process writes; the page comes back to the new process and shows what it missed."""
    if REDIS is None:
        pytest.skip("no redis-server (apt-get install redis-server)")
    pytest.importorskip("redis", reason="pip install 'tornws[redis]'")
    redis = Redis()
    port_a, port_b = free_port(), free_port()

    def start(port: int) -> Server:
        command = [sys.executable, "-m", "tornws", "serve", "--port", str(port)]
        return Server([*command, "--broker", redis.url], port)

    first, other = start(port_a), start(port_b)
    terminal = Interactive(tornws_command("client", f"{other.url}/chat/relay?nick=bob"))
    second = None
    try:
        page = open_chat(context, first, "relay", "ann")
        terminal.out.expect("* you are bob in relay")
        # Presence spans the processes: bob, on the other one, is listed too.
        expect(page.locator("#members li")).to_have_text(["ann", "bob"])
        terminal.send("before the restart")
        expect(lines(page).locator(".text")).to_have_text(["before the restart"])
        assert first.stop()[0] == 0
        expect(page.locator("#status")).to_have_attribute("data-status", "reconnecting")
        terminal.send("while you were away")
        terminal.send("and again")
        second = start(port_a)
        expect(page.locator("#status")).to_have_text("connected", timeout=20_000)
        expect(lines(page).locator(".text")).to_have_text(
            ["before the restart", "while you were away", "and again"]
        )
        notices = page.locator("#messages li.notice span")
        expect(notices.nth(-2)).to_have_text("3 missed while away")  # own leave + 2 lines
        terminal.send("live")
        expect(lines(page).locator(".text").last).to_have_text("live")
    finally:
        terminal.kill()
        for server in (first, other, second):
            if server is not None:
                server.stop()
        redis.stop()


def test_page_is_usable_on_a_narrow_screen(context: Any, server: Server, tmp_path: Path) -> None:
    page = open_chat(context, server, "phone", "ann")
    page.set_viewport_size({"width": 360, "height": 640})
    say(page, "a long line " * 20)
    for selector in ("#members", "#text", "#send button", "#status"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, selector
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 360
    screenshot(page, "chat-narrow.png", tmp_path)


def test_page_loads_nothing_from_elsewhere_and_runs_no_inline_script(
    context: Any, server: Server
) -> None:
    requests: list[str] = []
    page = context.new_page()
    page.on("request", lambda request: requests.append(request.url))
    response = page.goto(f"{base(server)}/?room=lobby&nick=ann")
    expect(page.locator("#status")).to_have_text("connected")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert requests and all(url.startswith(base(server) + "/") for url in requests), requests
    # Under that policy an injected inline handler cannot run, even if text ever became HTML.
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.ran=1\">')"
    )
    page.wait_for_timeout(200)
    assert page.evaluate("window.ran") is None


#: Two sockets on /broadcast: one says "ready", then three compressible lines; the other
#: returns what it got and the extension both negotiated.
BROADCAST_JS = """async () => {
  const open = () => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/broadcast`);
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("websocket failed"));
  });
  const receive = (ws, count) => new Promise((resolve) => {
    const seen = [];
    ws.onmessage = (event) => { seen.push(event.data); if (seen.length === count) resolve(seen); };
  });
  const sender = await open(), receiver = await open();
  const ready = receive(receiver, 1);
  sender.send("ready");
  await ready;
  const text = "compressible chat line ".repeat(400);
  const lines = receive(receiver, 3);
  for (let i = 0; i < 3; i++) sender.send(`${i} ${text}`);
  const got = await lines;
  const ok = got.every((line, i) => line === `${i} ${text}`);
  sender.close(); receiver.close();
  return {extensions: [sender.extensions, receiver.extensions], ok};
}"""


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("context", "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12"),
        (
            "shared",
            "permessage-deflate; client_max_window_bits=12; server_max_window_bits=12; "
            "server_no_context_takeover",
        ),
    ],
)
def test_chromium_negotiates_deflate_in_both_modes(context: Any, mode: str, expected: str) -> None:
    """`tornws serve --compress [shared]`: Chromium's offer is answered with the 12-bit
    windows (and no server context takeover in shared mode); broadcasts arrive intact."""
    port = free_port()
    server = Server([*tornws_command("serve", "--port", str(port)), "--compress", mode], port)
    try:
        page = context.new_page()
        page.goto(f"{base(server)}/")
        result = page.evaluate(BROADCAST_JS)
        assert result == {"extensions": [expected, expected], "ok": True}
        assert context.errors == []
    finally:
        assert server.stop()[0] == 0


LIVE_JS = """async () => {
  const { LiveClient } = await import("/_tornws/tornws.js");
  const until = async (check) => {
    for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 25));
    return check();
  };
  const got = { a: [], b: [], c: [] };
  const statuses = [];
  const live = new LiveClient("/live", { minDelay: 300, maxDelay: 600 });
  live.addEventListener("status", (e) => statuses.push(e.detail.status));
  live.connect();
  for (const channel of ["a", "b", "c"]) {
    await live.subscribe(channel, (data) => got[channel].push(data));
  }
  const writer = new LiveClient("/live");
  writer.connect();
  for (const channel of ["a", "b", "c"]) await writer.publish(channel, 1);
  await until(() => got.a.length + got.b.length + got.c.length === 3);
  live.socket.close();  // the socket drops
  for (const n of [2, 3]) {
    for (const channel of ["a", "b", "c"]) await writer.publish(channel, n);
  }
  await until(() => got.a.length + got.b.length + got.c.length === 9);
  await writer.publish("b", 4);
  await until(() => got.b.length === 4);
  let refused = null;
  try { await live.subscribe("a/b", () => {}); } catch (error) { refused = error.code; }
  live.close(); writer.close();
  return { got, statuses, refused };
}"""


def test_live_client_in_chromium_resumes_three_subscriptions(context: Any, server: Server) -> None:
    """tornws.js's LiveClient in Chromium: three subscriptions on one socket; the socket
    drops; it reconnects with backoff and every channel resumes from its own position:
    each publication once, in order; an error comes back as a rejected promise's code."""
    page = context.new_page()
    page.goto(f"{base(server)}/")
    result = page.evaluate(LIVE_JS)
    assert result["got"] == {"a": [1, 2, 3], "b": [1, 2, 3, 4], "c": [1, 2, 3]}
    assert result["statuses"][:3] == ["connecting", "open", "reconnecting"]
    assert "open" in result["statuses"][3:]
    assert result["refused"] == "bad_channel"


def test_readme_live_snippet_runs_in_chromium(context: Any, server: Server) -> None:
    """The README's browser snippet for live channels, as it stands, in Chromium: two
    tiles follow their channels on one socket, and the publish answers its position."""
    import re

    readme = (Path(ROOT) / "README.md").read_text()
    (snippet,) = [
        block
        for block in re.findall(r"```js\n(.*?)```", readme, flags=re.DOTALL)
        if "LiveClient" in block
    ]
    body = snippet.replace(
        'import { LiveClient } from "/_tornws/tornws.js";',
        'const { LiveClient } = await import("/_tornws/tornws.js");',
    )
    page = context.new_page()
    page.goto(f"{base(server)}/")
    page.evaluate(
        "() => { for (const name of ['news', 'weather']) {"
        " const tile = document.createElement('div'); tile.dataset.channel = name;"
        " document.body.append(tile); } }"
    )
    result = page.evaluate(
        "async () => {" + body + "\n"
        "for (let i = 0; i < 100 && !document.querySelector('[data-channel=news]')"
        ".textContent; i++) await new Promise((r) => setTimeout(r, 20));\n"
        "const tiles = [...document.querySelectorAll('[data-channel]')]"
        ".map((t) => [t.dataset.channel, t.textContent]);\n"
        "live.close(); return { epoch, offset, tiles, sockets: 1 };}"
    )
    assert result["offset"] == 1 and result["epoch"]
    assert result["tiles"] == [["news", '{"title":"hello"}'], ["weather", ""]]
