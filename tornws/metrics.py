"""``GET /metrics``: the application's tornws counters in Prometheus's text format.

Needs ``prometheus_client`` (``pip install 'tornws[metrics]'``); without it
``/metrics`` answers 501 and says so. Nothing is recorded through
``prometheus_client`` on the hot path: a collector reads the node's
:class:`~tornws.stats.Stats` and the open connections' counters when Prometheus
scrapes, so metrics cost the data plane nothing but its own integer counters.

Expose it where only your monitoring reaches (a separate port, or a proxy rule):
it tells anyone how busy the server is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import tornado.web

from . import heap
from .node import Node
from .registry import Registry

__all__ = ["MetricsHandler", "collector"]

_MISSING = (
    "metrics need prometheus_client: pip install 'tornws[metrics]' "
    "(or pip install prometheus_client), then restart\n"
)


def collector(application: Any) -> Any:
    """A ``prometheus_client`` collector of ``application``'s tornws connections,
    counters and rooms.

    Register it with your own ``CollectorRegistry`` if you serve metrics yourself.
    """
    node = Node.for_application(application)
    registry = Registry.for_application(application)
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector

    class TornwsCollector(Collector):
        def collect(self) -> Iterator[Any]:
            stats = node.stats
            connections = list(node.connections)
            by_handler = Counter(type(c).__name__ for c in connections)
            gauge = GaugeMetricFamily(
                "tornws_connections", "Open WebSocket connections.", labels=["handler"]
            )
            for name, count in sorted(by_handler.items()):
                gauge.add_metric([name], count)
            yield gauge
            yield GaugeMetricFamily(
                "tornws_rooms", "Rooms with local members.", value=len(registry.rooms())
            )
            yield GaugeMetricFamily(
                "tornws_outgoing_bytes",
                "Bytes written for clients that the kernel has not taken yet.",
                value=stats.outgoing_bytes,
            )
            rejections = CounterMetricFamily(
                "tornws_handshake_rejections",
                "Handshakes refused before the upgrade, by reason.",
                labels=["reason"],
            )
            for reason, count in sorted(stats.rejections.items()):
                rejections.add_metric([reason], count)
            yield rejections
            traffic = stats.traffic(connections)
            for name, value, text in (
                ("tornws_messages_received", traffic.messages_in, "Messages received."),
                ("tornws_messages_sent", traffic.messages_out, "Messages sent."),
                ("tornws_received_bytes", traffic.bytes_in, "Bytes received after upgrades."),
                ("tornws_sent_bytes", traffic.bytes_out, "Bytes sent after upgrades."),
            ):
                yield CounterMetricFamily(name, text, value=value)
            slow = CounterMetricFamily(
                "tornws_slow_consumer",
                "Messages dropped (policy drop) and connections closed (policy close) "
                "for slow receivers.",
                labels=["policy"],
            )
            slow.add_metric(["drop"], stats.slow_consumer_drops)
            slow.add_metric(["close"], stats.slow_consumer_closes)
            yield slow
            yield CounterMetricFamily(
                "tornws_rate_limited",
                "Connections closed for sending too fast.",
                value=stats.rate_limited,
            )
            yield CounterMetricFamily(
                "tornws_idle_closes",
                "Connections closed for sending nothing.",
                value=stats.idle_closes,
            )
            for name, histogram, text in (
                (
                    "tornws_fanout_seconds",
                    registry.fanout_seconds,
                    "From a publish to the last local member's send.",
                ),
                (
                    "tornws_ping_rtt_seconds",
                    stats.ping_rtt_seconds,
                    "From a keepalive ping to its pong.",
                ),
            ):
                family = HistogramMetricFamily(name, text)
                family.add_metric([], histogram.cumulative(), histogram.sum)
                yield family
            yield from _broker_families(registry.broker)
            pauses = heap.watched()
            if pauses is not None:
                yield from _gc_families(pauses)

    return TornwsCollector()


def _broker_families(broker: Any) -> Iterator[Any]:
    """The Redis broker's state and counters (a broker that has them: ``up``...)."""
    if not hasattr(broker, "outages"):
        return
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily(
        "tornws_broker_up", "1 while Redis answers this process, else 0.", value=int(broker.up)
    )
    for name, value, text in (
        ("tornws_broker_outages", broker.outages, "Times Redis became unreachable."),
        (
            "tornws_broker_local_only_publications",
            broker.failures,
            "Publications delivered to this process's members only: Redis was unreachable.",
        ),
        (
            "tornws_broker_skipped_events",
            broker.skipped,
            "Events this process never read: it fell more than the history behind.",
        ),
        (
            "tornws_broker_unreplicated_publications",
            broker.unreplicated,
            "Numbered publications fewer replicas confirmed than --wait-replicas asks.",
        ),
        (
            "tornws_broker_history_losses",
            broker.history_losses,
            "Rooms found to have lost events in Redis (a failover): each started a new epoch.",
        ),
    ):
        yield CounterMetricFamily(name, text, value=value)


def _gc_families(pauses: heap.Pauses) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    seconds = HistogramMetricFamily(
        "tornws_gc_pause_seconds",
        "Garbage-collector passes of this process, by generation (2: full).",
        labels=["generation"],
    )
    longest = GaugeMetricFamily(
        "tornws_gc_longest_pause_seconds",
        "The longest garbage-collector pass of this process, by generation.",
        labels=["generation"],
    )
    collected = CounterMetricFamily(
        "tornws_gc_collected_objects",
        "Unreachable objects (reference cycles) the collector freed, by generation.",
        labels=["generation"],
    )
    for generation, histogram in enumerate(pauses.durations):
        label = [str(generation)]
        seconds.add_metric(label, histogram.cumulative(), histogram.sum)
        longest.add_metric(label, pauses.longest[generation])
        collected.add_metric(label, pauses.collected[generation])
    yield seconds
    yield longest
    yield collected
    yield GaugeMetricFamily(
        "tornws_gc_frozen_objects",
        "Objects in the collector's permanent generation (tornws.heap.keep_pauses_short).",
        value=pauses.frozen,
    )


class MetricsHandler(tornado.web.RequestHandler):
    """Prometheus text for the application's tornws connections and rooms (plus the
    process's CPU and memory)."""

    def get(self) -> None:
        try:
            import prometheus_client
        except ImportError:
            self.set_status(501)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(_MISSING)
            return
        # One prometheus_client registry per application, made on the first scrape.
        metrics = self.settings.get(_SETTINGS_KEY)
        if metrics is None:
            metrics = prometheus_client.CollectorRegistry()
            metrics.register(collector(self.application))
            metrics.register(prometheus_client.ProcessCollector(registry=None))
            self.application.settings[_SETTINGS_KEY] = metrics
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(prometheus_client.generate_latest(metrics))


_SETTINGS_KEY = "tornws.metrics"
