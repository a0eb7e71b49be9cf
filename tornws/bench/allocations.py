"""``tornws bench --allocations``: heap allocations per broadcast delivery, counted by memray.

Each subject runs twice under ``memray run --trace-python-allocators`` (every
allocation, Python's own allocators included, freed or not); both runs grow the
same receivers and differ only in the number of paced messages, so the
difference in total allocations over the difference in deliveries (every frame
the receivers got, counted by the load generator, warm-ups included) is what
one delivery allocates. Needs memray (the ``bench`` extra, Linux).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from . import load
from .subjects import Subject

__all__ = ["per_delivery"]


def _under_memray(subject: Subject, output: Path) -> Subject:
    command = subject.command
    if not command or command[0] != sys.executable:
        raise ConfigError(f"--allocations: {subject.name} is not a Python command of this bench")
    memray = [sys.executable, "-m", "memray", "run", "--trace-python-allocators", "-q"]
    return Subject(subject.name, [*memray, "-o", str(output), *command[1:]], offer=subject.offer)


def _total_allocations(capture: Path) -> int:
    stats = capture.with_suffix(".json")
    result = subprocess.run(
        [sys.executable, "-m", "memray", "stats", "--json", "-f", "-o", str(stats), str(capture)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise ConfigError(f"memray stats failed: {result.stderr.strip()}")
    data: dict[str, Any] = json.loads(stats.read_text())
    return int(data["total_num_allocations"])


async def _count(subject: Subject, receivers: int, messages: int, folder: Path) -> tuple[int, int]:
    """(allocations, deliveries) of one run: every text frame the receivers got counts,
    the warm-ups too (how many a run needs depends on timing)."""
    capture = folder / f"{subject.name.replace('+', '_')}-{messages}.bin"
    running = _under_memray(subject, capture).start(None)
    try:
        fanout = load.Fanout(running, offer=subject.offer)
        await fanout.grow(receivers)
        if messages:
            await fanout.run(messages, paced=True, chat=subject.offer is not None)
        delivered = fanout.received
        await fanout.close()  # no connection left: the server stops at once
    finally:
        running.stop()
    return _total_allocations(capture), delivered


async def per_delivery(subject: Subject, receivers: int, few: int, many: int) -> float:
    """Heap allocations per delivery of a paced broadcast to ``receivers`` (1 KiB chat
    messages for subjects whose receivers offer permessage-deflate, else 32 bytes)."""
    try:
        import memray  # noqa: F401
    except ImportError:
        raise ConfigError("--allocations needs memray: pip install -e '.[bench]'") from None
    with tempfile.TemporaryDirectory(prefix="tornws-allocations-") as folder:
        low, low_delivered = await _count(subject, receivers, few, Path(folder))
        await asyncio.sleep(0)
        high, high_delivered = await _count(subject, receivers, many, Path(folder))
    return (high - low) / max(1, high_delivered - low_delivered)
