"""``tornws bench --storm``: a restart under load, and every client back and resumed.

One redis-server and ``tornws serve --broker … --restart`` on a fixed port; ``count``
``chat.json`` clients in one room, each knowing the last event it saw. Then:

1. the server is sent SIGTERM: it drains (upgrades answered 503 with ``Retry-After``,
   the connections closed with 1012 in batches spread over ``--drain-window``) and exits;
2. a new ``tornws serve`` on the same Redis takes the port as soon as it is free;
3. each client, from its 1012 on, reconnects the way ``tornws.js`` does: first after
   0.5 s, each failure doubling the delay up to 10 s, each delay randomised between half
   and all of it, asking for what it missed (``since=<epoch>:<id>``);
4. the first client back sends :data:`LINES` lines while the others are still away.

Reported: when the last client was back and resumed (from the SIGTERM), the spread of
reconnect times, how many attempts were refused and how (503 from the draining process,
no one listening, a connection the old process closed during the handshake, and any
refusal by the new process, which should be none), how many
resumes recovered, and whether every client got every line exactly once (live or
replayed). Needs redis-server and the ``redis`` extra. Linux only, like the bench.
``TORNWS_STORM_LOG=FILE`` keeps the servers' and Redis's output there.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..exceptions import ConfigError
from .subjects import Running, Subject, _free_port, raise_open_files_limit

__all__ = ["LINES", "MAX_DELAY", "MIN_DELAY", "storm"]

#: tornws.js's reconnect delays (seconds): the first, and the cap of the doubling.
MIN_DELAY = 0.5
MAX_DELAY = 10.0
#: Lines the first client back sends while others are still away.
LINES = 5
ROOM = "storm"


class _Client(WSListener):
    """One chat.json member: what it saw, and when it was back."""

    def __init__(self, member: _Member) -> None:
        super().__init__()
        self.member = member

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            self.member.closed(frame.get_close_code())
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind != WSMsgType.TEXT:
            return
        event = json.loads(frame.get_payload_as_bytes())
        member = self.member
        if "id" in event:
            member.epoch, member.last = event["epoch"], event["id"]
        if event["type"] == "message":
            member.lines[event["text"]] += 1
        elif event["type"] == "resumed":
            member.resumed(bool(event["recovered"]))
        elif event["type"] == "presence" and not member.greeted.done():
            member.greeted.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.member.closed(None)


class _Member:
    def __init__(self, index: int, report: _Report) -> None:
        self.index = index
        self.report = report
        self.epoch = ""
        self.last = 0
        self.lines: Counter[str] = Counter()
        self.transport: WSTransport | None = None
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.back: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Event = asyncio.Event()
        self.close_code: int | None = None  # (the first: the drain's)
        self.last_code: int | None = None

    def closed(self, code: Any) -> None:
        if code is not None:
            if self.close_code is None:
                self.close_code = int(code)
            self.last_code = int(code)
        self.lost.set()

    def resumed(self, recovered: bool) -> None:
        if not self.back.done():
            self.report.recovered[recovered] += 1
            self.back.set_result(time.perf_counter())

    async def connect(self, url: str) -> bool:
        """One attempt; ``True`` once upgraded."""
        since = f"&since={self.epoch}:{self.last}" if self.epoch else ""
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(
                    lambda: _Client(self),
                    f"{url}/chat/{ROOM}?nick=s{self.index}{since}",
                    read_buffer_init_size=4096,
                    extra_headers={"Sec-WebSocket-Protocol": "chat.json"},
                ),
                30,
            )
        except ConnectionRefusedError:
            self.report.refused["nobody listening"] += 1
            return False
        except WSError as exc:
            response = getattr(exc, "response", None)
            status = getattr(response, "status", None)
            body = getattr(exc, "raw_body", None) or getattr(response, "body", None) or b""
            why = "draining" if b"shutting down" in body else body.decode(errors="replace").strip()
            self.report.refused[f"HTTP {int(status) if status else '?'} {why}".strip()] += 1
            return False
        except (OSError, asyncio.TimeoutError) as exc:
            self.report.refused[type(exc).__name__] += 1
            return False
        if transport.is_disconnected:
            # picows returns from ws_connect, instead of raising, a transport already
            # closed when the connection is lost before it has read an answer (seen with
            # the draining process: its 503 logged, the client given a closed transport).
            new = self.report.listening > 0  # (the new process listens: refusals are its own)
            self.report.refused[
                "closed during the handshake" + ("" if new else " (old process)")
            ] += 1
            return False
        self.transport = transport
        return True

    async def come_back(self, url: str, started: float) -> None:
        """tornws.js's backoff, from the moment the connection was lost."""
        await self.lost.wait()
        attempt = 0
        while True:
            delay = min(MAX_DELAY, MIN_DELAY * 2**attempt)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            attempt += 1
            self.report.attempts += 1
            self.lost.clear()
            self.last_code = None
            if not await self.connect(url):
                continue
            lost = asyncio.ensure_future(self.lost.wait())
            back = asyncio.shield(self.back)
            await asyncio.wait((back, lost), timeout=60, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if self.back.done():
                break
            if not self.lost.is_set():  # upgraded, and neither told resumed nor closed
                back.cancel()
                self.report.never_resumed.append(self)
                return
            # Lost after the upgrade, before its resume was answered: try again, as
            # tornws.js does (counted by how the connection ended).
            back.cancel()
            code = self.last_code
            self.report.dropped[f"close {code}" if code else "disconnected"] += 1
        self.report.attempts_per_client.append(attempt)
        self.report.back_after.append(self.back.result() - started)


class _Report:
    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.recovered: Counter[bool] = Counter()
        self.attempts = 0
        self.attempts_per_client: list[int] = []
        self.back_after: list[float] = []
        #: Upgraded again, then closed before ``resumed`` (and tried again), by how.
        self.dropped: Counter[str] = Counter()
        #: Upgraded again, but neither ``resumed`` nor closed within 60 s.
        self.never_resumed: list[_Member] = []
        #: Seconds: the fill; from the SIGTERM to the old process's exit, to the new listening.
        self.filled = self.exited = self.listening = 0.0


def _start(name: str, command: list[str], cpu: int | None, log: Any, port: int) -> Running:
    """``command`` running, pinned to ``cpu``, its output into ``log``; not yet listening."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    return Running(Subject(name), f"ws://127.0.0.1:{port}", process.pid, process)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def storm(count: int, cpus: tuple[int | None, int | None] = (None, None)) -> dict[str, Any]:
    """Run the restart described in the module docstring with ``count`` clients; return
    its figures."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ConfigError("--storm needs redis-server (apt-get install redis-server)")
    raise_open_files_limit()
    redis_port, port = _free_port(), _free_port()
    log = open(os.environ.get("TORNWS_STORM_LOG", os.devnull), "wb")  # noqa: SIM115 - closed below
    redis = _start(
        "redis-server",
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        cpus[0], log, redis_port,
    )  # fmt: skip
    serve = [
        sys.executable, "-m", "tornws", "serve", "--port", str(port), "--restart",
        "--broker", f"redis://127.0.0.1:{redis_port}/0", "--log-level", "warning",
    ]  # fmt: skip
    url = f"ws://127.0.0.1:{port}"
    report = _Report()
    servers: list[Running] = []
    members = [_Member(i, report) for i in range(count)]
    try:
        redis.wait_listening(redis_port)
        servers.append(_start("tornws", serve, cpus[0], log, port))
        servers[0].wait_listening(port)
        await _fill(members, url, report)
        started = time.perf_counter()
        returns = [asyncio.ensure_future(m.come_back(url, started)) for m in members]
        assert servers[0].process is not None
        servers[0].process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(servers[0].process.wait, 60)
        report.exited = time.perf_counter() - started
        servers.append(_start("tornws (new)", serve, cpus[0], log, port))
        await asyncio.to_thread(servers[1].wait_listening, port, 30.0)
        report.listening = time.perf_counter() - started
        first = await _first_back(members)
        for i in range(LINES):
            assert first.transport is not None
            line = json.dumps({"type": "message", "text": f"line {i}"})
            first.transport.send(WSMsgType.TEXT, line.encode())
        await asyncio.wait_for(asyncio.gather(*returns), 300)
        deadline = time.monotonic() + 30
        while any(set(m.lines) != _WANTED for m in members) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return _figures(report, members)
    finally:
        for member in members:
            if member.transport is not None:
                member.transport.disconnect()
        for running in [*servers, redis]:
            running.stop()
        log.close()


_WANTED = {f"line {i}" for i in range(LINES)}
#: Refusals that are not the new process's: the old one's 503, no one listening, and a
#: connection closed during the handshake before the new process listened.
_NOT_THE_NEW_PROCESS = (
    "HTTP 503 draining",
    "nobody listening",
    "closed during the handshake (old process)",
)


async def _fill(members: list[_Member], url: str, report: _Report) -> None:
    """Every member in the room (100 handshakes in flight) and past an event with an id."""
    gate = asyncio.Semaphore(100)

    async def join(member: _Member) -> None:
        async with gate:
            if not await member.connect(url):
                raise ConfigError(f"client {member.index} could not join: {report.refused}")
            await asyncio.wait_for(member.greeted, 60)

    started = time.perf_counter()
    await asyncio.gather(*(join(m) for m in members))
    report.filled = time.perf_counter() - started
    report.refused.clear()
    deadline = time.monotonic() + 60  # (a join notice of the crowded room: an id to resume from)
    while any(not m.epoch for m in members):
        if time.monotonic() > deadline:
            raise ConfigError("not every client saw an event of the room")
        await asyncio.sleep(0.1)


def _figures(report: _Report, members: list[_Member]) -> dict[str, Any]:
    complete = sum(1 for m in members if set(m.lines) == _WANTED and max(m.lines.values()) == 1)
    back = report.back_after
    return {
        "clients": len(members),
        "fill_seconds": round(report.filled, 2),
        "close_codes": dict(Counter(str(m.close_code) for m in members)),
        "old_process_exited_s": round(report.exited, 2),
        "new_process_listening_s": round(report.listening, 2),
        "all_back_s": round(max(back), 2),
        "back_p50_s": round(_quantile(back, 0.5), 2),
        "back_p99_s": round(_quantile(back, 0.99), 2),
        "attempts": report.attempts,
        "attempts_max": max(report.attempts_per_client),
        "refused": dict(report.refused),
        "refused_by_new_process": sum(
            n for k, n in report.refused.items() if k not in _NOT_THE_NEW_PROCESS
        ),
        "recovered": report.recovered[True],
        "not_recovered": report.recovered[False],
        "every_line_once": complete,
        "dropped_before_resumed": dict(report.dropped),
        "upgraded_never_resumed": len(report.never_resumed),
    }


async def _first_back(members: list[_Member]) -> _Member:
    """The first client whose resume is answered."""
    pending = {asyncio.ensure_future(asyncio.shield(m.back)): m for m in members}
    done, rest = await asyncio.wait(pending, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    for future in rest:
        future.cancel()
    if not done:
        raise ConfigError("no client was back within 120 s")
    return pending[next(iter(done))]
