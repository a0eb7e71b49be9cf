"""Rooms across processes on Redis (``pip install 'tornws[redis]'``, redis-py's asyncio client).

Each room is a Redis Stream, ``<prefix>:room:<room>``, with its epoch and its
offset counter beside it. Publishing runs one Lua script that numbers the
message (offset + 1), appends it to the stream (trimmed to about ``history``
entries) and sets the three keys to expire ``history_age`` seconds after the
room's last message: the stream *is* the history that resuming clients read.

Every process reads, with one ``XREAD``, the streams of the rooms it has local
members in, and only those; so every member on every process receives a room's
messages in the stream's order. A process's own publishes come back to it the
same way (nothing is delivered before Redis has it, so the order is the same
everywhere).

When Redis is unreachable: publishes are delivered to the local members only,
without an id (``offset`` 0, ``epoch`` ""), counted in :attr:`RedisBroker.failures`
and logged; reading retries with backoff (0.1 s doubling to 5 s). When Redis is
back, reading restarts from where each room was, or from the start of the
room's new epoch if Redis lost its data (a restart without persistence). A
client joining a room its process does not read yet, while Redis is down, is
greeted after 2 s anyway; the room is read once Redis is back.

The broker's tasks run between ``await broker.start()`` and ``await
broker.close()``: :func:`tornws.serve` does both; an application that serves
itself must too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

from .broker import DEFAULT_HISTORY, DEFAULT_HISTORY_AGE, Broker, Envelope
from .chat import ChatEvent
from .exceptions import BrokerUnavailableError
from .frames import Message
from .live import PresenceChange, Publication
from .node import Disconnect

__all__ = ["PUBLISH_SCRIPT", "RedisBroker", "decode_payload", "encode_payload", "publish_call"]

log = logging.getLogger(__name__)

# KEYS: stream, epoch, counter. ARGV: payload, a fresh epoch, maxlen, ttl in ms, keep ("1"
# or "0": a message not to keep still goes through the stream, every process reads it there,
# but a resume across it is refused).
PUBLISH_SCRIPT = _PUBLISH = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[3])
local now = redis.call('TIME')
local millis = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-1',
           'e', epoch, 'p', ARGV[1], 't', millis, 'k', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {epoch, offset}
"""

# KEYS: stream, epoch, counter. ARGV: a fresh epoch, ttl in ms. The room's epoch (made if
# it has none) and its latest offset.
_POSITION = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[1], KEYS[3])
end
return {epoch, tonumber(redis.call('GET', KEYS[3]) or '0')}
"""


def encode_payload(payload: object) -> str:
    """A published payload as JSON text (chat events, channel publications and presence
    changes, control messages, messages)."""
    if isinstance(payload, ChatEvent):
        return json.dumps(
            {
                "chat": [payload.type, payload.nick, payload.text, payload.time, payload.origin],
            },
            ensure_ascii=False,
        )
    if isinstance(payload, Publication):
        return json.dumps({"pub": [payload.data, payload.origin]}, ensure_ascii=False)
    if isinstance(payload, PresenceChange):
        body = {"presence": [payload.channel, payload.kind, payload.members]}
        return json.dumps(body, ensure_ascii=False)
    if isinstance(payload, Disconnect):
        return json.dumps({"disconnect": [payload.user, payload.code, payload.reason]})
    if isinstance(payload, Message):
        if payload.binary:
            data = payload.payload
            return json.dumps({"bin": base64.b64encode(data).decode()})
        return json.dumps({"text": payload.data}, ensure_ascii=False)
    raise TypeError(f"RedisBroker cannot carry a {type(payload).__name__}")


def decode_payload(text: str | bytes) -> object:
    """The inverse of :func:`encode_payload`."""
    body = json.loads(text)
    if "pub" in body:
        data, origin = body["pub"]
        return Publication(data, origin)
    if "presence" in body:
        channel, kind, members = body["presence"]
        return PresenceChange(channel, kind, members)
    if "chat" in body:
        kind, nick, line, when, origin = body["chat"]
        return ChatEvent(kind, nick, line, time=when, origin=origin)
    if "disconnect" in body:
        user, code, reason = body["disconnect"]
        return Disconnect(user, code, reason)
    if "bin" in body:
        return Message(base64.b64decode(body["bin"]))
    return Message(body["text"])


def publish_call(
    prefix: str, room: str, payload: object, *, keep: bool, maxlen: str, ttl: str
) -> tuple[list[str], list[str]]:
    """The keys and arguments of the publish script (:data:`PUBLISH_SCRIPT`) that
    numbers ``payload`` in ``room`` and appends it to the room's stream: what every
    tornws process and :class:`tornws.publisher.Publisher` run, so their publications
    share one sequence."""
    keys = [f"{prefix}:room:{room}:{kind}" for kind in ("stream", "epoch", "n")]
    args = [encode_payload(payload), os.urandom(4).hex(), maxlen, ttl, "1" if keep else "0"]
    return keys, args


class RedisBroker(Broker):
    """A :class:`~tornws.broker.Broker` on Redis; see the module docstring.

    Args:
        url: ``redis://host:port/db``.
        prefix: of every key.
        history: stream entries kept per room (about: trimmed with ``~``); also how far
            a process may fall behind a room before it skips events (counted in
            :attr:`skipped`, logged).
        history_age: seconds a room's keys live after its last message.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornws",
        history: int = DEFAULT_HISTORY,
        history_age: float = DEFAULT_HISTORY_AGE,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.history = history
        self.history_age = history_age
        #: Publishes that could not reach Redis (delivered locally only).
        self.failures = 0
        #: Events this process never read: it fell more than ``history`` behind.
        self.skipped = 0
        self._redis: Any = None
        self._positions: dict[str, str] = {}  # subscribed room -> last stream id delivered
        self._epochs: dict[str, str] = {}  # subscribed room -> its epoch as last seen
        self._pending: dict[str, asyncio.Future[None]] = {}  # rooms waiting for a position
        # (room, payload, keep, the future of its (epoch, offset) or None)
        self._outbox: list[tuple[str, object, bool, asyncio.Future[tuple[str, int]] | None]] = []
        self._wake_publisher = asyncio.Event()
        self._wake_reader = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._closed = False
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._backoff = 0.1

    def _key(self, room: str, kind: str) -> str:
        return f"{self.prefix}:room:{room}:{kind}"

    # Lifecycle

    async def start(self) -> None:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions

        self._errors = (redis.exceptions.RedisError, OSError)
        # A pooled connection that Redis closed (a restart) fails once: retry on a new one.
        retry = redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.02), 2)
        self._redis = redis.asyncio.from_url(self.url, decode_responses=True, retry=retry)
        self._script = self._redis.register_script(_PUBLISH)
        self._position_script = self._redis.register_script(_POSITION)
        self._tasks = [
            asyncio.ensure_future(self._publisher()),
            asyncio.ensure_future(self._reader()),
        ]

    async def close(self) -> None:
        # What was published last (the leaves of a drain) goes out first, if Redis is there.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._outbox and self._up and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        self._closed = True
        self._fail(self._outbox, "the broker is closed")
        self._outbox = []
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # Subscriptions

    def subscribe(self, room: str) -> None:
        if room not in self._positions and room not in self._pending:
            self._pending[room] = asyncio.get_running_loop().create_future()
            self._wake_reader.set()

    def unsubscribe(self, room: str) -> None:
        self._positions.pop(room, None)
        self._epochs.pop(room, None)
        future = self._pending.pop(room, None)
        if future is not None and not future.done():
            future.set_result(None)

    def ready(self, room: str) -> Awaitable[None] | None:
        """An awaitable done once ``room``'s messages are being read (``None``: already)."""
        return self._pending.get(room)

    # Publishing

    def publish(self, room: str, payload: object, *, keep: bool = True) -> None:
        # Even with no local member left (a leave): members elsewhere hear it.
        self._outbox.append((room, payload, keep, None))
        self._wake_publisher.set()

    async def publish_numbered(self, room: str, payload: object) -> tuple[str, int]:
        if self._closed:
            raise BrokerUnavailableError("the broker is closed")
        future: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._outbox.append((room, payload, True, future))
        self._wake_publisher.set()
        return await future

    shared = True

    async def claim_once(self, key: str, seconds: float) -> bool:
        try:
            claimed = await self._redis.set(
                f"{self.prefix}:claim:{key}", "1", nx=True, px=max(1, int(seconds * 1000))
            )
        except self._errors as exc:
            raise BrokerUnavailableError(f"redis unreachable: {exc}") from None
        return bool(claimed)

    async def position(self, room: str) -> tuple[str, int]:
        keys = [self._key(room, k) for k in ("stream", "epoch", "n")]
        ttl = str(int(self.history_age * 1000))
        try:
            epoch, offset = await self._position_script(keys=keys, args=[os.urandom(4).hex(), ttl])
        except self._errors as exc:
            raise BrokerUnavailableError(f"redis unreachable: {exc}") from None
        return str(epoch), int(offset)

    async def _publisher(self) -> None:
        ttl = str(int(self.history_age * 1000))
        maxlen = str(max(self.history, 1))
        while True:
            await self._wake_publisher.wait()
            self._wake_publisher.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                await self._send(batch, maxlen, ttl)
            except asyncio.CancelledError:
                self._fail(batch, "the broker is closing")
                raise
            except Exception as exc:  # not Redis's: e.g. a payload it cannot encode
                log.exception("publishing %d message(s) failed", len(batch))
                self._fail(batch, f"cannot publish: {exc}")

    @staticmethod
    def _fail(batch: list[tuple[str, object, bool, Any]], why: str) -> None:
        """Fail the numbering futures of ``batch`` that are still waiting."""
        for _, _, _, future in batch:
            if future is not None and not future.done():
                future.set_exception(BrokerUnavailableError(why))

    async def _send(
        self, batch: list[tuple[str, object, bool, Any]], maxlen: str, ttl: str
    ) -> None:
        """One pipeline of publish scripts for ``batch`` (retried once on a new connection)."""
        for attempt in (1, 2):  # a second time on a fresh connection (Redis restarted?)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for room, payload, keep, _ in batch:
                        keys, args = publish_call(
                            self.prefix, room, payload, keep=keep, maxlen=maxlen, ttl=ttl
                        )
                        await self._script(keys=keys, args=args, client=pipe)
                    results = await pipe.execute()
                for (_, _, _, future), (epoch, offset) in zip(batch, results):
                    if future is not None and not future.done():
                        future.set_result((str(epoch), int(offset)))
                break
            except self._errors as exc:
                if attempt == 2:
                    self._local(batch, exc)

    def _local(self, batch: list[tuple[str, object, Any, Any]], exc: BaseException) -> None:
        self.failures += len(batch)
        log.warning(
            "redis unreachable (%s): %d message(s) delivered to this process only",
            exc,
            len(batch),
        )
        deliver = self._deliver
        assert deliver is not None
        for room, payload, _, future in batch:
            if room in self._positions or room in self._pending:
                deliver(Envelope(room, 0, payload, ""))
            if future is not None and not future.done():
                future.set_exception(
                    BrokerUnavailableError(f"redis unreachable ({exc}): delivered here only")
                )
        self._up = False

    # Reading

    async def _reader(self) -> None:
        while True:
            try:
                await self._read_forever()
            except self._errors as exc:  # retry with backoff
                if self._up:
                    log.warning("redis connection lost (%s); retrying", exc)
                self._up = False
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 5.0)

    async def _read_forever(self) -> None:
        redis = self._redis
        await redis.ping()
        self._backoff = 0.1
        if not self._up:
            log.info("redis connected: %s", self.url)
            self._up = True
        # (Re)start every room where it was; a room whose epoch changed (Redis lost
        # its data) starts from the beginning of its new epoch.
        for room in list(self._positions):
            epoch = await redis.get(self._key(room, "epoch"))
            if epoch != self._epochs.get(room):
                self._positions[room] = "0-0"
                self._epochs[room] = epoch or ""
        while True:
            for room in list(self._pending):
                last = await redis.xrevrange(self._key(room, "stream"), count=1)
                epoch = await redis.get(self._key(room, "epoch"))
                future = self._pending.pop(room, None)
                if future is None:
                    continue  # unsubscribed meanwhile
                self._positions[room] = last[0][0] if last else "0-0"
                self._epochs[room] = epoch or ""
                if not future.done():
                    future.set_result(None)
            if not self._positions:
                self._wake_reader.clear()
                await self._wake_reader.wait()
                continue
            streams = {self._key(room, "stream"): pos for room, pos in self._positions.items()}
            answer = await redis.xread(streams, count=1000, block=100)
            for stream, entries in answer or ():
                room = stream[len(self.prefix) + 6 : -len(":stream")]
                for entry_id, fields in entries:
                    if room not in self._positions:
                        break
                    offset = int(entry_id.split("-", 1)[0])
                    previous = int(self._positions[room].split("-", 1)[0])
                    if previous and offset > previous + 1 and fields["e"] == self._epochs[room]:
                        self.skipped += offset - previous - 1
                        log.warning(
                            "room %r: fell %d event(s) behind the stream's length; skipped",
                            room,
                            offset - previous - 1,
                        )
                    self._positions[room] = entry_id
                    self._epochs[room] = fields["e"]
                    envelope = Envelope(room, offset, decode_payload(fields["p"]), fields["e"])
                    assert self._deliver is not None
                    self._deliver(envelope)

    # History

    async def recover(self, room: str, epoch: str, offset: int) -> list[Envelope] | None:
        """The envelopes of ``room`` after ``offset`` up to what this process has
        delivered, or ``None`` if Redis cannot tell them all."""
        redis = self._redis
        position = self._positions.get(room)
        if position is None or self._epochs.get(room) != epoch:
            return None
        upto = int(position.split("-", 1)[0])
        if offset >= upto:
            return []  # (anything newer comes live)
        try:
            entries = await redis.xrange(self._key(room, "stream"), f"{offset + 1}-1", position)
            current = await redis.get(self._key(room, "epoch"))
        except self._errors:
            return None  # cannot tell: the client learns it with recovered false
        if current != epoch or not entries or int(entries[0][0].split("-", 1)[0]) != offset + 1:
            return None
        if any(fields.get("k") == "0" for _, fields in entries):
            return None  # a message that was not to be kept is in the range
        horizon = time.time() * 1000 - self.history_age * 1000
        if int(entries[0][1]["t"]) <= horizon:
            return None
        return [
            Envelope(room, int(entry_id.split("-", 1)[0]), decode_payload(fields["p"]), epoch)
            for entry_id, fields in entries
        ]
