"""Counters of one application's tornws connections.

Plain integers updated where the work happens (no locks, no label lookups on
the hot path) and read when someone asks: ``/metrics`` (:mod:`tornws.metrics`),
tests, your own code. One :class:`Stats` per :class:`~tornws.node.Node`,
so per application. Per-connection counts (messages and bytes in and out) live
on each connection's protocol and are added here when it closes; :meth:`Stats.traffic`
sums both.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Histogram", "Stats", "Traffic"]

#: Seconds: from sub-millisecond fan-outs to multi-second stalls.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Histogram:
    """Counts of observations per upper bound (Prometheus's cumulative buckets, computed
    when read), plus their sum: ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, observations ≤ it), …, ("+Inf", all)]``."""
        result, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            result.append((bound, total))
        return result


class Traffic:
    """Messages and bytes, in and out."""

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def add(self, other: Any) -> None:
        """Add the counters of ``other`` (a :class:`Traffic` or a connection's protocol)."""
        self.messages_in += other.messages_in
        self.messages_out += other.messages_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out


class Stats:
    """What the connections of one application are doing, and what was refused."""

    __slots__ = (
        "by_ip",
        "closed",
        "idle_closes",
        "outgoing_bytes",
        "ping_rtt_seconds",
        "rate_limited",
        "rejections",
        "slow_consumer_closes",
        "slow_consumer_drops",
    )

    def __init__(self) -> None:
        #: Bytes written by handlers that the kernel has not taken yet, all connections.
        self.outgoing_bytes = 0
        #: Messages not sent to a slow receiver (policy ``drop``).
        self.slow_consumer_drops = 0
        #: Connections closed for being slow (policy ``close``).
        self.slow_consumer_closes = 0
        #: Connections closed for sending messages too fast (``rate_limit``).
        self.rate_limited = 0
        #: Connections closed for sending nothing for ``idle_timeout`` seconds.
        self.idle_closes = 0
        #: Handshakes refused, by reason (``origin``, ``connections``, ``draining``, …).
        self.rejections: Counter[str] = Counter()
        #: Open connections per client address (``request.remote_ip``).
        self.by_ip: Counter[str] = Counter()
        #: Traffic of the connections that have closed.
        self.closed = Traffic()
        #: Seconds from a keepalive ping to its pong.
        self.ping_rtt_seconds = Histogram()

    def traffic(self, open_connections: Iterable[Any] = ()) -> Traffic:
        """The traffic of closed connections plus that of ``open_connections``
        (handlers; those on tornws's data plane are counted)."""
        total = Traffic()
        total.add(self.closed)
        for handler in open_connections:
            protocol = getattr(handler, "ws_connection", None)
            if protocol is not None and hasattr(protocol, "messages_in"):
                total.add(protocol)
        return total
