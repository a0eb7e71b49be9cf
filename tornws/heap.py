"""Short garbage-collector pauses in a process that holds many connections.

CPython's cyclic collector runs a *full* pass, over every tracked object, each
time the objects that survived earlier passes have grown by a quarter. A
connection is about 50 tracked objects (the handler, Tornado's request and its
headers, the transport, the core, buffers), so a process holding 10,000 idle
connections spends ~450 ms in each full pass, and any churn (300 connects a
second, a reconnect storm) triggers one every few seconds: every client of the
process then waits that long. Measured here with ``tornws bench --soak``.

:func:`keep_pauses_short` removes those pauses. It collects once, then moves
every object alive to the collector's permanent generation (:func:`gc.freeze`),
and does the same after every later full pass: a full pass then only looks at
the objects made since the one before, not at every connection. What it costs:
a *cycle* of objects that becomes garbage after being frozen is never
collected (plain garbage still is, by reference counting). tornws's own
connections leave no cycles when they close (tested); if your handlers make
cycles of long-lived objects, break them when you are done with them, or call
:func:`gc.unfreeze` then :func:`gc.collect` at a quiet time.
``tornws serve`` does this unless given ``--no-gc-freeze``.

:func:`watch` times every collection (``gc.callbacks``); ``/metrics`` reports
the pauses per generation as ``tornws_gc_pause_seconds`` and the longest as
``tornws_gc_longest_pause_seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from .stats import Histogram

__all__ = ["PAUSE_BUCKETS", "Pauses", "keep_pauses_short", "watch", "watched"]

#: Seconds: a young pass takes tens of microseconds, a full one up to seconds.
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Pauses:
    """The collections of this process since :func:`watch`, per generation."""

    __slots__ = (
        "_settling",
        "_started",
        "collected",
        "durations",
        "freezing",
        "frozen_passes",
        "longest",
    )

    def __init__(self) -> None:
        #: Generation → a histogram of its passes' durations.
        self.durations = tuple(Histogram(PAUSE_BUCKETS) for _ in range(3))
        #: Generation → its longest pass, in seconds.
        self.longest = [0.0, 0.0, 0.0]
        #: Generation → unreachable objects its passes found (cycles freed).
        self.collected = [0, 0, 0]
        #: Survivors are frozen after each full pass (:func:`keep_pauses_short`).
        self.freezing = False
        #: Full passes whose survivors were frozen.
        self.frozen_passes = 0
        self._started = 0.0
        self._settling = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = info["generation"]
        self.durations[generation].observe(seconds)
        self.longest[generation] = max(self.longest[generation], seconds)
        self.collected[generation] += info.get("collected", 0)
        if not self.freezing:
            return
        if generation == 2:
            # The young generations are empty after a full pass: this freezes its
            # survivors, which the next full pass will not look at again.
            gc.freeze()
            self.frozen_passes += 1
        elif generation == 1 and not self._settling:
            # What this pass promoted is all a full pass would look at now (the
            # rest is frozen): run one while it is small, on the next loop turn
            # (a collection cannot start inside another).
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a thread without a loop: the loop's next pass will
                return
            self._settling = True
            loop.call_soon(self._settle)

    def _settle(self) -> None:
        self._settling = False
        gc.collect()

    @property
    def frozen(self) -> int:
        """Objects in the permanent generation."""
        return gc.get_freeze_count()


def watch() -> Pauses:
    """Time every collection of this process from now on (once: later calls return
    the same record)."""
    pauses = watched()
    if pauses is None:
        pauses = Pauses()
        gc.callbacks.append(pauses)
    return pauses


def watched() -> Pauses | None:
    """The record :func:`watch` keeps (in ``gc.callbacks``), or ``None`` before it is called."""
    return next((c for c in gc.callbacks if isinstance(c, Pauses)), None)


def keep_pauses_short() -> Pauses:
    """Collect, freeze what is alive, and freeze the survivors of each later full
    pass (see the module docstring). Call it once the process has imported and
    built what it keeps (``tornws serve`` calls it before listening)."""
    pauses = watch()
    gc.collect()
    gc.freeze()
    pauses.freezing = True
    return pauses
