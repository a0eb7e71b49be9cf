"""``tornws bench``: tornws, the asyncio version and raw Tornado, measured side by side.

Each subject runs as its own process pinned to one CPU; the load generator
(picows clients, in this process) is pinned to another. The primary figure is
the server's CPU time per unit (utime+stime from /proc over the workload's
window), which a noisy machine disturbs far less than throughput. Ratios are to
the asyncio version measured in the same run.

Needs the ``bench`` extra (``pip install -e '.[bench]'``); ``--plot`` needs
matplotlib (``plot`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..exceptions import ConfigError

__all__ = ["DEFLATE_BASELINE", "Plan", "Workload", "machine", "main", "plan", "run"]

#: The baseline of the permessage-deflate workloads (``--deflate``).
DEFLATE_BASELINE = "asyncio+deflate"
#: Publications at once in the throughput lines of the publish paths (``--redis``).
PUBLISH_IN_FLIGHT = 16


@dataclass(frozen=True)
class Workload:
    """One line of the results: a name, the unit, and how to run it."""

    name: str
    unit: str
    run: Callable[..., Any]  # (server, fanout) -> Measurement coroutine
    group: str = ""
    #: The subject every ratio on this line is to.
    baseline: str = "asyncio"
    #: The fan-out route its receivers use (:data:`tornws.bench.load.ROUTES`).
    route: str = "broadcast"
    #: Run on a freshly started server (a memory line: a heap that other workloads
    #: grew and freed would absorb what it measures). Not for ``--url`` subjects.
    fresh: bool = False


@dataclass(frozen=True)
class Plan:
    quick: bool
    echo_seconds: float
    broadcast_sizes: tuple[int, int]
    broadcast_messages: tuple[int, int]
    handshakes: int
    idle_connections: int
    #: ``--scale``: one more paced broadcast, to this many receivers (0: none).
    scale: int = 0
    #: ``--deflate``: the permessage-deflate workloads, with this many receivers (0: none).
    deflate: int = 0
    #: Rounds of each broadcast line on the same receivers; the median one is reported.
    rounds: int = 1
    #: (members, messages) of the chat lines: one room, plain text and chat.json.
    chat_sizes: tuple[tuple[int, int], ...] = ()
    #: /live: (connections, messages) of the channel lines (each connection holds
    #: :data:`tornws.bench.load.LIVE_CHANNELS` subscriptions), and the subscribers
    #: of the fill line.
    live: tuple[int, int] = (0, 0)
    live_fill: int = 0
    #: Members of the chat fill lines (one room, plain text and chat.json).
    chat_fill: int = 0
    #: ``--redis``: (subscribers on the other process, publications one at a time,
    #: publications with :data:`PUBLISH_IN_FLIGHT` at once) of the publish-path lines.
    publish: tuple[int, int, int] = (0, 0, 0)
    #: ``--soak``: (idle connections, new connections a second, seconds) of the soak line.
    soak: tuple[int, int, float] = (0, 0, 0.0)


def plan(
    quick: bool,
    scale: bool | int = False,
    deflate: bool = False,
    redis: bool = False,
    soak: bool = False,
) -> Plan:
    """The full plan (about 11 minutes here) or the quick one (under a minute, for CI).

    ``scale`` adds a paced broadcast to 10,000 receivers (500 with ``quick``), or to
    ``scale`` receivers when it is a number (``--scale N``), spread over source addresses
    of 127.0.0.0/8 beyond what one address's ephemeral ports allow;
    ``deflate`` the permessage-deflate workloads, to 1000 receivers (100); ``redis``
    the publish paths across two processes (to 100 subscribers; 20); ``soak`` 10,000
    idle connections and 300 new ones a second for 90 s (500, 50/s, 6 s).
    """
    receivers = (500 if quick else 10_000) if scale is True else int(scale)
    if quick:
        return Plan(
            True, 0.3, (100, 200), (10, 10), 100, 200, receivers, 100 if deflate else 0,
            chat_sizes=((100, 10), (200, 10)), live=(100, 10), live_fill=200, chat_fill=200,
            publish=(20, 10, 40) if redis else (0, 0, 0),
            soak=(500, 50, 6.0) if soak else (0, 0, 0.0),
        )  # fmt: skip
    return Plan(
        False, 4.0, (1000, 5000), (200, 50), 2000, 5000, receivers,
        1000 if deflate else 0, rounds=3, chat_sizes=((1000, 200), (5000, 50)),
        live=(1000, 200),
        live_fill=10_000, chat_fill=10_000, publish=(100, 200, 2000) if redis else (0, 0, 0),
        soak=(10_000, 300, 90.0) if soak else (0, 0, 0.0),
    )  # fmt: skip


def _workloads(p: Plan) -> list[Workload]:
    from . import load

    def echo(connections: int, size: int) -> Callable[..., Any]:
        return lambda server, fanout: load.echo(server, connections, size, p.echo_seconds)

    async def median(once: Callable[[], Awaitable[load.Measurement]]) -> load.Measurement:
        """``p.rounds`` rounds on the same receivers: the one with the median CPU per unit."""
        results = [await once() for _ in range(p.rounds)]
        chosen = sorted(results, key=lambda m: m.cpu_us_per_unit)[len(results) // 2]
        if len(results) > 1:
            chosen.rounds = [round(m.cpu_us_per_unit, 3) for m in results]
        return chosen

    def grow(receivers: int, messages: int, paced: bool) -> Callable[..., Any]:
        async def run(server: Any, fanout: load.Fanout) -> load.Measurement:
            await fanout.grow(receivers)
            return await median(lambda: fanout.run(messages, paced))

        return run

    def scaled(receivers: int, messages: int) -> Callable[..., Any]:
        """``grow`` paced, with the server's memory per receiver added (``details``)."""

        async def run(server: Any, fanout: load.Fanout) -> load.Measurement:
            before, already = server.rss(), len(fanout.clients)
            await fanout.grow(receivers)
            grown = receivers - already
            per_receiver = (server.rss() - before) / grown / 1024 if grown > 0 else None
            measurement = await median(lambda: fanout.run(messages, True))
            measurement.details["kib_per_receiver"] = (
                round(per_receiver, 2) if per_receiver is not None else None
            )
            return measurement

        return run

    def live(paced: bool) -> Workload:
        """A channel line: ``p.live`` connections on /live, 10 subscriptions each."""
        connections, messages = p.live
        how = "paced" if paced else "burst"
        return Workload(
            f"live {connections} {how}",
            "delivery",
            grow(connections, messages, paced),
            "live",
            route="live",
        )

    def chat(receivers: int, messages: int, paced: bool) -> Callable[..., Any]:
        async def run(server: Any, fanout: load.Fanout) -> load.Measurement:
            await fanout.grow(receivers)
            return await median(lambda: fanout.run(messages, paced, chat=True))

        return run

    def room(route: str, receivers: int, messages: int, paced: bool) -> Workload:
        """A chat line: ``receivers`` in one room on ``route``, 32-byte chat lines."""
        how = "paced" if paced else "burst"
        return Workload(
            f"{route} {receivers} {how}",
            "delivery",
            grow(receivers, messages, paced),
            "chat",
            route=route,
        )

    def publish_line(how: str, paced: bool) -> Callable[..., Any]:
        subscribers, one_by_one, at_once = p.publish
        return lambda server, fanout: load.publish_path(
            server,
            how,
            one_by_one if paced else at_once,
            subscribers,
            1 if paced else PUBLISH_IN_FLIGHT,
        )

    def deflate_memory(server: Any, fanout: load.Fanout) -> Any:
        return load.deflate_memory(server, fanout, p.deflate)

    (small, large), (small_msgs, large_msgs) = p.broadcast_sizes, p.broadcast_messages
    deflate = (
        [
            # Only the --deflate subjects run these (group "deflate"), memory first.
            Workload(f"deflate memory ×{p.deflate}", "KiB/conn", deflate_memory, "deflate"),
            Workload(
                f"deflate broadcast {p.deflate} paced 1 KiB",
                "delivery",
                chat(p.deflate, small_msgs, True),
                "deflate",
            ),
            Workload(
                f"deflate broadcast {p.deflate} burst 1 KiB",
                "delivery",
                chat(p.deflate, small_msgs, False),
                "deflate",
            ),
        ]
        if p.deflate
        else []
    )
    for i, workload in enumerate(deflate):
        deflate[i] = dataclasses.replace(workload, baseline=DEFLATE_BASELINE)
    return [
        # First, on a fresh server: once other workloads have grown the heap, new
        # connections reuse freed memory and the RSS delta says nothing.
        Workload(
            f"idle memory ×{p.idle_connections}",
            "KiB/conn",
            lambda server, fanout: load.idle_memory(server, p.idle_connections),
            "memory",
        ),
        Workload("echo 1 conn 32 B", "round trip", echo(1, 32), "echo"),
        Workload("echo 50 conns 32 B", "round trip", echo(50, 32), "echo"),
        Workload("echo 1 conn 16 KiB", "round trip", echo(1, 16384), "echo"),
        Workload("echo 50 conns 16 KiB", "round trip", echo(50, 16384), "echo"),
        Workload(f"broadcast {small} paced", "delivery", grow(small, small_msgs, True), "fanout"),
        Workload(f"broadcast {small} burst", "delivery", grow(small, small_msgs, False), "fanout"),
        Workload(f"broadcast {large} paced", "delivery", grow(large, large_msgs, True), "fanout"),
        Workload(f"broadcast {large} burst", "delivery", grow(large, large_msgs, False), "fanout"),
        *(
            [Workload(f"broadcast {p.scale} paced", "delivery", scaled(p.scale, 50), "fanout")]
            if p.scale
            else []
        ),
        *(
            room(route, receivers, messages, paced)
            for receivers, messages in p.chat_sizes
            for route in ("chat", "chat.json")
            for paced in (True, False)
        ),
        *(
            Workload(
                f"{route} fill {p.chat_fill}",
                "member",
                lambda server, fanout, route=route: load.chat_fill(server, p.chat_fill, route),
                "fill",
                fresh=True,  # (a server still flooded by the line before would not say much)
            )
            for route in ("chat", "chat.json")
            if p.chat_fill
        ),
        *(
            [
                Workload(
                    f"live memory ×{p.live[0]}×{load.LIVE_CHANNELS}",
                    "KiB/sub",
                    lambda server, fanout: load.live_memory(server, p.live[0]),
                    "live",
                    fresh=True,
                ),
                live(True),
                live(False),
                Workload(
                    f"live fill {p.live_fill}",
                    "subscriber",
                    lambda server, fanout: load.live_fill(server, p.live_fill),
                    "live",
                ),
            ]
            if p.live[0]
            else []
        ),
        *(
            Workload(
                f"publish via {how} {'paced' if paced else f'×{PUBLISH_IN_FLIGHT}'}",
                "publication",
                publish_line(how, paced),
                "publish",
            )
            for how in ("live", "http", "publisher")
            for paced in (True, False)
            if p.publish[0]
        ),
        *(
            [
                Workload(
                    f"soak {p.soak[0]} idle + {p.soak[1]}/s × {p.soak[2]:g} s",
                    "connect",
                    lambda server, fanout: load.soak(server, *p.soak),
                    "soak",
                    fresh=True,
                )
            ]
            if p.soak[0]
            else []
        ),
        Workload(
            f"handshake ×{p.handshakes}",
            "handshake",
            lambda server, fanout: load.handshakes(server, p.handshakes),
            "handshake",
        ),
        *deflate,
    ]


def _cpus() -> tuple[int | None, int | None]:
    """(server CPU, load-generator CPU), or (None, None) when fewer than two are usable."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return usable[0], usable[1]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import tornado

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version(), "tornado": tornado.version}
    for name in ("websockets", "picows"):
        with contextlib.suppress(ImportError, AttributeError):
            versions[name] = __import__(name).__version__
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": model,
        "cpus": os.cpu_count(),
        **versions,
    }


def _has_broadcast(subject: Any) -> bool:
    """Whether ``subject`` serves /broadcast: it runs the fan-out or deflate lines (the
    bare websockets server runs neither)."""
    groups = getattr(subject, "groups", ())
    return not groups or bool({"fanout", "deflate"} & set(groups))


async def _run_subject(
    subject: Any,
    workloads: list[Workload],
    cpus: tuple[int | None, int | None],
    progress: Callable[[str], None],
    quick: bool = False,
) -> dict[str, Any]:
    from . import load

    running = subject.start(cpus[0])
    results: dict[str, Any] = {"checks": [], "results": {}, "error": None}
    try:
        results["checks"] = await load.check(running, broadcast=_has_broadcast(subject))
        groups = getattr(subject, "groups", ())
        offer = getattr(subject, "offer", None)
        fanout = load.Fanout(running, verify=quick, offer=offer)
        after_fresh = False
        try:
            for workload in workloads:
                if (
                    workload.group not in groups
                    if groups
                    else workload.group in ("deflate", "publish")
                ):
                    continue
                progress(f"{subject.name}: {workload.name}")
                # A fresh server for a line that asks for one, and after one: a fill
                # cut off at its deadline leaves a server still busy with what got in.
                if (
                    (workload.fresh or after_fresh)
                    and running.process is not None
                    and results["results"]
                ):
                    await fanout.close()
                    fanout = load.Fanout(running)  # (none open: a new one follows)
                    running.stop()
                    running = subject.start(cpus[0])
                if fanout.clients and (
                    workload.group not in ("fanout", "deflate", "chat")
                    or workload.route != fanout.route
                ):
                    await fanout.close()
                    fanout = load.Fanout(running, verify=quick, offer=offer, route=workload.route)
                elif not fanout.clients:
                    fanout = load.Fanout(running, verify=quick, offer=offer, route=workload.route)
                measurement = await workload.run(running, fanout)
                results["results"][workload.name] = measurement
                after_fresh = workload.fresh
        finally:
            await fanout.close()
    except load.CheckFailed as exc:
        results["error"] = str(exc)
        progress(f"{subject.name}: FAILED: {exc}")
    finally:
        running.stop()
    return results


async def run(
    subjects: list[Any],
    quick: bool,
    progress: Callable[[str], None],
    scale: bool | int = False,
    deflate: bool = False,
    *,
    select: str | None = None,
    redis: bool = False,
    soak: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run every workload (``select``: those whose name matches that regular expression)
    on every subject, the whole sequence ``rounds`` times in turn (each subject's figure
    is then its median round's); return the report (see ``--json``)."""
    from .subjects import raise_open_files_limit

    if rounds < 1:
        raise ConfigError("--rounds must be 1 or more")
    limit = raise_open_files_limit()
    p = plan(quick, scale, deflate, redis, soak)
    needed = max(*p.broadcast_sizes, p.scale, p.live_fill, p.chat_fill, p.soak[0] + p.soak[1] * 10)
    needed += 64
    if limit < needed:
        raise ConfigError(f"the open-files hard limit is {limit}; the bench needs {needed}")
    cpus = _cpus()
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})
    workloads = _workloads(p)
    if select:
        pattern = re.compile(select)
        workloads = [w for w in workloads if pattern.search(w.name)]
        if not workloads:
            raise ConfigError(f"--workloads {select!r} matches no workload")
    report: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "pinning": {"server_cpu": cpus[0], "loadgen_cpu": cpus[1]},
        "workloads": [{"name": w.name, "unit": w.unit, "baseline": w.baseline} for w in workloads],
        "subjects": {},
    }
    runs: dict[str, list[dict[str, Any]]] = {subject.name: [] for subject in subjects}
    for turn in range(rounds):
        for subject in subjects:
            if rounds > 1:
                progress(f"{subject.name}: round {turn + 1} of {rounds}")
            runs[subject.name].append(await _run_subject(subject, workloads, cpus, progress, quick))
    for name, results in runs.items():
        report["subjects"][name] = _median_round(results)
    return report


def _median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One subject's rounds as one: per workload, the round with the median figure,
    carrying every round's figure in ``runs``; the first error, if any."""
    from .report import _figure

    merged = dict(runs[0])
    merged["error"] = next((run["error"] for run in runs if run["error"]), None)
    merged["results"] = {}
    for workload in runs[0]["results"]:
        measurements = [run["results"][workload] for run in runs if workload in run["results"]]
        chosen = sorted(measurements, key=_figure)[len(measurements) // 2]
        if len(measurements) > 1:
            chosen.runs = [round(_figure(m), 3) for m in measurements]
        merged["results"][workload] = chosen
    return merged


def _count_plan(counter: str, args: Any) -> tuple[tuple[int, ...], int, int]:
    """(receiver counts, messages of the short run, of the long run) for ``counter``."""
    if counter == "allocations":
        return ((100,), 2, 42) if args.quick else ((1000,), 20, 120)
    if args.quick:
        return (100, 200), 0, 10
    return (1000, 5000, *((10_000,) if args.scale else ())), 0, 20


async def _counts(
    subjects: list[Any],
    counter: str,
    plan: tuple[tuple[int, ...], int, int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``--allocations`` / ``--instructions``: ``counter`` per paced delivery to each
    receiver count of ``plan``, for each subject this bench starts itself (not
    ``--url``, not ``--redis``; instructions: tornws and the floor only, valgrind
    being slow)."""
    sizes, few, many = plan
    if counter == "instructions":
        subjects = [s for s in subjects if s.name in ("tornws", "floor")]
    from .counts import COUNTERS, per_delivery
    from .subjects import Cluster

    counts: dict[str, Any] = {"receivers": list(sizes), "per_delivery": {}, "errors": {}}

    async def count(label: str, receivers: int, subject: Any, route: str = "broadcast") -> None:
        # A line that fails is reported as failed; the lines before and after it stand.
        progress(f"{label}: {counter} per delivery to {receivers} ({COUNTERS[counter]})")
        try:
            figure = await per_delivery(subject, receivers, few, many, counter, route=route)
        except ConfigError:
            raise
        except Exception as exc:  # (a bench line's failure, whatever it is, is data)
            error = f"{type(exc).__name__}: {exc}"
            counts["errors"][f"{label} to {receivers}"] = error
            progress(f"{label}: FAILED: {error}")
            return
        counts["per_delivery"].setdefault(label, {})[receivers] = round(figure, 2)

    for subject in subjects:
        if not subject.command or isinstance(subject, Cluster):
            continue
        if not _has_broadcast(subject):
            continue
        for receivers in sizes:
            await count(subject.name, receivers, subject)
        if counter == "instructions" and subject.name == "tornws":
            # The other fan-out routes beside /broadcast, at the first receiver count:
            # a chat room (plain text, chat.json) and /live channels.
            for route in ("chat", "chat.json", "live"):
                await count(f"{subject.name} {route}", sizes[0], subject, route)
    return counts


def _extras(
    args: Any, report: dict[str, Any], runner: Callable[[Any], Any], progress: Callable[[str], None]
) -> None:
    """``--storm``: the restart under load (tornws only), into ``report["storm"]``;
    ``--failover``: a Redis failover's cost, into ``report["failover"]``."""
    if getattr(args, "failover", False):
        from .failover import failover

        progress("Redis failover: 4 cases (replica in sync or cut off, with and without WAIT)")
        report["failover"] = runner(failover())
    if getattr(args, "storm", False):
        from .storm import storm

        count = 200 if args.quick else 10_000
        progress(f"tornws: storm, {count} chat.json clients")
        report["storm"] = runner(storm(count, _cpus()))


def main(args: Any, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the bench as the ``tornws bench`` command parsed ``args``; return the exit status."""
    from . import report as reporting
    from .subjects import (
        ASYNCIO_SERVER,
        Cluster,
        Subject,
        builtin_subjects,
        deflate_subjects,
        floor_subject,
    )

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        import picows  # noqa: F401
    except ImportError:
        raise ConfigError("tornws bench needs picows: pip install -e '.[bench]'") from None
    subjects = builtin_subjects(
        Path(args.asyncio_server) if args.asyncio_server else ASYNCIO_SERVER
    )
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in subjects}
        if unknown:
            raise ConfigError(f"--only: unknown subject(s) {', '.join(sorted(unknown))}")
        subjects = [s for s in subjects if s.name in wanted or s.name == "asyncio"]
    if args.deflate:
        subjects += deflate_subjects(
            Path(args.asyncio_server) if args.asyncio_server else ASYNCIO_SERVER
        )
    if args.floor:
        subjects.append(floor_subject())
    if args.redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError("--redis needs redis-py: pip install -e '.[redis]'") from None
        subjects.append(Cluster("tornws×2+redis", groups=("fanout", "publish")))
    if args.url:
        if not args.pid:
            raise ConfigError("--url needs --pid: the server's process id, to read its CPU time")
        subjects.append(Subject(args.name, url=args.url, pid=args.pid))

    started = time.monotonic()

    def progress(text: str) -> None:
        err.write(f"[{time.monotonic() - started:6.1f}s] {text}\n")
        err.flush()

    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    select = getattr(args, "workloads", None)
    report = runner(
        run(
            subjects,
            args.quick,
            progress,
            args.scale,
            args.deflate,
            select=select,
            redis=bool(args.redis),
            soak=bool(getattr(args, "soak", False)),
            rounds=getattr(args, "rounds", 1),
        )
    )
    _extras(args, report, runner, progress)
    for counter in ("allocations", "instructions"):
        if getattr(args, counter, False):
            report[counter] = runner(
                _counts(subjects, counter, _count_plan(counter, args), progress)
            )
    out.write(reporting.table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(reporting.jsonable(report), indent=2) + "\n")
    if args.plot:
        reporting.plot(report, args.plot)
    return 1 if _failed(report) else 0


def _failed(report: dict[str, Any]) -> list[str]:
    """The subjects, and the counted lines, that failed."""
    failed = [name for name, s in report["subjects"].items() if s["error"]]
    return failed + [
        line
        for counter in ("allocations", "instructions")
        for line in report.get(counter, {}).get("errors", {})
    ]
