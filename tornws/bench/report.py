"""Turning a bench report into a table, JSON and a plot."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "baseline",
    "chat_to_broadcast",
    "fills",
    "growth",
    "jsonable",
    "plot",
    "ratio",
    "ratio_runs",
    "soaked",
    "summary",
    "table",
    "unfilled",
]

BASELINE = "asyncio"


def _figure(measurement: Any) -> float:
    """The primary figure: server CPU µs per unit, or KiB per connection for memory."""
    if measurement.bytes_per_unit is not None:
        return float(measurement.bytes_per_unit) / 1024
    return float(measurement.cpu_us_per_unit)


def baseline(report: dict[str, Any], workload: str) -> str:
    """The subject ``workload``'s ratios are to: the asyncio version (with
    permessage-deflate for the ``--deflate`` lines)."""
    for entry in report["workloads"]:
        if entry["name"] == workload:
            return str(entry.get("baseline", BASELINE))
    return BASELINE


def ratio(report: dict[str, Any], subject: str, workload: str) -> float:
    """``subject``'s primary figure over its baseline's (the asyncio version), same run;
    NaN if missing."""
    try:
        mine = report["subjects"][subject]["results"][workload]
        base = report["subjects"][baseline(report, workload)]["results"][workload]
    except KeyError:
        return math.nan
    base_figure = _figure(base)
    return _figure(mine) / base_figure if base_figure else math.nan


def ratio_runs(report: dict[str, Any], subject: str, workload: str) -> list[float]:
    """With ``--rounds``: ``subject``'s figure over its baseline's in each round (the
    two ran one after the other in every round); empty without rounds."""
    try:
        mine = report["subjects"][subject]["results"][workload].runs
        base = report["subjects"][baseline(report, workload)]["results"][workload].runs
    except KeyError:
        return []
    if len(mine) != len(base) or not all(base):
        return []
    return [round(m / b, 3) for m, b in zip(mine, base)]


_PACED = re.compile(r"broadcast (\d+) paced")


def growth(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """How a subject's CPU per delivery of a paced broadcast changes with the number of
    receivers: per subject that ran two sizes or more, ``figures`` ({receivers: µs}) and
    ``spread``, the largest figure over the smallest, minus 1 (0.2: within 20%)."""
    result = {}
    for subject, data in report["subjects"].items():
        figures = {}
        for name, m in data["results"].items():
            match = _PACED.fullmatch(name)
            if match:
                figures[int(match.group(1))] = round(_figure(m), 2)
        if len(figures) > 1 and min(figures.values()) > 0:
            spread = max(figures.values()) / min(figures.values()) - 1
            result[subject] = {"figures": dict(sorted(figures.items())), "spread": round(spread, 3)}
    return result


_CHAT = re.compile(r"(chat|chat\.json|live) (\d+) (paced|burst)")


def chat_to_broadcast(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per subject, each chat line's (and /live channel line's) CPU per delivery over
    the same subject's ``broadcast`` line with as many receivers, paced or burst alike
    (same run): what a chat room or a channel costs beyond the bare fan-out."""
    result: dict[str, dict[str, float]] = {}
    for subject, data in report["subjects"].items():
        results = data["results"]
        for name, m in results.items():
            match = _CHAT.fullmatch(name)
            bare = results.get(f"broadcast {match.group(2)} {match.group(3)}") if match else None
            if bare is not None and _figure(bare):
                result.setdefault(subject, {})[name] = round(_figure(m) / _figure(bare), 3)
    return result


def _fmt(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _times(ratio: float) -> str:
    return "—" if math.isnan(ratio) else f"{ratio:.2f}×"


_FILL = re.compile(r"(live|chat|chat\.json) fill (\d+)")


def fills(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per subject, each ``live fill N`` / ``chat fill N`` line's seconds to fill the
    channel or room (all in, or as far as it got: see :func:`unfilled`)."""
    result: dict[str, dict[str, float]] = {}
    for subject, data in report["subjects"].items():
        for name, m in data["results"].items():
            if _FILL.fullmatch(name):
                result.setdefault(subject, {})[name] = round(m.seconds, 2)
    return result


def unfilled(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per subject, each chat fill line that did not get everyone in: how many did."""
    result: dict[str, dict[str, int]] = {}
    for subject, data in report["subjects"].items():
        for name, m in data["results"].items():
            details = m.details
            if _FILL.fullmatch(name) and details and details["joined"] < details["members"]:
                result.setdefault(subject, {})[name] = int(details["joined"])
    return result


def soaked(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per subject, each ``soak`` line's own figures (see :func:`tornws.bench.load.soak`)."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for subject, data in report["subjects"].items():
        for name, m in data["results"].items():
            if name.startswith("soak ") and m.details:
                result.setdefault(subject, {})[name] = dict(m.details)
    return result


def _scale_lines(report: dict[str, Any]) -> list[str]:
    scaled = {
        (subject, name): m.details["kib_per_receiver"]
        for subject, data in report["subjects"].items()
        for name, m in data["results"].items()
        if m.details.get("kib_per_receiver") is not None
    }
    if not scaled:
        return []
    lines = ["--scale: server memory per receiver grown for that line (RSS):"]
    for (subject, name), kib in scaled.items():
        lines.append(f"  {subject:<15} {name}: {kib:.2f} KiB")
    return [*lines, ""]


def _storm_lines(report: dict[str, Any]) -> list[str]:
    storm = report.get("storm")
    if not storm:
        return []
    return [
        f"storm: {storm['clients']} chat.json clients on Redis (filled in "
        f"{storm['fill_seconds']} s); SIGTERM → old process gone "
        f"{storm['old_process_exited_s']} s (close codes {storm['close_codes']}), "
        f"new one listening {storm['new_process_listening_s']} s",
        f"  all back and resumed after {storm['all_back_s']} s (p50 {storm['back_p50_s']} s, "
        f"p99 {storm['back_p99_s']} s); {storm['attempts']} attempts, at most "
        f"{storm['attempts_max']} for one client; refused: {storm['refused']} "
        f"(by the new process: {storm['refused_by_new_process']})",
        f"  resumes recovered: {storm['recovered']}, not: {storm['not_recovered']}; every line "
        f"sent meanwhile exactly once: {storm['every_line_once']} of {storm['clients']}",
        f"  closed after the upgrade before told resumed (then tried again): "
        f"{storm.get('dropped_before_resumed', {})}; upgraded, never told resumed nor "
        f"closed within 60 s: {storm['upgraded_never_resumed']}",
        "",
    ]


def _failover_lines(report: dict[str, Any]) -> list[str]:
    cases = report.get("failover")
    if not cases:
        return []
    from .failover import lines

    return [*lines(cases), ""]


def _soak_lines(report: dict[str, Any]) -> list[str]:
    soaks = soaked(report)
    if not soaks:
        return []
    lines = []
    lines.append(
        "soak (probe: one echo every 10 ms; GC: passes over 20 ms in the window, longest "
        "in the process's life; RSS growth after the first third; open files idle → after):"
    )
    for subject, entry in soaks.items():
        for name, d in entry.items():
            gc = (
                f"GC >20 ms: {d['gc_over_20ms']}, longest {d['gc_longest_ms']} ms"
                if d.get("gc_longest_ms") is not None
                else "GC: —"
            )
            lines.append(
                f"  {subject:<15} {name}: probe worst {d['probe_worst_ms']} ms, "
                f"{d['probes_over_50ms']} of {d['probes']} over 50 ms; {gc}; "
                f"RSS +{d['rss_growth_mib']} MiB; files {d['open_files_idle']} → "
                f"{d['open_files_after']}; failed connects {d['connects_failed']}"
            )
    lines.append("")
    return lines


def _count_lines(report: dict[str, Any]) -> list[str]:
    """The ``--allocations`` and ``--instructions`` blocks, failed lines included."""
    lines: list[str] = []
    for counter, title in (
        ("allocations", "heap allocations per delivery (memray"),
        ("instructions", "user-space instructions per delivery (callgrind"),
    ):
        counts = report.get(counter)
        if not counts:
            continue
        lines.append(
            f"{title}; paced broadcast, 32 B, or 1 KiB of chat JSON for the deflate "
            "subjects; by receivers; spread: max/min − 1):"
        )
        for subject, figures in counts["per_delivery"].items():
            shown = " / ".join(f"{n}: {v:,.2f}" for n, v in figures.items())
            values = [v for v in figures.values() if v > 0]
            spread = f"   spread {max(values) / min(values) - 1:+.1%}" if len(values) > 1 else ""
            lines.append(f"  {subject:<15} {shown}{spread}")
        for line, error in counts.get("errors", {}).items():
            lines.append(f"  {line}: FAILED: {error}")
        lines.append("")
    return lines


def table(report: dict[str, Any]) -> str:
    """Per workload, a block of subjects: figure, ratio, throughput, latency, load-gen CPU."""
    machine = report["machine"]
    lines = [
        f"tornws bench{' --quick' if report['quick'] else ''} — {machine['date']}, "
        f"{machine['cpu']} ×{machine['cpus']}, Python {machine['python']}, "
        f"tornado {machine['tornado']}, websockets {machine.get('websockets', '?')}, "
        f"picows {machine.get('picows', '?')}",
        f"server pinned to CPU {report['pinning']['server_cpu']}, "
        f"load generator to CPU {report['pinning']['loadgen_cpu']}; "
        "figure = server CPU µs per unit (memory: KiB per connection); "
        f"ratio = figure / {BASELINE}'s (deflate lines: asyncio+deflate's), same run",
        "",
    ]
    subjects = report["subjects"]
    for name, data in subjects.items():
        if data["error"]:
            lines.append(f"{name}: FAILED: {data['error']}")
        else:
            lines.append(f"{name}: checks passed: {', '.join(data['checks'])}")
    lines.append("")
    header = (
        f"  {'subject':<15} {'figure':>9} {'ratio':>7} {'units/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'loadgen':>8}"
    )
    for workload in report["workloads"]:
        name = workload["name"]
        lines.append(f"{name}  (unit: {workload['unit']})")
        lines.append(header)
        for subject, data in subjects.items():
            m = data["results"].get(name)
            if m is None:
                continue  # a subject that does not run this workload
            memory = m.bytes_per_unit is not None
            loadgen = m.loadgen_cpu / m.seconds * 100 if m.seconds else math.nan
            lines.append(
                f"  {subject:<15} {_fmt(_figure(m)):>9} {_times(ratio(report, subject, name)):>7}"
                f" {'' if memory else _fmt(m.per_second, 0):>11}"
                f" {'' if memory else _fmt(m.latency_ms(0.5), 2):>8}"
                f" {'' if memory else _fmt(m.latency_ms(0.99), 2):>8}"
                f" {'' if memory else _fmt(loadgen, 0) + '%':>8}"
                + _rounds_cell(report, subject, name)
            )
        lines.append("")
    lines += _count_lines(report)
    spreads = growth(report)
    if spreads:
        lines.append(
            "paced broadcast, server CPU µs per delivery by receivers (spread: max/min − 1):"
        )
        for subject, entry in spreads.items():
            figures = " / ".join(f"{n}: {_fmt(v)}" for n, v in entry["figures"].items())
            lines.append(f"  {subject:<15} {figures}   spread {entry['spread']:+.0%}")
        lines.append("")
    lines += _scale_lines(report)
    chats = chat_to_broadcast(report)
    if chats:
        lines.append(
            "chat rooms and /live channels, CPU per delivery over the same subject's "
            "/broadcast (same run):"
        )
        for subject, entry in chats.items():
            figures = "  ".join(f"{name}: {value:.2f}×" for name, value in entry.items())
            lines.append(f"  {subject:<15} {figures}")
        lines.append("")
    filled, short = fills(report), unfilled(report)
    if filled:
        lines.append(
            "seconds to fill one /live channel (presence on) or chat room, 100 handshakes in "
            "flight (a room not full in 120 s: how many got in):"
        )
        for subject, entry in filled.items():
            figures = "  ".join(
                f"{name}: {value:.1f} s"
                + (f" ({short[subject][name]} in)" if name in short.get(subject, {}) else "")
                for name, value in entry.items()
            )
            lines.append(f"  {subject:<15} {figures}")
        lines.append("")
    lines += _soak_lines(report) + _storm_lines(report) + _failover_lines(report)
    lines.append(summary(report))
    return "\n".join(lines) + "\n"


def _rounds_cell(report: dict[str, Any], subject: str, workload: str) -> str:
    m = report["subjects"][subject]["results"][workload]
    if not m.runs:
        return ""
    ratios = ratio_runs(report, subject, workload)
    shown = ", ".join(
        f"{_fmt(v)}" + (f" ({r:.2f}×)" if ratios else "") for v, r in zip(m.runs, ratios or m.runs)
    )
    return f"   rounds: {shown}"


def summary(report: dict[str, Any]) -> str:
    """The README tables: per baseline, one row per workload, figure and ratio per subject."""
    tables = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for workload in report["workloads"]:
        groups.setdefault(workload.get("baseline", BASELINE), []).append(workload)
    for workloads in groups.values():
        subjects = [
            name
            for name, data in report["subjects"].items()
            if any(w["name"] in data["results"] for w in workloads)
        ]
        rows = ["| workload | " + " | ".join(subjects) + " |", "|---|" + "---|" * len(subjects)]
        for workload in workloads:
            cells = []
            for subject in subjects:
                m = report["subjects"][subject]["results"].get(workload["name"])
                if m is None:
                    cells.append("—")
                else:
                    r = ratio(report, subject, workload["name"])
                    cells.append(f"{_fmt(_figure(m))} ({_times(r)})")
            unit = workload["unit"]
            unit = unit if unit.startswith("KiB/") else f"µs/{unit}"
            rows.append(f"| {workload['name']} ({unit}) | " + " | ".join(cells) + " |")
        spreads = growth({**report, "subjects": {s: report["subjects"][s] for s in subjects}})
        if spreads and workloads[0].get("baseline", BASELINE) == BASELINE:
            cells = [f"{spreads[s]['spread']:+.0%}" if s in spreads else "—" for s in subjects]
            row = "| paced cost per delivery, spread over receivers | " + " | ".join(cells)
            rows.append(row + " |")
        tables.append("\n".join(rows))
    return "\n\n".join(tables)


def jsonable(report: dict[str, Any]) -> dict[str, Any]:
    """The report with measurements as dicts and ratios added."""
    subjects = {}
    for name, data in report["subjects"].items():
        results = {}
        for workload, m in data["results"].items():
            entry = m.as_dict()
            entry["ratio_to_asyncio"] = round(ratio(report, name, workload), 3)
            if m.runs:
                entry["ratio_runs"] = ratio_runs(report, name, workload)
            results[workload] = entry
        subjects[name] = {"checks": data["checks"], "error": data["error"], "results": results}
    rest = {k: v for k, v in report.items() if k != "subjects"}
    return {
        **rest,
        "subjects": subjects,
        "paced_growth": growth(report),
        "chat_to_broadcast": chat_to_broadcast(report),
        "fill_seconds": fills(report),
        "unfilled": unfilled(report),
    }


def plot(report: dict[str, Any], path: str) -> None:
    """A grouped bar chart of the ratios to the asyncio version (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..exceptions import ConfigError

        raise ConfigError("--plot needs matplotlib: pip install -e '.[plot]'") from None
    workloads = [w["name"] for w in report["workloads"]]
    subjects = list(report["subjects"])
    width = 0.8 / len(subjects)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, subject in enumerate(subjects):
        values = [ratio(report, subject, w) for w in workloads]
        positions = [x + (i - (len(subjects) - 1) / 2) * width for x in range(len(workloads))]
        ax.bar(positions, values, width, label=subject)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=30, ha="right")
    ax.set_ylabel("server CPU per unit, × the asyncio version (memory: KiB/conn ×)")
    machine = report["machine"]
    ax.set_title(
        f"tornws bench, {machine['date']}: lower is better "
        f"(Python {machine['python']}, tornado {machine['tornado']}, "
        f"websockets {machine.get('websockets', '?')})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
