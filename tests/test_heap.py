"""Garbage-collector pauses: what ``tornws serve`` freezes, what ``/metrics`` reports, and
no reference cycle left by a closed connection (frozen, it would never be collected)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections import Counter
from typing import Any

import pytest
import tornado.httpclient

import tornws

from conftest import free_port

parser = pytest.importorskip("prometheus_client.parser", reason="pip install prometheus_client")


async def scrape(port: int) -> dict[tuple[str, str], float]:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    text = response.body.decode()
    return {
        (sample.name, sample.labels.get("generation", "")): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tornws_gc_")
    }


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("freeze", [True, False], ids=["default", "no-gc-freeze"])
async def test_serve_freezes_the_survivors_of_collections_and_reports_every_pass(
    start_server: Any, ws_connect: Any, freeze: bool
) -> None:
    """``tornws serve`` freezes what is alive once built, then what survives later passes
    (the frozen count grows once connections have arrived and a full pass has run);
    ``--no-gc-freeze`` freezes nothing.
    Either way every pass is timed, by generation, on ``/metrics``."""
    port = free_port()
    flags = [] if freeze else ["--no-gc-freeze"]
    start_server([sys.executable, "-m", "tornws", "serve", "--port", str(port), *flags], port)
    before = await scrape(port)
    full = ("tornws_gc_pause_seconds_count", "2")
    for _ in range(10):  # until a full pass has run since (Python 3.13 collects less often)
        for _ in range(100):
            await ws_connect(f"ws://127.0.0.1:{port}/echo")
        after = await scrape(port)
        if after[full] > before[full]:
            break
    frozen = ("tornws_gc_frozen_objects", "")
    if freeze:
        assert before[frozen] > 10_000  # the app, once built
        assert after[frozen] > before[frozen]  # survivors of the passes since
    else:  # (nothing frozen by tornws: Python 3.12+ keeps a few hundred of its own there)
        assert before[frozen] == after[frozen] < 1000
    young = ("tornws_gc_pause_seconds_count", "0")
    assert after[young] > before[young]
    assert after[("tornws_gc_pause_seconds_count", "1")] > 0
    for generation in "012":
        longest = after[("tornws_gc_longest_pause_seconds", generation)]
        total = after[("tornws_gc_pause_seconds_sum", generation)]
        assert 0 <= longest <= total


def garbage_of_tornws() -> Counter[str]:
    """The tornws objects only the cyclic collector would free, now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(
            type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("tornws")
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def until_closed(node: tornws.Node) -> None:
    for _ in range(500):
        if not node.connections:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(node.connections)} connections still open on the server")


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornws.make_app(registry=registry, websocket_max_message_size=1024)


@pytest.mark.gen_test(timeout=30)
async def test_closed_connections_leave_no_cycle_for_the_collector(
    ws_url: str, ws_connect: Any, node: tornws.Node
) -> None:
    """Connections on every route, closed every way (client close, TCP dropped, 1009
    from the server), leave no tornws object that only the cyclic collector can free."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):  # the first round builds what stays (codecs, caches)
            clients = [
                await ws_connect(f"{ws_url}/echo"),
                await ws_connect(f"{ws_url}/broadcast"),
                await ws_connect(f"{ws_url}/chat/lobby?nick=ann"),
                await ws_connect(f"{ws_url}/chat/lobby?nick=bob", subprotocols=["chat.json"]),
                await ws_connect(f"{ws_url}/live", subprotocols=["tornws.v1"]),
            ]
            echo, broadcast, text, chat_json, live = clients
            await echo.write_message("hello")
            assert await echo.read_message() == "hello"
            await broadcast.write_message("to all")
            assert await broadcast.read_message() == "to all"
            await text.write_message("hi from ann")
            command = {"id": 1, "type": "subscribe", "channel": "news", "presence": True}
            await live.write_message(json.dumps(command))
            while "id" not in json.loads(await live.read_message()):
                pass
            echo.close()
            broadcast.stream.close()  # TCP dropped, no close frame
            too_big = await ws_connect(f"{ws_url}/echo")
            await too_big.write_message("x" * 2000)  # over websocket_max_message_size
            assert await too_big.read_message() is None and too_big.close_code == 1009
            for client in (text, chat_json, live):
                client.close()
            await until_closed(node)
            await asyncio.sleep(0.1)  # the last callbacks of the closes have run
            leaked = garbage_of_tornws()
        assert not leaked, f"closed connections left reference cycles: {leaked}"
    finally:
        gc.enable()
