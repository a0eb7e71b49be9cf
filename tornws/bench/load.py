"""The load generator: picows clients (Cython, not Tornado's) driving one server.

Every workload returns a :class:`Measurement`: how many units it completed, over
what wall time, the server's and the load generator's CPU time over exactly that
window, and per-unit latencies. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..chat import CROWD_INTERVAL
from ..exceptions import TornwsError
from ..live import LIVE_SUBPROTOCOL
from .subjects import Running

__all__ = [
    "CheckFailed",
    "Client",
    "Fanout",
    "FanoutClient",
    "Measurement",
    "chat_fill",
    "check",
    "close_all",
    "deflate_memory",
    "echo",
    "handshakes",
    "idle_memory",
    "live_fill",
    "live_memory",
    "open_connections",
    "publish_path",
    "soak",
]

#: How long any single wait may take before the workload is declared stuck.
STUCK = 60.0


class CheckFailed(TornwsError, AssertionError):
    """The server answered wrongly (bytes, type, or not at all)."""


@dataclass
class Measurement:
    """One workload on one subject."""

    unit: str
    units: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: For memory workloads: bytes per connection (``server_cpu`` is then unused).
    bytes_per_unit: float | None = None
    #: When the workload ran several rounds and this is the median one: each round's
    #: CPU µs per unit, in the order they ran.
    rounds: list[float] = field(default_factory=list)
    #: With ``tornws bench --rounds N`` (N > 1), this being the median round: the primary
    #: figure (CPU µs per unit, or KiB per connection) of each round, in the order they ran.
    runs: list[float] = field(default_factory=list)
    #: Figures of this workload's own (``soak``: the probe's worst round trip, …).
    details: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def cpu_us_per_unit(self) -> float:
        return self.server_cpu / self.units * 1e6 if self.units else float("nan")

    @property
    def per_second(self) -> float:
        return self.units / self.seconds if self.seconds else float("nan")

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1e3
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[round(quantile * 100) - 1] * 1e3

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "units": self.units,
            "seconds": round(self.seconds, 4),
            "server_cpu_s": round(self.server_cpu, 4),
            "loadgen_cpu_s": round(self.loadgen_cpu, 4),
            "cpu_us_per_unit": round(self.cpu_us_per_unit, 3) if self.units else None,
            "per_second": round(self.per_second, 1) if self.seconds else None,
            "p50_ms": round(self.latency_ms(0.5), 3) if self.latencies else None,
            "p99_ms": round(self.latency_ms(0.99), 3) if self.latencies else None,
            "kib_per_connection": (
                round(self.bytes_per_unit / 1024, 2) if self.bytes_per_unit is not None else None
            ),
            **({"rounds_cpu_us_per_unit": self.rounds} if self.rounds else {}),
            **({"runs": self.runs} if self.runs else {}),
            **self.details,
        }


class _Window:
    """Measures server and load-generator CPU and wall time between start() and stop()."""

    def __init__(self, server: Running, measurement: Measurement) -> None:
        self.server = server
        self.measurement = measurement

    def start(self) -> None:
        self._cpu = self.server.cpu()
        self._own = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> None:
        m = self.measurement
        m.seconds = time.perf_counter() - self._wall
        m.server_cpu = self.server.cpu() - self._cpu
        m.loadgen_cpu = time.process_time() - self._own


class Client(WSListener):
    """One benchmark connection; ``handle(client, type, payload)`` gets each message."""

    def __init__(self, handle: Callable[[Client, WSMsgType, WSFrame], None] | None = None) -> None:
        super().__init__()
        self.handle = handle
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY):
            if self.handle is not None:
                self.handle(self, kind, frame)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def send(self, kind: WSMsgType, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.send(kind, payload)


async def open_connections(
    url: str,
    count: int,
    handle: Any = None,
    concurrency: int = 64,
    headers: dict[str, str] | None = None,
) -> list[Client]:
    """Open ``count`` connections to ``url``, at most ``concurrency`` handshakes at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Client:
        async with gate:
            _, client = await asyncio.wait_for(
                ws_connect(
                    lambda: Client(handle), url, read_buffer_init_size=2048, extra_headers=headers
                ),
                STUCK,
            )
            assert isinstance(client, Client)
            return client

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(clients: list[Any], concurrency: int = 256) -> None:
    """Close each connection and wait for the server to close TCP (its side keeps TIME_WAIT)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client) -> None:
        transport = client.transport
        if transport is None:
            return
        async with gate:
            transport.send_close(WSCloseCode.OK)
            try:
                await asyncio.wait_for(transport.wait_disconnected(), 10)
            except asyncio.TimeoutError:
                transport.disconnect()

    await asyncio.gather(*(one(client) for client in clients))


async def _wait(condition: Callable[[], bool], what: str, timeout: float = STUCK) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CheckFailed(f"stuck: {what} not done after {timeout:.0f}s")
        await asyncio.sleep(0.001)


async def echo(server: Running, connections: int, size: int, duration: float) -> Measurement:
    """Each connection sends a text message and the next one when the echo is back."""
    payload = b"x" * size
    result = Measurement("round trip")
    sent_at: dict[Client, float] = {}
    running = True
    in_flight = 0

    def on_echo(client: Client, kind: WSMsgType, frame: WSFrame) -> None:
        nonlocal in_flight
        now = time.perf_counter()
        if frame.payload_size != size:
            raise CheckFailed(f"echo of {size} bytes came back with {frame.payload_size}")
        result.latencies.append(now - sent_at[client])
        if running:
            sent_at[client] = now
            client.send(WSMsgType.TEXT, payload)
        else:
            in_flight -= 1

    clients = await open_connections(f"{server.url}/echo", connections, on_echo)
    window = _Window(server, result)
    window.start()
    for client in clients:
        sent_at[client] = time.perf_counter()
        client.send(WSMsgType.TEXT, payload)
    await asyncio.sleep(duration)
    in_flight = connections
    running = False
    await _wait(lambda: in_flight == 0, "echo replies in flight")
    window.stop()
    result.units = len(result.latencies)
    await close_all(clients)
    return result


class FanoutClient(WSListener):
    """A /broadcast receiver, as cheap per delivery as the load generator can make it.

    Messages on a connection arrive in publish order, so the n-th message a
    receiver gets in a run is message n: no payload parsing per delivery
    (``verify`` checks that order, in ``--quick`` runs).
    """

    def __init__(self, fanout: Fanout) -> None:
        super().__init__()
        self.fanout = fanout
        self.transport: WSTransport | None = None
        self.count = 0
        self.warm = False
        self.inflater: Any = None  # permessage-deflate, only to verify
        self.replies = 0  # /live: subscribe results received

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.fanout.route == "live":
            for command in _subscribes(LIVE_CHANNELS):
                transport.send(WSMsgType.TEXT, command)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind != WSMsgType.TEXT:
            if kind == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        fanout = self.fanout
        fanout.received += 1
        payload = b""
        if fanout.verify:  # (inflating every frame, warm-ups too: contexts carry over)
            payload = frame.get_payload_as_bytes()
            if frame.rsv1:
                if self.inflater is None:
                    self.inflater = zlib.decompressobj(-15)
                payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        if fanout.route == "live" and not fanout.measuring:
            # Registered once every subscribe has its result (warm-up publications and
            # their pushes are only waited out).
            fanout.last_received = time.perf_counter()
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"id"'):
                if b'"error"' in payload:
                    fanout.error = f"live: subscribe refused: {payload.decode()}"
                self.replies += 1
                if self.replies == LIVE_CHANNELS:
                    self.warm = True
                    fanout.warm += 1
            else:
                fanout.warm_pushes += 1
            return
        # A warm-up ("w", a few bytes compressed) proves the receiver is registered; one
        # arriving late, after measuring began (a slow server), is not a measured message.
        if not fanout.measuring or frame.payload_size < 8:
            fanout.last_received = time.perf_counter()
            if not self.warm:
                self.warm = True
                fanout.warm += 1
            return
        if fanout.route in ("chat", "chat.json") and _notice(fanout.route, frame):
            return  # a crowded room's joins and leaves (from 1000 members): not a message
        index = self.count
        self.count = index + 1
        if fanout.verify and fanout.index_of(payload) != index:
            fanout.error = f"broadcast: message {index} arrived out of order"
            fanout.reached.set()  # stop waiting: run() raises it
            return
        counts = fanout.counts
        if index >= len(counts):
            fanout.error = f"{fanout.route}: a receiver got {index + 1} messages of {len(counts)}"
            fanout.reached.set()
            return
        delivered = counts[index] + 1
        counts[index] = delivered
        if delivered == fanout.expected:  # the last receiver got message `index`
            fanout.latencies.append(time.perf_counter() - fanout.sent_at[index])
            if len(fanout.latencies) >= fanout.target:
                fanout.reached.set()


def _notice(route: str, frame: WSFrame) -> bool:
    """Whether ``frame`` of a chat ``route`` is a notice (``* …`` in plain text; a JSON
    event whose type is not ``message``), not a chat line."""
    head = frame.get_payload_as_memoryview()
    if route == "chat":
        return len(head) > 0 and head[0] == ord("*")
    return len(head) > 9 and head[9] != ord("m")  # {"type":"message",…


#: The fan-out routes: /broadcast, one chat room in plain text or in chat.json, and
#: /live channels.
ROUTES = ("broadcast", "chat", "chat.json", "live")

#: /live: the channels every receiver subscribes to, and their names.
LIVE_CHANNELS = 10
LIVE_CHANNEL = "bench.{}"


def _subscribes(channels: int, first: int = 0, presence: bool = False) -> list[bytes]:
    """The ``subscribe`` commands of a /live receiver: channels ``first`` ... ``first +
    channels - 1`` (ids 1, 2, ...)."""
    extra = ', "presence": true' if presence else ""
    return [
        f'{{"id": {i + 1}, "type": "subscribe", "channel": "{LIVE_CHANNEL.format(first + i)}"'
        f"{extra}}}".encode()
        for i in range(channels)
    ]


#: Source addresses the receivers are spread over (127.0.0.2 …): each address has its
#: own ephemeral ports (about 28,000 here) towards the server's one address and port.
SOURCES = 250


async def _from_source(url: Any, *, index: int) -> socket.socket:
    """A socket connected to ``url``'s host and port from 127.0.0.<2 + index % SOURCES>."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind((f"127.0.0.{2 + index % SOURCES}", 0))
        await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    except BaseException:
        sock.close()
        raise
    return sock


class Fanout:
    """Receivers on one fan-out route; one of them (the first) also sends.

    ``route``: ``"broadcast"`` (``/broadcast``: everyone, sender included, gets each
    message), ``"chat"`` (one plain-text chat room: everyone but the sender gets
    ``b0: <line>``), ``"chat.json"`` (the same room in JSON: everyone, sender
    included, gets a message event) or ``"live"`` (``/live``: every receiver
    subscribes to the :data:`LIVE_CHANNELS` channels; a publisher of its own, not
    subscribed, publishes message ``i`` to channel ``i % LIVE_CHANNELS``, and each
    publication reaches every receiver as a ``pub`` push).

    ``offer``: a ``Sec-WebSocket-Extensions`` offer each receiver sends (the
    receivers count compressed frames without inflating them, unless ``verify``).
    """

    def __init__(
        self,
        server: Running,
        verify: bool = False,
        offer: str | None = None,
        route: str = "broadcast",
    ) -> None:
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, not {route!r}")
        self.server = server
        self.verify = verify
        self.offer = offer
        self.route = route
        self.clients: list[FanoutClient] = []
        self.counts: list[int] = []
        self.sent_at: list[float] = []
        self.latencies: list[float] = []
        self.expected = 0
        self.warm = 0
        self.measuring = False
        self.error: str | None = None  # what verify found wrong, if anything
        self.target = 0
        self.reached = asyncio.Event()
        self.last_received = 0.0
        #: Text frames received by all receivers, warm-ups included.
        self.received = 0
        #: /live: warm-up publications' pushes received (grow waits for all of them).
        self.warm_pushes = 0
        #: /live: the publisher (not a receiver; its replies are not counted).
        self.publisher: Client | None = None

    async def grow(self, receivers: int) -> None:
        """Have ``receivers`` connections in all, each proven to receive broadcasts."""
        gate = asyncio.Semaphore(64)
        headers = {"Sec-WebSocket-Extensions": self.offer} if self.offer else {}
        if self.route == "live":
            headers["Sec-WebSocket-Protocol"] = LIVE_SUBPROTOCOL
        elif self.route != "broadcast":
            headers["Sec-WebSocket-Protocol"] = self.route
        # A cluster (several processes on one broker) spreads its receivers over all.
        urls: list[str] = getattr(self.server, "urls", None) or [self.server.url]

        def path(index: int) -> str:
            if self.route in ("broadcast", "live"):
                return f"/{self.route}"
            return f"/chat/bench?nick=b{index}"

        if self.route == "live" and self.publisher is None:
            (self.publisher,) = await open_connections(
                f"{urls[0]}/live", 1, lambda client, kind, frame: None, headers=headers
            )

        async def one(index: int) -> FanoutClient:
            async with gate:
                _, client = await asyncio.wait_for(
                    ws_connect(
                        lambda: FanoutClient(self),
                        f"{urls[index % len(urls)]}{path(index)}",
                        read_buffer_init_size=2048,
                        extra_headers=headers or None,
                        socket_factory=functools.partial(_from_source, index=index),
                        # (picows's default is 5 s: too short for a server under valgrind
                        # answering a chat room's growing presence list)
                        websocket_handshake_timeout=STUCK,
                    ),
                    STUCK,
                )
                assert isinstance(client, FanoutClient)
                return client

        start = len(self.clients)
        self.clients += await asyncio.gather(*(one(i) for i in range(start, receivers)))
        deadline = time.monotonic() + STUCK
        while self.warm < len(self.clients):
            if self.error:
                raise CheckFailed(self.error)
            if time.monotonic() > deadline:
                raise CheckFailed(f"only {self.warm} of {receivers} receivers registered")
            if self.route != "live":  # (live receivers count their subscribe results)
                self._sender().send(WSMsgType.TEXT, self._line(b"w"))
            await asyncio.sleep(0.25 if self.route != "live" else 0.01)
        if self.route == "live":  # one publication on each channel, end to end
            self.warm_pushes = 0
            for channel in range(LIVE_CHANNELS):
                self._sender().send(WSMsgType.TEXT, self._line(b"w", channel))
            # Every push of them, not just quiet: a slow server (valgrind) may take longer
            # than the quiet wait below to push the first, and a late one is no measured one.
            wanted = LIVE_CHANNELS * len(self.clients)
            while self.warm_pushes < wanted:
                if time.monotonic() > deadline:
                    raise CheckFailed(f"live: {self.warm_pushes} of {wanted} warm-up pushes")
                await asyncio.sleep(0.01)
        # Stray warm-ups must not land in the measured window: wait for quiet. A chat
        # room's joins may still be due in a crowd's notice (at most CROWD_INTERVAL
        # after the first of them): a frame to every member, naming hundreds, that would
        # fall in the window and be counted as deliveries.
        quiet = 0.3 + (CROWD_INTERVAL if self.route in ("chat", "chat.json") else 0.0)
        while time.perf_counter() - self.last_received < quiet:
            if time.monotonic() > deadline:
                raise CheckFailed("broadcast warm-up never went quiet")
            await asyncio.sleep(0.05)

    async def run(self, messages: int, paced: bool, chat: bool = False) -> Measurement:
        """Send ``messages`` 32-byte messages (``chat``: about 1 KiB of chat-like JSON),
        paced (one at a time) or in one burst."""
        result = Measurement("delivery")
        receivers = len(self.clients)
        if self.route == "chat":  # plain text: the sender does not get its own line
            receivers -= 1
        self.expected = receivers
        self.counts = [0] * messages
        self.sent_at = [0.0] * messages
        self.latencies = []
        if chat:
            payloads = [f"{i:08d}".encode() + _chat_json(i) for i in range(messages)]
        else:
            payloads = [f"{i:08d}".encode().ljust(32, b".") for i in range(messages)]
        payloads = [self._line(payload, i) for i, payload in enumerate(payloads)]
        sender = self._sender()
        for client in self.clients:
            client.count = 0
        self.measuring = True
        window = _Window(self.server, result)
        window.start()
        try:
            for i, payload in enumerate(payloads):
                self.sent_at[i] = time.perf_counter()
                sender.send(WSMsgType.TEXT, payload)
                if paced:
                    await self._reach(i + 1)
            await self._reach(messages)
        finally:
            self.measuring = False
        window.stop()
        result.units = messages * receivers
        result.latencies = self.latencies
        return result

    def _sender(self) -> WSTransport:
        sender = self.publisher if self.route == "live" else self.clients[0]
        assert sender is not None and sender.transport is not None
        return sender.transport

    def _line(self, payload: bytes, index: int = 0) -> bytes:
        """What the sender sends to publish ``payload`` (message ``index``) on this route."""
        if self.route == "chat.json":
            return json.dumps({"type": "message", "text": payload.decode()}).encode()
        if self.route == "live":
            channel = LIVE_CHANNEL.format(index % LIVE_CHANNELS)
            return json.dumps(
                {"id": index, "type": "publish", "channel": channel, "data": payload.decode()}
            ).encode()
        return payload

    def index_of(self, received: bytes) -> int:
        """The index of the measured message ``received`` is (``verify`` only)."""
        if self.route == "chat":
            return int(received[4:12])  # "b0: 00000012..."
        if self.route == "chat.json":
            return int(json.loads(received)["text"][:8])
        if self.route == "live":
            return int(json.loads(received)["data"][:8])
        return int(received[:8])

    async def _reach(self, delivered: int) -> None:
        """Wait until ``delivered`` messages have reached every receiver."""
        self.target = delivered
        if self.error:
            raise CheckFailed(self.error)
        if len(self.latencies) < delivered:
            self.reached.clear()
            try:
                await asyncio.wait_for(self.reached.wait(), STUCK)
            except asyncio.TimeoutError:
                missing = sum(self.expected - c for c in self.counts[:delivered])
                raise CheckFailed(
                    f"broadcast: {missing} deliveries missing after {STUCK:.0f}s"
                ) from None
        if self.error:
            raise CheckFailed(self.error)

    async def close(self) -> None:
        await close_all([*self.clients, *([self.publisher] if self.publisher else [])])


_WORDS = (
    "the", "a", "to", "and", "of", "in", "is", "it", "you", "that", "for", "on", "was", "with",
    "as", "have", "be", "at", "not", "this", "but", "they", "meeting", "tomorrow", "deploy",
    "server", "latency", "room", "message", "tornado", "python", "websocket", "broadcast",
    "coffee", "lunch", "release", "tests", "green", "red", "review", "merge", "branch", "fix",
    "bug", "ship",
)  # fmt: skip


def _chat_json(index: int) -> bytes:
    """About 1 KiB of chat events as JSON, different for each index (deterministic)."""
    rng = random.Random(index)
    events: list[str] = []
    while sum(len(event) for event in events) < 1000:
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14)))
        events.append(
            f'{{"type":"message","room":"lobby","nick":"guest-{rng.randint(1, 999)}",'
            f'"id":{rng.randint(1, 10**6)},"text":"{text}"}}'
        )
    return ("[" + ",".join(events) + "]").encode()


async def deflate_memory(server: Running, fanout: Fanout, count: int) -> Measurement:
    """RSS growth of the server per connection that negotiated permessage-deflate and
    received compressed messages (``fanout.offer``), over ``count`` connections."""
    result = Measurement("connection")
    await asyncio.sleep(1.0)
    before = server.rss()
    await fanout.grow(count)
    await fanout.run(5, paced=True, chat=True)
    await asyncio.sleep(1.0)
    result.units = count
    result.bytes_per_unit = (server.rss() - before) / count
    return result


async def handshakes(server: Running, count: int, concurrency: int = 50) -> Measurement:
    """Open and close ``count`` connections to /echo, ``concurrency`` at a time."""
    result = Measurement("handshake")
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            transport, _ = await asyncio.wait_for(
                ws_connect(
                    Client,
                    f"{server.url}/echo",
                    read_buffer_init_size=2048,
                    websocket_handshake_timeout=STUCK,  # (picows's own default: 5 s)
                ),
                STUCK,
            )
            result.latencies.append(time.perf_counter() - start)
            transport.send_close(WSCloseCode.OK)
            try:
                await asyncio.wait_for(transport.wait_disconnected(), 10)
            except asyncio.TimeoutError:
                transport.disconnect()

    window = _Window(server, result)
    window.start()
    await asyncio.gather(*(one() for _ in range(count)))
    window.stop()
    result.units = count
    return result


async def idle_memory(server: Running, count: int, settle: float = 1.0) -> Measurement:
    """RSS growth of the server per idle connection on /echo, over ``count`` connections."""
    result = Measurement("connection")
    await asyncio.sleep(settle)
    before = server.rss()
    clients = await open_connections(f"{server.url}/echo", count)
    await asyncio.sleep(settle)
    after = server.rss()
    result.units = count
    result.bytes_per_unit = (after - before) / count
    await close_all(clients)
    return result


async def _gc_figures(server: Running) -> dict[str, float] | None:
    """The server's collector figures from ``/metrics`` (tornws only: ``None`` when the
    server has no such endpoint or no ``prometheus_client``)."""
    import urllib.request

    url = server.url.replace("ws://", "http://", 1) + "/metrics"

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())
        except OSError:
            return None

    text = await asyncio.to_thread(fetch)
    if text is None:
        return None
    figures: dict[str, float] = {}
    for line in text.splitlines():
        for name, key in (
            ('tornws_gc_longest_pause_seconds{generation="', "longest_"),
            ('tornws_gc_pause_seconds_count{generation="', "count_"),
            ('tornws_gc_pause_seconds_bucket{generation="', "le20_"),
        ):
            if line.startswith(name):
                generation = line[len(name)]
                if key == "le20_" and 'le="0.02"' not in line:
                    continue
                figures[key + generation] = float(line.rsplit(" ", 1)[1])
    return figures or None


def _gc_window(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float | int | None]:
    """The longest pass in the process's life, and the passes over 20 ms between
    ``before`` and ``after`` (``None`` each without figures)."""
    if before is None or after is None:
        return {"gc_longest_ms": None, "gc_over_20ms": None}

    def over(figures: dict[str, float]) -> float:
        return sum(figures.get(f"count_{g}", 0) - figures.get(f"le20_{g}", 0) for g in "012")

    longest = max(v for k, v in after.items() if k.startswith("longest_"))
    return {
        "gc_longest_ms": round(longest * 1e3, 1),
        "gc_over_20ms": int(over(after) - over(before)),
    }


def _open_files(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


async def _churn(url: str, rate: int, stop: float, done: list[bool]) -> None:
    """Until ``stop``, ``rate`` new connections to ``url`` a second, each closed once open;
    ``done`` gets whether each made it."""

    async def one() -> None:
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(Client, url, read_buffer_init_size=2048), STUCK
            )
            transport.send_close(WSCloseCode.OK)
            await asyncio.wait_for(transport.wait_disconnected(), 10)
            done.append(True)
        except (OSError, asyncio.TimeoutError):
            done.append(False)

    tasks: set[asyncio.Task[None]] = set()
    begin, index = time.perf_counter(), 0
    while time.perf_counter() < stop:
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    await asyncio.gather(*tasks)


async def soak(server: Running, idle: int, rate: int, seconds: float) -> Measurement:
    """``idle`` connections on /echo, then ``rate`` new connections a second (each
    opened, then closed) for ``seconds``, while a probe connection sends an echo every
    10 ms: its worst round trip is what a client of a stalling server sees. Also: the
    server's longest collector pass and the passes over 20 ms in the window (tornws:
    from ``/metrics``), RSS growth after the first third (30 s of 90), open files
    before and after. The figure: server CPU per churned connection."""
    result = Measurement("connect")
    url = f"{server.url}/echo"
    clients = await open_connections(url, idle, concurrency=100)
    received: asyncio.Queue[float] = asyncio.Queue()
    (probe,) = await open_connections(
        url, 1, handle=lambda c, k, f: received.put_nowait(time.perf_counter())
    )
    await asyncio.sleep(1.0)
    files_before = _open_files(server.pid)
    gc_before = await _gc_figures(server)
    stop = time.perf_counter() + seconds
    samples: list[tuple[float, int]] = []
    churned: list[bool] = []  # per new connection: opened and closed in time

    async def prober() -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            probe.send(WSMsgType.TEXT, b"probe")
            try:
                back = await asyncio.wait_for(received.get(), STUCK)
            except asyncio.TimeoutError:
                raise CheckFailed(f"soak: no echo to the probe in {STUCK:.0f} s") from None
            result.latencies.append(back - sent)
            await asyncio.sleep(0.01)

    async def sample() -> None:
        while time.perf_counter() < stop:
            samples.append((time.perf_counter(), server.rss()))
            await asyncio.sleep(1.0)

    window = _Window(server, result)
    window.start()
    began = time.perf_counter()
    await asyncio.gather(prober(), _churn(url, rate, stop, churned), sample())
    window.stop()
    result.units = sum(churned)
    await asyncio.sleep(2.0)  # the churned connections' sockets are closed by now
    later = [rss for at, rss in samples if at - began >= seconds / 3]
    result.details = {
        "probe_worst_ms": round(max(result.latencies) * 1e3, 1),
        "probes_over_50ms": sum(1 for rtt in result.latencies if rtt > 0.05),
        "probes": len(result.latencies),
        "connects_failed": churned.count(False),
        "rss_growth_mib": round((later[-1] - later[0]) / 2**20, 2) if len(later) > 1 else None,
        "open_files_idle": files_before,
        "open_files_after": _open_files(server.pid),
        **_gc_window(gc_before, await _gc_figures(server)),
    }
    await close_all([*clients, probe])
    return result


async def _expect(
    client: Client,
    queue: asyncio.Queue[tuple[WSMsgType, bytes]],
    kind: WSMsgType,
    payload: bytes,
    what: str,
) -> None:
    try:
        got_kind, got = await asyncio.wait_for(queue.get(), 10)
    except asyncio.TimeoutError:
        raise CheckFailed(f"{what}: no reply in 10 s") from None
    if got_kind != kind or got != payload:
        raise CheckFailed(
            f"{what}: expected {kind.name} of {len(payload)} bytes, "
            f"got {got_kind.name} of {len(got)} bytes"
        )


def _collector() -> tuple[asyncio.Queue[tuple[WSMsgType, bytes]], Callable[..., None]]:
    queue: asyncio.Queue[tuple[WSMsgType, bytes]] = asyncio.Queue()

    def handle(client: Client, kind: WSMsgType, frame: WSFrame) -> None:
        queue.put_nowait((kind, frame.get_payload_as_bytes()))

    return queue, handle


CHECK_SIZES = (0, 125, 126, 65535, 65536)


async def check(server: Running, broadcast: bool = True) -> list[str]:
    """Correctness: echo bytes and type at the length boundaries; broadcast to all, sender
    too (unless not ``broadcast``: a server with no /broadcast).

    Returns the checks that passed; raises :class:`CheckFailed` at the first that fails.
    """
    passed = []
    queue, handle = _collector()
    (client,) = await open_connections(f"{server.url}/echo", 1, handle)
    for size in CHECK_SIZES:
        text = (b"\xc3\xa9" * (size // 2)) + b"x" * (size % 2)  # valid UTF-8, "é"s
        binary = bytes(i % 251 for i in range(size))
        for kind, payload in ((WSMsgType.TEXT, text), (WSMsgType.BINARY, binary)):
            client.send(kind, payload)
            await _expect(client, queue, kind, payload, f"/echo {kind.name.lower()} {size} B")
        passed.append(f"echo {size} B text+binary")
    await close_all([client])
    if not broadcast:
        return passed
    queues_handles = [_collector() for _ in range(3)]
    clients = [
        (await open_connections(f"{server.url}/broadcast", 1, h))[0] for _, h in queues_handles
    ]
    await asyncio.sleep(0.2)  # registration happens after the handshake on some servers
    clients[1].send(WSMsgType.TEXT, b"to all")
    clients[2].send(WSMsgType.BINARY, b"\x00\xffbin")
    for (queue_, _), client_ in zip(queues_handles, clients):
        await _expect(client_, queue_, WSMsgType.TEXT, b"to all", "/broadcast text")
        await _expect(client_, queue_, WSMsgType.BINARY, b"\x00\xffbin", "/broadcast binary")
    passed.append("broadcast to 3, sender included, types kept")
    await close_all(clients)
    return passed


def _live_headers() -> dict[str, str]:
    return {"Sec-WebSocket-Protocol": LIVE_SUBPROTOCOL}


async def live_memory(server: Running, connections: int, settle: float = 1.0) -> Measurement:
    """RSS growth of the server per subscription: ``connections`` idle /live connections
    (measured first), then each subscribes to the :data:`LIVE_CHANNELS` channels."""
    result = Measurement("subscription")
    results = 0
    refused: list[bytes] = []

    def handle(client: Client, kind: WSMsgType, frame: WSFrame) -> None:
        nonlocal results
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"id"'):
            results += 1
            if b'"error"' in payload:
                refused.append(payload)

    clients = await open_connections(
        f"{server.url}/live", connections, handle, headers=_live_headers()
    )
    await asyncio.sleep(settle)
    before = server.rss()
    for client in clients:
        for command in _subscribes(LIVE_CHANNELS):
            client.send(WSMsgType.TEXT, command)
    wanted = connections * LIVE_CHANNELS
    await _wait(lambda: results >= wanted or bool(refused), f"{wanted} subscribe results")
    if refused:
        raise CheckFailed(f"live: subscribe refused: {refused[0].decode()}")
    await asyncio.sleep(settle + 1.0)  # (the joins' presence notices go out within 1 s)
    result.units = wanted
    result.bytes_per_unit = (server.rss() - before) / wanted
    await close_all(clients)
    return result


#: The channel :func:`live_fill` fills.
FILL_CHANNEL = "bench.fill"


async def live_fill(server: Running, count: int, concurrency: int = 100) -> Measurement:
    """Fill one channel with ``count`` subscribers, ``concurrency`` handshakes in flight:
    each connects to /live and subscribes with ``presence: true`` (so every join is
    pushed to the subscribers already there, coalesced); a subscriber counts once its
    result is in. Then one publication must reach all of them. Latencies: connect to
    subscribe result, per subscriber; ``seconds``: the whole fill."""
    result = Measurement("subscriber")
    gate = asyncio.Semaphore(concurrency)
    command = (
        f'{{"id": 1, "type": "subscribe", "channel": "{FILL_CHANNEL}", "presence": true}}'
    ).encode()
    published = b'{"id": 2, "type": "publish", "channel": "' + FILL_CHANNEL.encode()
    published += b'", "data": "filled"}'
    marker = b'"data":"filled"'
    reached = 0
    problems: list[bytes] = []

    class Subscriber(Client):
        def __init__(self) -> None:
            super().__init__(self.on_text)
            self.subscribed = asyncio.get_running_loop().create_future()

        def on_ws_connected(self, transport: WSTransport) -> None:
            super().on_ws_connected(transport)
            transport.send(WSMsgType.TEXT, command)

        def on_text(self, client: Client, kind: WSMsgType, frame: WSFrame) -> None:
            nonlocal reached
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"id"'):
                if b'"error"' in payload:
                    problems.append(payload)
                if not self.subscribed.done():
                    self.subscribed.set_result(None)
            elif marker in payload.replace(b" ", b""):
                reached += 1

    async def one() -> Client:
        async with gate:
            start = time.perf_counter()
            _, client = await asyncio.wait_for(
                ws_connect(
                    Subscriber,
                    f"{server.url}/live",
                    read_buffer_init_size=2048,
                    extra_headers=_live_headers(),
                ),
                STUCK,
            )
            assert isinstance(client, Subscriber)
            await asyncio.wait_for(client.subscribed, STUCK)
            result.latencies.append(time.perf_counter() - start)
            return client

    window = _Window(server, result)
    window.start()
    clients = list(await asyncio.gather(*(one() for _ in range(count))))
    window.stop()
    result.units = count
    if problems:
        await close_all(clients)
        raise CheckFailed(f"live fill: subscribe refused: {problems[0].decode()}")
    clients[0].send(WSMsgType.TEXT, published)
    try:
        await _wait(lambda: reached >= count, f"the publication to {count} subscribers")
    finally:
        await close_all(clients)
    return result


#: How long a chat fill may take before what got in is reported as is.
CHAT_FILL_LIMIT = 120.0


async def chat_fill(
    server: Running, count: int, route: str = "chat", concurrency: int = 100
) -> Measurement:
    """Fill one chat room (``route``: ``chat`` for plain text, ``chat.json``) with ``count``
    members, ``concurrency`` handshakes in flight; a member counts once its greeting is in
    (the welcome line, or the ``presence`` event). Every join is announced to the room (a
    crowded one coalesces them: tornws), so a room's fill is O(N²) without that. Then one
    line from the first member must reach every other. What did not get in within
    :data:`CHAT_FILL_LIMIT` is reported (``details``), not waited for. Latencies: connect to
    greeting, per member; ``seconds``: the whole fill."""
    result = Measurement("member")
    gate = asyncio.Semaphore(concurrency)
    greeting = b'{"type":"presence"' if route == "chat.json" else b"* you are "
    marker = b'"text":"filled"' if route == "chat.json" else b"m0: filled"
    reached = 0
    headers = {"Sec-WebSocket-Protocol": route}

    class Member(Client):
        def __init__(self) -> None:
            super().__init__(self.on_text)
            self.greeted = asyncio.get_running_loop().create_future()

        def on_text(self, client: Client, kind: WSMsgType, frame: WSFrame) -> None:
            nonlocal reached
            payload = frame.get_payload_as_bytes()
            if not self.greeted.done():
                if payload.startswith(greeting):
                    self.greeted.set_result(None)
            elif marker in payload:
                reached += 1

    by_index: dict[int, Client] = {}  # the members that connected, by their nick's number

    failed = 0

    async def one(index: int) -> None:
        nonlocal failed
        async with gate:
            start = time.perf_counter()
            try:
                _, client = await asyncio.wait_for(
                    ws_connect(
                        Member,
                        f"{server.url}/chat/fill?nick=m{index}",
                        read_buffer_init_size=2048,
                        extra_headers=headers,
                    ),
                    STUCK,
                )
            except (OSError, asyncio.TimeoutError, WSError):
                failed += 1  # (a server too busy to answer the handshake in time)
                return
            assert isinstance(client, Member)
            by_index[index] = client
            try:
                await asyncio.wait_for(client.greeted, STUCK)
            except asyncio.TimeoutError:
                failed += 1
                return
            result.latencies.append(time.perf_counter() - start)

    window = _Window(server, result)
    window.start()
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=CHAT_FILL_LIMIT)
    window.stop()
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    joined = len(result.latencies)
    result.units = joined
    result.details = {"members": count, "joined": joined, "failed": failed, "reached": None}
    try:
        if joined == count:
            first = by_index[0]  # m0: the nick the plain-text line comes from
            line = b'{"type":"message","text":"filled"}' if route == "chat.json" else b"filled"
            first.send(WSMsgType.TEXT, line)
            others = count if route == "chat.json" else count - 1
            await _wait(lambda: reached >= others, f"the line to {others} members")
            result.details["reached"] = reached
    finally:
        await _leave(list(by_index.values()), gracefully=joined == count)
    return result


async def _leave(clients: list[Client], gracefully: bool) -> None:
    """Close ``clients``; not ``gracefully``: drop them (a flooded room's closing handshakes
    would queue behind its backlog), then give the server 5 s to see it."""
    if gracefully:
        await close_all(clients)
        return
    for client in clients:
        if client.transport is not None:
            client.transport.disconnect()
    await asyncio.sleep(5.0)


#: The channel the publish-path workloads publish to, and their API key (``--redis``).
PUBLISH_CHANNEL = "bench.pub"
BENCH_API_KEY = "tornws-bench-api-key-not-secret"


async def publish_path(
    server: Running, how: str, messages: int, subscribers: int, in_flight: int = 1
) -> Measurement:
    """Publications from outside a tornws process to ``subscribers`` /live subscribers of
    the *other* process of a two-process cluster (``--redis``): ``how`` is ``"live"``
    (a /live client of the first process: the in-process path), ``"http"`` (``POST
    /api/publish`` to the first process) or ``"publisher"`` (:class:`tornws.Publisher`,
    synchronous, in threads, straight to Redis). With ``in_flight`` 1, one at a time:
    the latency from the publish call to the last subscriber; with more, that many at
    once: the throughput. The figure is the CPU of both servers and Redis per
    publication (each one is delivered ``subscribers`` times)."""
    urls: list[str] = getattr(server, "urls", None) or [server.url]
    if len(urls) < 2:
        raise CheckFailed("the publish-path workloads need the --redis cluster")
    redis_url = next(p.url for p in getattr(server, "parts", ()) if p.url.startswith("redis"))
    result = Measurement("publication")
    received = [0] * messages
    sent_at = [0.0] * messages
    done = asyncio.Event()
    finished = replies = 0

    def on_push(client: Client, kind: WSMsgType, frame: WSFrame) -> None:
        nonlocal finished, replies
        payload = frame.get_payload_as_bytes()
        if payload.startswith(b'{"id"'):  # (a subscribe result)
            replies += 1
            return
        index = int(json.loads(payload)["data"])
        received[index] += 1
        if received[index] == subscribers:
            result.latencies.append(time.perf_counter() - sent_at[index])
            finished += 1
            if finished == messages:
                done.set()

    readers = await open_connections(
        f"{urls[1]}/live", subscribers, on_push, headers=_live_headers()
    )
    subscribe = f'{{"id": 0, "type": "subscribe", "channel": "{PUBLISH_CHANNEL}"}}'.encode()
    for reader in readers:
        reader.send(WSMsgType.TEXT, subscribe)
    await _wait(lambda: replies >= subscribers, f"{subscribers} subscribe results")
    gate = asyncio.Semaphore(in_flight)
    send, cleanup = await _publish_sender(how, urls[0], redis_url, in_flight)

    async def one(index: int) -> None:
        async with gate:
            sent_at[index] = time.perf_counter()
            await send(index)
            if in_flight == 1:  # one at a time: the next after the last subscriber got it
                await _wait(
                    lambda: received[index] >= subscribers,
                    f"publication {index} via {how} reaching {subscribers} subscribers",
                )

    window = _Window(server, result)
    window.start()
    try:
        await asyncio.gather(*(one(index) for index in range(messages)))  # (gated, in order)
        await asyncio.wait_for(done.wait(), STUCK)
    except asyncio.TimeoutError:
        missing = sum(subscribers - r for r in received)
        raise CheckFailed(f"publish via {how}: {missing} deliveries missing") from None
    finally:
        window.stop()
        await cleanup()
        await close_all(readers)
    result.units = messages
    return result


async def _publish_sender(
    how: str, url: str, redis_url: str, in_flight: int
) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    """``(send(index) coroutine function, cleanup() coroutine function)`` publishing
    ``index`` to :data:`PUBLISH_CHANNEL` the ``how`` way (see :func:`publish_path`)."""
    import concurrent.futures

    loop = asyncio.get_running_loop()
    if how == "live":
        acked: dict[int, asyncio.Future[None]] = {}

        def on_reply(client: Client, kind: WSMsgType, frame: WSFrame) -> None:
            ident = int(json.loads(frame.get_payload_as_bytes()).get("id", -1))
            future = acked.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(None)

        (client,) = await open_connections(f"{url}/live", 1, on_reply, headers=_live_headers())

        async def send_live(index: int) -> None:
            acked[index] = loop.create_future()
            command = {"id": index, "type": "publish", "channel": PUBLISH_CHANNEL, "data": index}
            client.send(WSMsgType.TEXT, json.dumps(command).encode())
            await asyncio.wait_for(acked[index], STUCK)

        async def close_live() -> None:
            await close_all([client])

        return send_live, close_live
    if how == "http":
        import tornado.httpclient

        http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=in_flight)
        api = url.replace("ws://", "http://") + "/api/publish"

        async def send_http(index: int) -> None:
            await http.fetch(
                api,
                method="POST",
                body=json.dumps({"channel": PUBLISH_CHANNEL, "data": index}),
                headers={"X-API-Key": BENCH_API_KEY},
                request_timeout=STUCK,
            )

        async def close_http() -> None:
            http.close()

        return send_http, close_http
    from ..publisher import Publisher

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=in_flight)
    publishers = [Publisher(redis_url) for _ in range(in_flight)]
    idle = list(publishers)

    async def send_publisher(index: int) -> None:
        publisher = idle.pop()
        try:
            await loop.run_in_executor(pool, publisher.publish, PUBLISH_CHANNEL, index)
        finally:
            idle.append(publisher)

    async def close_publishers() -> None:
        pool.shutdown(wait=False)
        for publisher in publishers:
            publisher.close()

    return send_publisher, close_publishers
