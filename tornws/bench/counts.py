"""Counts per broadcast delivery that do not depend on the machine's load: heap
allocations (``--allocations``, memray) and user-space instructions
(``--instructions``, valgrind's callgrind).

Allocations: each subject runs twice under memray; both runs grow the same
receivers and differ only in the number of paced messages, so the difference in
memray's total over the difference in deliveries (every frame the receivers
got, counted by the load generator, warm-ups included) is what one delivery
costs. Instructions: one run under callgrind, whose counts are zeroed
(``callgrind_control -z``) once the receivers are in and dumped
(``callgrind_control -d``) after the paced messages: the instructions of
exactly those deliveries, divided by their number. A count, not a time: it
hardly depends on what else the machine is doing.

- ``allocations``: ``memray run --trace-python-allocators`` (every allocation,
  Python's own allocators included, freed or not); needs memray (the ``bench``
  extra, Linux).
- ``instructions``: ``valgrind --tool=callgrind`` (instructions executed in user
  space: the system calls' kernel side is not counted); needs valgrind (Debian's
  ``valgrind``). The server runs about 50 times slower under it; tornws runs with
  keepalive off (``--ping-interval 0``), whose rounds would count by the minute.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from . import load
from .subjects import Subject

__all__ = ["COUNTERS", "per_delivery"]

#: What can be counted, and the tool that counts it.
COUNTERS = {"allocations": "memray", "instructions": "callgrind"}


def _wrapped(subject: Subject, counter: str, output: Path) -> Subject:
    command = subject.command
    if not command or command[0] != sys.executable:
        raise ConfigError(f"--{counter}: {subject.name} is not a Python command of this bench")
    if counter == "allocations":
        tool = [sys.executable, "-m", "memray", "run", "--trace-python-allocators", "-q"]
        wrapped = [*tool, "-o", str(output), *command[1:]]
    else:
        tool = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={output}"]
        wrapped = [*tool, *command]
        if command[1:4] == ["-m", "tornws", "serve"]:
            # Keepalive off: how many ping rounds fall in a run depends on how long it takes
            # (minutes, under valgrind), not on how many deliveries it makes.
            wrapped += ["--ping-interval", "0"]
    # Under valgrind, importing Tornado and tornws alone takes 15-20 s on this machine.
    return Subject(subject.name, wrapped, offer=subject.offer, start_timeout=180.0)


def _total(counter: str, capture: Path) -> int:
    if counter == "instructions":
        for line in capture.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise ConfigError(f"callgrind wrote no total in {capture}")
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


async def _count(
    subject: Subject, counter: str, receivers: int, messages: int, folder: Path
) -> tuple[int, int]:
    """(the tool's total, deliveries) of one run."""
    capture = folder / f"{subject.name.replace('+', '_')}-{receivers}-{messages}.bin"
    running = _wrapped(subject, counter, capture).start(None)
    try:
        fanout = load.Fanout(running, offer=subject.offer)
        await fanout.grow(receivers)
        if messages:
            await fanout.run(messages, paced=True, chat=subject.offer is not None)
        delivered = fanout.received
        await fanout.close()  # no connection left: the server stops at once
    finally:
        running.stop()
    for _ in range(100):  # the tool writes its file as the process exits
        if capture.exists() and capture.stat().st_size:
            break
        await asyncio.sleep(0.1)
    return _total(counter, capture), delivered


async def _control(flag: str, pid: int) -> None:
    """``callgrind_control FLAG PID``: ``-z`` zeroes the counts, ``-d`` dumps them."""
    process = await asyncio.create_subprocess_exec(
        "callgrind_control",
        flag,
        str(pid),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    if process.returncode != 0 or b"OK" not in output:
        raise ConfigError(f"callgrind_control {flag} {pid} failed: {output.decode().strip()}")


async def _window(
    subject: Subject, receivers: int, messages: int, folder: Path, route: str = "broadcast"
) -> float:
    """Instructions per delivery counted over the paced messages only: callgrind's counts
    are zeroed once the receivers are in and dumped after the last message, so the
    growth (its handshakes, a chat room's join notices) is not in the figure."""
    capture = folder / f"{subject.name.replace('+', '_')}-{route}-{receivers}.out"
    running = _wrapped(subject, "instructions", capture).start(None)
    try:
        fanout = load.Fanout(running, offer=subject.offer, route=route)
        await fanout.grow(receivers)
        start = fanout.received
        await _control("-z", running.pid)
        await fanout.run(messages, paced=True, chat=subject.offer is not None)
        await _control("-d", running.pid)
        delivered = fanout.received - start
        await fanout.close()
    finally:
        running.stop()
    dump = capture.with_name(capture.name + ".1")
    for _ in range(100):
        if dump.exists() and dump.stat().st_size:
            break
        await asyncio.sleep(0.1)
    return _total("instructions", dump) / max(1, delivered)


async def per_delivery(
    subject: Subject,
    receivers: int,
    few: int,
    many: int,
    counter: str = "allocations",
    *,
    route: str = "broadcast",
) -> float:
    """``counter`` (:data:`COUNTERS`) per delivery of a paced broadcast to ``receivers``
    (1 KiB chat messages for subjects whose receivers offer permessage-deflate, else
    32 bytes) on ``route`` (instructions only; :data:`tornws.bench.load.ROUTES`)."""
    if counter == "allocations":
        try:
            import memray  # noqa: F401
        except ImportError:
            raise ConfigError("--allocations needs memray: pip install -e '.[bench]'") from None
    elif counter == "instructions":
        if shutil.which("valgrind") is None:
            raise ConfigError("--instructions needs valgrind: apt-get install valgrind")
    else:
        raise ConfigError(f"unknown counter {counter!r}; known: {', '.join(COUNTERS)}")
    with tempfile.TemporaryDirectory(prefix=f"tornws-{counter}-") as folder:
        if counter == "instructions":
            return await _window(subject, receivers, many, Path(folder), route)
        low, low_delivered = await _count(subject, counter, receivers, few, Path(folder))
        high, high_delivered = await _count(subject, counter, receivers, many, Path(folder))
    return (high - low) / max(1, high_delivered - low_delivered)
