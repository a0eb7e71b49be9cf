"""``/metrics``: Prometheus text read by prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import tornado.httpclient

import tornws

from wsclient import recv

parser = pytest.importorskip("prometheus_client.parser", reason="pip install prometheus_client")


@pytest.fixture
def app(registry: tornws.Registry) -> Any:
    return tornws.make_app(registry=registry, websocket_ping_interval=0.05)


async def scrape(http_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await tornado.httpclient.AsyncHTTPClient().fetch(f"{http_url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser.text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


@pytest.mark.gen_test(timeout=20)
async def test_metrics_count_connections_traffic_refusals_and_latencies(
    http_url: str, ws_url: str, ws_connect: Any, registry: tornws.Registry, node: tornws.Node
) -> None:
    echo = await ws_connect(f"{ws_url}/echo")
    listeners = [await ws_connect(f"{ws_url}/broadcast") for _ in range(3)]
    for i in range(5):
        await echo.write_message(f"e{i}")
        assert await recv(echo) == f"e{i}"
    await listeners[0].write_message("to all")
    for listener in listeners:
        assert await recv(listener) == "to all"
    refused = tornado.httpclient.HTTPRequest(f"{ws_url}/echo", headers={"Origin": "https://evil"})
    with pytest.raises(tornado.httpclient.HTTPClientError):
        await ws_connect(refused)
    await asyncio.sleep(0.2)  # a few keepalive pings and pongs

    metrics = await scrape(http_url)
    assert metrics[("tornws_connections", (("handler", "EchoHandler"),))] == 1
    assert metrics[("tornws_connections", (("handler", "BroadcastHandler"),))] == 3
    assert metrics[("tornws_rooms", ())] == 1
    assert metrics[("tornws_handshake_rejections_total", (("reason", "origin"),))] == 1
    assert metrics[("tornws_messages_received_total", ())] == 6
    assert metrics[("tornws_messages_sent_total", ())] == 5 + 3
    assert metrics[("tornws_received_bytes_total", ())] > 6 * 6  # frames with mask and header
    assert metrics[("tornws_sent_bytes_total", ())] >= 5 * 4 + 3 * 8
    assert metrics[("tornws_slow_consumer_total", (("policy", "drop"),))] == 0
    assert metrics[("tornws_fanout_seconds_count", ())] == 1
    assert metrics[("tornws_fanout_seconds_bucket", (("le", "+Inf"),))] == 1
    assert metrics[("tornws_ping_rtt_seconds_count", ())] >= 4
    assert 0 < metrics[("tornws_ping_rtt_seconds_sum", ())] < 1
    assert metrics[("process_resident_memory_bytes", ())] > 0

    # A closed connection's traffic stays counted.
    echo.close()
    while len(node.connections) > 3:
        await asyncio.sleep(0.01)
    after = await scrape(http_url)
    assert ("tornws_connections", (("handler", "EchoHandler"),)) not in after
    assert after[("tornws_messages_received_total", ())] == 6
    for listener in listeners:
        listener.close()
    while node.connections:
        await asyncio.sleep(0.01)


@pytest.mark.gen_test
async def test_without_prometheus_client_metrics_says_how_to_enable_it(
    http_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        f"{http_url}/metrics", raise_error=False
    )
    assert response.code == 501
    assert b"pip install 'tornws[metrics]'" in response.body
