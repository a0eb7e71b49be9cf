"""Counters of one application's tornws connections.

Plain integers updated where the work happens (no locks, no label lookups on
the hot path) and read when someone asks: ``/metrics``, tests, your own code.
One :class:`Stats` per :class:`~tornws.registry.Registry`, so per application.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["Stats"]


class Stats:
    """What the connections of one application are doing, and what was refused."""

    __slots__ = (
        "by_ip",
        "outgoing_bytes",
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
        #: Handshakes refused, by reason (``origin``, ``connections``, ``draining``, …).
        self.rejections: Counter[str] = Counter()
        #: Open connections per client address (``request.remote_ip``).
        self.by_ip: Counter[str] = Counter()
