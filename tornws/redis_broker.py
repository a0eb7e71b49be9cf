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

When Redis is unreachable (a command or a connection fails, or gets no answer within
``timeout``, :data:`COMMAND_TIMEOUT`: a frozen Redis, one behind a partition):
publishes are delivered to the local members only, at once, without an id (``offset``
0, ``epoch`` ""), counted in :attr:`RedisBroker.failures` and logged, until the reader
reaches Redis again; it retries with backoff (0.1 s doubling to 1 s). When Redis is
back, reading restarts from where each room was, or from the start of the
room's new epoch if Redis lost its data (a restart without persistence). A
client joining a room its process does not read yet, while Redis is down, is
greeted after 2 s anyway; the room is read once Redis is back.

Presence (:meth:`Broker.presence_add <tornws.broker.Broker.presence_add>` and the
rest): each process gets a random id when it starts. Its entries are fields
``<process id>:<key>`` of one hash per room, ``<prefix>:presence:<room>``, whose
values are the entries' JSON; they are written by the publishing task, in the
same pipeline and order as the publishes (a join costs no round trip of its
own, and a leave published after its removal cannot be read before it). A
process proves it is alive with ``<prefix>:alive:<process id>``, which expires
:data:`PRESENCE_TTL` seconds after its last heartbeat (one every
:data:`HEARTBEAT_INTERVAL`), and with its score in ``<prefix>:processes`` (when
that key expires). A read lists this process's own entries from memory and the
others' from Redis, leaving out those of processes whose key is gone.

After each heartbeat a process sweeps: one Lua script finds the processes whose
key expired, deletes their entries and returns them, atomically, so exactly one
process gets each list and announces those members' leaves (:meth:`RedisBroker.announce`:
a ``/live`` leave push, a chat ``leave`` event per nick). The members of a
process that died without a goodbye (``kill -9``, a lost machine) are thus gone
within :data:`PRESENCE_CRASH_BOUND` seconds (8), everywhere. A clean shutdown
(:meth:`RedisBroker.close`, after the drain) deletes what is left of its own at
once. A process that was taken for dead but was not (cut off from Redis for
longer than the TTL) writes its entries again when it is back, and announces
their joins. When Redis is unreachable, presence is this process's entries
(logged); a read never waits more than :data:`PRESENCE_TIMEOUT`. The scripts
name keys they compute: a single Redis server, not Redis Cluster.

The broker's tasks run between ``await broker.start()`` and ``await
broker.close()``: :func:`tornws.serve` does both; an application that serves
itself must too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from .broker import DEFAULT_HISTORY, DEFAULT_HISTORY_AGE, Broker, Envelope
from .chat import ChatEvent
from .exceptions import BrokerUnavailableError, ConfigError, NotReplicatedError
from .frames import Message
from .live import _PRESENCE_ROOM as _LIVE_PRESENCE_ROOM
from .live import _ROOM as _LIVE_ROOM
from .live import PresenceChange, Publication
from .node import Disconnect

__all__ = [
    "COMMAND_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "MAX_CONNECTIONS",
    "PRESENCE_CRASH_BOUND",
    "PRESENCE_TIMEOUT",
    "PRESENCE_TTL",
    "PUBLISH_SCRIPT",
    "SENTINEL_TIMEOUT",
    "URL_SCHEMES",
    "Numbered",
    "RedisBroker",
    "SentinelURL",
    "check_url",
    "check_wait",
    "connect",
    "decode_payload",
    "disconnect",
    "encode_payload",
    "parse_sentinel_url",
    "publish_call",
    "redacted",
]

log = logging.getLogger(__name__)

#: Connections one process may open to Redis at once (commands beyond are refused and
#: answered ``unavailable``); Redis's own default limit is 10,000 clients.
MAX_CONNECTIONS = 1000

#: Seconds a process's liveness key lives after its last heartbeat: a process not heard
#: from for that long is dead, its presence entries are no longer listed and are swept.
PRESENCE_TTL = 6.0
#: Seconds between two heartbeats of a process; each is followed by a sweep of the dead.
HEARTBEAT_INTERVAL = 2.0
#: Seconds within which the members of a process that died without a goodbye are removed
#: and their leaves published: its key's TTL after its last heartbeat, then a survivor's
#: next sweep (while Redis is reachable and the survivors' loops are not stalled).
PRESENCE_CRASH_BOUND = PRESENCE_TTL + HEARTBEAT_INTERVAL
#: Seconds a presence read waits for Redis before answering with this process's entries.
PRESENCE_TIMEOUT = 1.0
#: Seconds a Redis command (or connecting) may take before Redis is taken for unreachable.
COMMAND_TIMEOUT = 2.0
# The longest wait between two attempts to reach Redis again (from 0.1 s, doubling).
_BACKOFF_CAP = 1.0
# Seconds a publication to a room this process just subscribed to waits for the reader to
# find where that room's stream stands (one round trip to Redis, after its blocking read).
_READY_WAIT = 1.0

# KEYS: stream, epoch, counter[, idempotency key]. ARGV: payload, a fresh epoch, maxlen, ttl
# in ms, keep ("1" or "0": a message not to keep still goes through the stream, every process
# reads it there, but a resume across it is refused), the epoch and offset the publisher last
# read in the room ("", "0": none), [the idempotency key's ms]. A counter below that offset in
# that epoch means this server lost events it had numbered (a replica promoted before it had
# them, in a failover): the room starts a new epoch rather than number events again with
# offsets clients saw on others, so a resume across the loss is refused. Returns the epoch,
# the offset, 1 if the idempotency key had it already (else 0), 1 if events were found lost
# (else 0). The entry's id is Redis's own (its milliseconds, then a
# sequence), which only grows, across epochs too: a reader waiting after the last id it saw
# also reads the first entries of a room's next epoch (after its keys expired, say), whose
# offsets start at 1 again. The offset is the entry's field 'o'.
PUBLISH_SCRIPT = _PUBLISH = """
if KEYS[4] then  -- an idempotency key: seen in the last ARGV[8] ms, answer that again
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 1, 0}
  end
end
local epoch = redis.call('GET', KEYS[2])
local lost = 0
if epoch and epoch == ARGV[6]
   and tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[7]) then
  epoch = false
  lost = 1
end
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
           'e', epoch, 'o', offset, 'p', ARGV[1], 'k', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if KEYS[4] then
  redis.call('SET', KEYS[4], epoch .. ':' .. offset, 'PX', ARGV[8])
end
return {epoch, offset, 0, lost}
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

# KEYS: stream, epoch, counter. ARGV: the epoch a process read the room in, the highest offset
# it read. The room's epoch now, "" if it has none; and 1 if this server numbered less than
# that in that epoch (it lost events: a failover), and so the room's keys were deleted, to
# start a new epoch (the publish script's check, for a process back on Redis).
_CHECK = """
local epoch = redis.call('GET', KEYS[2])
if epoch and epoch == ARGV[1]
   and tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return {'', 1}
end
return {epoch or '', 0}
"""

# Presence. A process's index, <prefix>:presence-of:<process id>, holds "<room>\n<key>" for
# each of its entries, so that removing a process costs its own entries only.

# The Lua function that removes a process: its entries (returned, appended to `out` as
# room, count, value...), its index, its liveness key, its score.
_REMOVE = """
local function remove(prefix, pid, out)
  local index = prefix .. ':presence-of:' .. pid
  local rooms, order = {}, {}
  for _, member in ipairs(redis.call('SMEMBERS', index)) do
    local room, key = string.match(member, '^(.*)\\n([^\\n]*)$')
    if room then
      local hash = prefix .. ':presence:' .. room
      local field = pid .. ':' .. key
      local value = redis.call('HGET', hash, field)
      if value then
        redis.call('HDEL', hash, field)
        if not rooms[room] then
          rooms[room] = {}
          order[#order + 1] = room
        end
        table.insert(rooms[room], value)
      end
    end
  end
  redis.call('DEL', index, prefix .. ':alive:' .. pid)
  redis.call('ZREM', prefix .. ':processes', pid)
  for _, room in ipairs(order) do
    out[#out + 1] = room
    out[#out + 1] = #rooms[room]
    for _, value in ipairs(rooms[room]) do
      out[#out + 1] = value
    end
  end
end
local now = redis.call('TIME')
local millis = now[1] * 1000 + math.floor(now[2] / 1000)
"""

# KEYS: the room's hash, the process's index. ARGV: field, value (JSON), index member.
_PRESENCE_ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('SADD', KEYS[2], ARGV[3])
"""

# KEYS: the room's hash, the process's index. ARGV: field, index member.
_PRESENCE_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('SREM', KEYS[2], ARGV[2])
"""

# KEYS: the room's hash. ARGV: prefix, own process id. The values of the other processes'
# fields whose liveness key exists.
_PRESENCE_READ = """
local flat = redis.call('HGETALL', KEYS[1])
local alive, out = {}, {}
for i = 1, #flat, 2 do
  local pid = string.match(flat[i], '^([^:]*):')
  if pid and pid ~= ARGV[2] then
    local ok = alive[pid]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[1] .. ':alive:' .. pid) == 1
      alive[pid] = ok
    end
    if ok then
      out[#out + 1] = flat[i + 1]
    end
  end
end
return out
"""

# KEYS: the liveness key, the processes. ARGV: process id, ttl in ms. 1 if the process was
# not registered (its first heartbeat; or it was swept, or Redis lost its data).
_HEARTBEAT = """
local now = redis.call('TIME')
local millis = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
return redis.call('ZADD', KEYS[2], millis + tonumber(ARGV[2]), ARGV[1])
"""

# KEYS: the processes. ARGV: prefix, own process id. Removes every other process whose
# liveness ended (its score passed and its key is gone) and returns what it removed; leaves
# a tombstone, so that a process swept by mistake announces its members again.
_SWEEP = (
    _REMOVE
    + """
local out = {}
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', millis)) do
  if pid ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':alive:' .. pid) == 0 then
    remove(ARGV[1], pid, out)
    redis.call('SET', ARGV[1] .. ':swept:' .. pid, '1', 'EX', 3600)
  end
end
return out
"""
)

# KEYS: the processes. ARGV: prefix, own process id. A clean shutdown: remove it at once.
_GOODBYE = (
    _REMOVE
    + """
local out = {}
remove(ARGV[1], ARGV[2], out)
return out
"""
)

# KEYS: the liveness key, the processes. ARGV: prefix, process id, ttl in ms, then (room,
# key, value) for each of its entries. Replaces whatever Redis has of the process with
# these and registers it; returns 1 if it had been swept (its members' leaves announced).
_RESYNC = (
    _REMOVE
    + """
remove(ARGV[1], ARGV[2], {})
local index = ARGV[1] .. ':presence-of:' .. ARGV[2]
for i = 4, #ARGV, 3 do
  redis.call('HSET', ARGV[1] .. ':presence:' .. ARGV[i], ARGV[2] .. ':' .. ARGV[i + 1],
             ARGV[i + 2])
  redis.call('SADD', index, ARGV[i] .. '\\n' .. ARGV[i + 1])
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], millis + tonumber(ARGV[3]), ARGV[2])
return redis.call('DEL', ARGV[1] .. ':swept:' .. ARGV[2])
"""
)


class _PresenceOp:
    """In the outbox: write (``value``: the entry's JSON) or remove (``None``) a key."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: str | None) -> None:
        self.key = key
        self.value = value


def _removed(flat: list[Any]) -> list[tuple[str, list[Any]]]:
    """The reply of a removing script as ``(room, entries)`` pairs."""
    rooms = []
    index = 0
    while index < len(flat):
        room, count = flat[index], int(flat[index + 1])
        values = flat[index + 2 : index + 2 + count]
        rooms.append((str(room), [json.loads(value) for value in values]))
        index += 2 + count
    return rooms


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_payload(payload: object) -> str:
    """A published payload as JSON text (chat events, channel publications and presence
    changes, control messages, messages)."""
    if isinstance(payload, ChatEvent):
        chat: dict[str, Any] = {
            "chat": [payload.type, payload.nick, payload.text, payload.time, payload.origin],
        }
        if payload.joins or payload.leaves:  # a crowded room's notice
            chat["diff"] = [payload.joins, payload.leaves]
        return json.dumps(chat, ensure_ascii=False)
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
        joins, leaves = body.get("diff", ((), ()))
        return ChatEvent(
            kind, nick, line, time=when, origin=origin, joins=tuple(joins), leaves=tuple(leaves)
        )
    if "disconnect" in body:
        user, code, reason = body["disconnect"]
        return Disconnect(user, code, reason)
    if "bin" in body:
        return Message(base64.b64decode(body["bin"]))
    return Message(body["text"])


def publish_call(
    prefix: str,
    room: str,
    payload: object,
    *,
    keep: bool,
    maxlen: str,
    ttl: str,
    seen: tuple[str, int] = ("", 0),
) -> tuple[list[str], list[str]]:
    """The keys and arguments of the publish script (:data:`PUBLISH_SCRIPT`) that
    numbers ``payload`` in ``room`` and appends it to the room's stream: what every
    tornws process and :class:`tornws.publisher.Publisher` run, so their publications
    share one sequence. ``seen``: the room's epoch and the highest offset the publisher
    read in it (a Redis that numbered less lost events: the room starts a new epoch)."""
    keys = [f"{prefix}:room:{room}:{kind}" for kind in ("stream", "epoch", "n")]
    epoch, offset = seen
    args = [encode_payload(payload), os.urandom(4).hex(), maxlen, ttl, "1" if keep else "0"]
    args += (epoch, str(offset))
    return keys, args


#: The schemes of a Redis URL tornws takes: one server (``redis://``, ``rediss://`` with
#: TLS, ``unix://``) or the Sentinels that name a service's master (``redis+sentinel://``).
URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")

#: Seconds a Sentinel has to answer which server is the master, before the next is asked.
SENTINEL_TIMEOUT = 1.0


class SentinelURL(NamedTuple):
    """A ``redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT…][/DB[/SERVICE]]``
    URL, the form python-socketio takes: the Sentinels' addresses, the service they
    monitor (``mymaster`` if the URL names none), the database, and the credentials
    of the master (the Sentinels are asked without)."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL (see :class:`SentinelURL`).

    Raises:
        ConfigError: it is not one, or a part of it is malformed.
    """
    parts = urlsplit(url)
    shown = redacted(url)
    if parts.scheme != "redis+sentinel":
        raise ConfigError(f"{shown}: not a redis+sentinel:// URL")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        host = host.strip("[]")  # ([::1]:26379)
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"{shown}: {address!r} is not HOST:PORT "
                "(redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/DB/SERVICE)"
            )
        sentinels.append((host, int(port)))
    db, _, service = parts.path.lstrip("/").partition("/")
    if db and not db.isdigit():
        raise ConfigError(f"{shown}: the database {db!r} is not a number")
    if "/" in service.strip("/"):
        raise ConfigError(f"{shown}: expected /DB/SERVICE after the Sentinels")
    return SentinelURL(
        sentinels,
        service.strip("/") or "mymaster",
        int(db or 0),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def check_url(url: str, what: str) -> None:
    """Raise :class:`~tornws.exceptions.ConfigError`, naming ``what`` takes the URL
    (``--broker``, say), unless ``url`` is a Redis URL tornws can connect to."""
    if not url.startswith(URL_SCHEMES):
        raise ConfigError(
            f"{what} {redacted(url)}: expected a redis://, rediss://, unix:// or "
            "redis+sentinel:// URL"
        )
    if url.startswith("redis+sentinel://"):
        try:
            parse_sentinel_url(url)
        except ConfigError as exc:
            raise ConfigError(f"{what} {exc}") from None


def redacted(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: for log lines and errors."""
    scheme, separator, rest = url.partition("://")
    credentials, at, hosts = rest.partition("@")
    if not (separator and at and ":" in credentials) or "/" in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}"


def connect(url: str, *, asynchronous: bool = True, **options: Any) -> Any:
    """A redis-py client of ``url`` (:data:`URL_SCHEMES`), asyncio's or the blocking one,
    made with ``options`` (``decode_responses``, timeouts, ``retry``...).

    Through Sentinels, each new connection asks them which server is the master, and a
    connection to a master that became a replica fails (redis-py's Sentinel support): after
    a failover, the client's next commands reach the new master. Close it with
    :func:`disconnect`, which closes the connections to the Sentinels too.
    """
    if not url.startswith("redis+sentinel://"):
        if asynchronous:
            import redis.asyncio

            return redis.asyncio.Redis.from_url(url, **options)
        import redis

        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    asked = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
    import redis.asyncio.sentinel
    import redis.sentinel

    module: Any = redis.asyncio.sentinel if asynchronous else redis.sentinel
    sentinel = module.Sentinel(parsed.sentinels, sentinel_kwargs=asked)
    options.update(db=parsed.db, username=parsed.username, password=parsed.password)
    return sentinel.master_for(parsed.service, **options)


async def disconnect(client: Any) -> None:
    """Close an asyncio client that :func:`connect` made (and its Sentinels' clients)."""
    await client.aclose()
    sentinel = getattr(client.connection_pool, "sentinel_manager", None)
    if sentinel is not None:
        await sentinel.aclose()


def _where(client: Any) -> str:
    """Which server ``client`` talks to, for log lines: ``host:port``, or through
    Sentinels the master they named last."""
    pool = client.connection_pool
    address = getattr(pool, "master_address", None)
    if address is None:
        kwargs = pool.connection_kwargs
        address = (kwargs.get("host"), kwargs.get("port")) if "host" in kwargs else None
    if address is None:
        return str(pool.connection_kwargs.get("path", "?"))
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Numbered:
    """The last position given to a publisher's publications in each room, for the
    publish script's check (a server that numbered less lost events), in the last
    ``rooms`` rooms published to. Thread-safe."""

    def __init__(self, rooms: int = 10_000) -> None:
        self.rooms = rooms
        self._last: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def get(self, room: str) -> tuple[str, int] | None:
        return self._last.get(room)

    def put(self, room: str, epoch: str, offset: int) -> None:
        with self._lock:
            last = self._last
            if room not in last and len(last) >= self.rooms:
                del last[next(iter(last))]  # (the room first published to)
            last[room] = (epoch, offset)


def _offset(entry_id: str, fields: dict[str, str]) -> int:
    """A stream entry's offset: its field ``o``; in an entry an earlier tornws wrote, the
    first part of its id (``<offset>-1``, the time in field ``t``)."""
    offset = fields.get("o")
    return int(offset if offset is not None else entry_id.split("-", 1)[0])


def _check_times(
    heartbeat: float, presence_ttl: float, replicas: int, replica_timeout: float, timeout: float
) -> None:
    if not 0 < heartbeat < presence_ttl:
        raise ValueError(
            f"heartbeat ({heartbeat} s) must be shorter than presence_ttl ({presence_ttl} s)"
        )
    if not timeout > 0.1:
        raise ConfigError(f"timeout {timeout} s: it must exceed the reads' 0.1 s block")
    check_wait(replicas, replica_timeout, timeout)


def check_wait(replicas: int, replica_timeout: float, timeout: float) -> None:
    """Raise :class:`~tornws.exceptions.ConfigError` unless waiting for ``replicas``
    replicas for at most ``replica_timeout`` seconds fits in a command's ``timeout``."""
    if replicas < 0 or replica_timeout <= 0:
        raise ConfigError("replicas must be 0 or more, replica_timeout more than 0 s")
    if replicas and replica_timeout >= timeout:
        raise ConfigError(
            f"replica_timeout ({replica_timeout} s) must be shorter than timeout ({timeout} s): "
            "the wait for the replicas is a Redis command"
        )


class RedisBroker(Broker):
    """A :class:`~tornws.broker.Broker` on Redis; see the module docstring.

    Args:
        url: ``redis://host:port/db``, or ``redis+sentinel://host:port,.../db/service``
            (:class:`SentinelURL`): after a failover the broker carries on with the new
            master (:data:`URL_SCHEMES`).
        prefix: of every key.
        history: stream entries kept per room (about: trimmed with ``~``); also how far
            a process may fall behind a room before it skips events (counted in
            :attr:`skipped`, logged).
        history_age: seconds a room's keys live after its last message.
        presence_ttl: seconds this process's liveness key lives after a heartbeat
            (:data:`PRESENCE_TTL`).
        heartbeat: seconds between its heartbeats, each followed by a sweep
            (:data:`HEARTBEAT_INTERVAL`); the crash bound is their sum.
        presence_timeout: seconds a presence read waits for Redis
            (:data:`PRESENCE_TIMEOUT`).
        replicas: with N > 0, a numbered publication (:meth:`publish_numbered`,
            :meth:`publish_once`: the server API, a ``/live`` publish) is confirmed only
            once N replicas have it (Redis ``WAIT``, in the same pipeline), so that a
            failover cannot lose what was confirmed; else it fails with
            :class:`~tornws.exceptions.NotReplicatedError` (it was published).
        replica_timeout: seconds that wait lasts at most.
        timeout: seconds a Redis command (or connecting) may take before Redis is taken
            for unreachable (:data:`COMMAND_TIMEOUT`): a frozen Redis, or one behind a
            partition, then stops nothing but the rooms' crossing between processes.

    Presence: :meth:`presence` and :meth:`presence_count` read Redis
    (:meth:`presence_now` is ``None``: await them). :meth:`presence_count` is one
    ``HLEN``: it counts every process's written entries, a dead process's too until
    they are swept (at most :data:`PRESENCE_CRASH_BOUND` after it died), and this
    process's as written (a new one within a publisher turn). :meth:`presence` leaves
    out the dead at once.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornws",
        history: int = DEFAULT_HISTORY,
        history_age: float = DEFAULT_HISTORY_AGE,
        presence_ttl: float = PRESENCE_TTL,
        heartbeat: float = HEARTBEAT_INTERVAL,
        presence_timeout: float = PRESENCE_TIMEOUT,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        super().__init__()
        check_url(url, "RedisBroker")
        _check_times(heartbeat, presence_ttl, replicas, replica_timeout, timeout)
        self.timeout = timeout
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self.url = url
        self.prefix = prefix
        self.history = history
        self.history_age = history_age
        self.presence_ttl = presence_ttl
        self.heartbeat = heartbeat
        self.presence_timeout = presence_timeout
        #: This process's id in Redis (random, given by :meth:`start`).
        self.process_id = ""
        #: Presence entries of dead processes this process swept (and announced).
        self.swept = 0
        #: Publishes that could not reach Redis (delivered locally only).
        self.failures = 0
        #: Numbered publications that fewer than :attr:`replicas` replicas confirmed.
        self.unreplicated = 0
        #: Times Redis went from answering to unreachable.
        self.outages = 0
        #: Times a room was found to have lost events in Redis (a failover): it started
        #: a new epoch.
        self.history_losses = 0
        #: Events this process never read: it fell more than ``history`` behind.
        self.skipped = 0
        self._redis: Any = None
        self._positions: dict[str, str] = {}  # subscribed room -> last stream id delivered
        self._offsets: dict[str, int] = {}  # subscribed room -> its offset (0: none yet)
        self._spoiled: dict[str, str] = {}  # room -> an epoch whose entries are not delivered
        self._numbered = Numbered()  # what this process's publications were given
        # Reads in flight, shared by whoever asks the same while they are (a reconnect
        # storm: 10,000 greetings of one room are a few reads, not 10,000 at once).
        self._presence_reads: dict[str, asyncio.Future[list[Any]]] = {}
        self._range_reads: dict[str, tuple[int, str, asyncio.Future[Any]]] = {}
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
        self._timeouts: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
        self._read_errors: tuple[type[BaseException], ...] = (asyncio.TimeoutError, OSError)
        self._backoff = 0.1
        self._outage: BaseException | None = None  # why Redis is known unreachable
        self._registered = False  # a heartbeat went through since start
        self._resync = False  # Redis may not have this process's entries: write them all
        self._goodbye: asyncio.Future[list[Any]] | None = None  # close(): remove them all
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._beat_failing = False
        self._read_failing = False
        self._beating = 0  # heartbeats under way
        self._stopping = False

    def _key(self, room: str, kind: str) -> str:
        return f"{self.prefix}:room:{room}:{kind}"

    def _presence_key(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    # Lifecycle

    async def start(self) -> None:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions

        self._errors = (redis.exceptions.RedisError, OSError)
        self._read_errors = (asyncio.TimeoutError, *self._errors)
        self._timeouts = (asyncio.TimeoutError, redis.exceptions.TimeoutError)
        # A pooled connection that Redis closed (a restart) fails once: retry on a new one
        # (not after a timeout: a Redis that does not answer is down for now).
        retry = redis.asyncio.retry.Retry(
            redis.backoff.ExponentialBackoff(cap=0.5, base=0.02),
            2,
            supported_errors=(redis.exceptions.ConnectionError,),
        )
        # A burst of commands (hundreds of subscribes asking their channel's position at
        # once) opens that many connections: redis-py's pool raises "Too many connections"
        # past its limit (100 by default), which answered them "unavailable".
        self._redis = connect(
            self.url,
            decode_responses=True,
            retry=retry,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
        )
        self._script = self._redis.register_script(_PUBLISH)
        self._position_script = self._redis.register_script(_POSITION)
        self._check_script = self._redis.register_script(_CHECK)
        register = self._redis.register_script
        self._add_script = register(_PRESENCE_ADD)
        self._remove_script = register(_PRESENCE_REMOVE)
        self._read_script = register(_PRESENCE_READ)
        self._heartbeat_script = register(_HEARTBEAT)
        self._sweep_script = register(_SWEEP)
        self._goodbye_script = register(_GOODBYE)
        self._resync_script = register(_RESYNC)
        # (Here, not in __init__: `tornws serve --workers` makes the broker before forking.)
        self.process_id = os.urandom(8).hex()
        self._tasks = [
            asyncio.ensure_future(self._publisher()),
            asyncio.ensure_future(self._reader()),
        ]
        # The first heartbeat before serving (this process's entries are listed from the
        # start), unless Redis is slow to answer. (Not cancelled: a sweep it ran in Redis
        # must be announced.)
        first = asyncio.ensure_future(self._beat())
        self._tasks.append(first)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), self.presence_timeout)
        self._heartbeat_task = asyncio.ensure_future(self._heartbeats())
        self._tasks.append(self._heartbeat_task)

    async def close(self) -> None:
        self._closing()  # (what publishers held back joins the outbox)
        # What was published last (the leaves of a drain) goes out first, if Redis is there.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._outbox and self._up and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self._say_goodbye()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        self._closed = True
        self._fail(self._outbox, "the broker is closed")
        self._outbox = []
        if self._redis is not None:
            await disconnect(self._redis)
            self._redis = None

    async def _say_goodbye(self) -> None:
        """Remove what Redis still has of this process, at once (not a TTL later), after
        everything queued before; announce the leaves of what was still listed (their
        removal was not written: neither were their leaves, queued after it)."""
        if self._redis is None or not self._up or self._goodbye is not None:
            return
        # No heartbeat after this (it would register this process again); one under way
        # finishes first (what it swept must be announced).
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._beating and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._goodbye = loop.create_future()
        self._wake_publisher.set()
        try:
            flat = await asyncio.wait_for(asyncio.shield(self._goodbye), 1.0)
        except (asyncio.TimeoutError, BrokerUnavailableError) as exc:
            log.warning(
                "presence of this process not removed (%s): it expires in %.0f s",
                exc or "timeout",
                self.presence_ttl,
            )
            return
        for room, entries in _removed(flat):
            self.announce(room, "leave", entries)
        deadline = loop.time() + 1.0
        while self._outbox and self._up and loop.time() < deadline:
            await asyncio.sleep(0.01)

    # Subscriptions

    def subscribe(self, room: str) -> None:
        if room not in self._positions and room not in self._pending:
            self._pending[room] = asyncio.get_running_loop().create_future()
            self._wake_reader.set()

    def unsubscribe(self, room: str) -> None:
        self._positions.pop(room, None)
        self._offsets.pop(room, None)
        self._spoiled.pop(room, None)
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

    async def publish_once(
        self, room: str, payload: object, key: str, seconds: float
    ) -> tuple[str, int, bool] | None:
        keys, args = publish_call(
            self.prefix,
            room,
            payload,
            keep=True,
            maxlen=str(max(self.history, 1)),
            ttl=str(int(self.history_age * 1000)),
            seen=self._seen(room),
        )
        keys.append(f"{self.prefix}:once:{key}")
        args.append(str(max(1, int(seconds * 1000))))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._script(keys=keys, args=args, client=pipe)
                if self.replicas:
                    self._wait(pipe)
                results = await pipe.execute()
        except self._errors as exc:
            raise BrokerUnavailableError(f"redis unreachable: {exc}") from None
        answer = results[0]
        epoch, offset = str(answer[0]), int(answer[1])
        self._numbered.put(room, epoch, offset)
        if self.replicas and int(results[1]) < self.replicas:
            raise self._not_replicated(int(results[1]), epoch, offset)
        return epoch, offset, int(answer[2]) == 1

    def _wait(self, pipe: Any) -> None:
        """Queue ``WAIT`` for :attr:`replicas` on ``pipe`` (after its writes)."""
        pipe.execute_command("WAIT", self.replicas, max(1, int(self.replica_timeout * 1000)))

    def _not_replicated(self, count: int, epoch: str, offset: int) -> NotReplicatedError:
        self.unreplicated += 1
        return NotReplicatedError(
            f"published at {epoch}:{offset}, but {count} of {self.replicas} replica(s) "
            f"confirmed it within {self.replica_timeout:g} s: a failover may lose it",
            epoch,
            offset,
        )

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
            goodbye = self._goodbye is not None and not self._goodbye.done()
            if not (batch or self._resync or goodbye):
                continue
            try:
                if self._outage is not None:  # known down: at once, until the reader is back
                    self._unreachable(batch, self._outage)
                    continue
                if self._pending:  # a room subscribed here and not read yet: read it first
                    await self._await_readers(batch)
                await self._send(batch, maxlen, ttl)
            except asyncio.CancelledError:
                self._fail(batch, "the broker is closing")
                raise
            except Exception as exc:  # not Redis's: e.g. a payload it cannot encode
                log.exception("publishing %d message(s) failed", len(batch))
                self._fail(batch, f"cannot publish: {exc}")
                self._resync = True  # (presence writes among them)

    async def _await_readers(self, batch: list[tuple[str, object, bool, Any]]) -> None:
        """Wait (at most ``_READY_WAIT`` seconds) until the reader has found where each room
        of ``batch`` that this process just subscribed to stands, so that what it
        publishes there (a subscriber's own join, say) is not taken for past history."""
        pending = self._pending
        waiting = {pending[room] for room, _, _, _ in batch if room in pending}
        if waiting:
            await asyncio.wait(waiting, timeout=_READY_WAIT)

    @staticmethod
    def _fail(batch: list[tuple[str, object, bool, Any]], why: str) -> None:
        """Fail the numbering futures of ``batch`` that are still waiting."""
        for _, _, _, future in batch:
            if future is not None and not future.done():
                future.set_exception(BrokerUnavailableError(why))

    async def _send(
        self, batch: list[tuple[str, object, bool, Any]], maxlen: str, ttl: str
    ) -> None:
        """One pipeline of publish scripts and presence writes for ``batch``, in order,
        then a resync or the goodbye when asked (retried once on a new connection)."""
        for attempt in (1, 2):  # a second time on a fresh connection (Redis restarted?)
            try:
                await self._pipeline(batch, maxlen, ttl)
                break
            except self._errors as exc:
                if attempt == 2 or isinstance(exc, self._timeouts):  # (no answer: no retry)
                    self._down(exc)
                    self._unreachable(batch, exc)
                    break

    def _unreachable(self, batch: list[tuple[str, object, bool, Any]], exc: BaseException) -> None:
        """``batch`` could not reach Redis: its messages go to this process's members
        only, its numbered ones and the goodbye fail."""
        self._local(batch, exc)
        goodbye = self._goodbye
        if goodbye is not None and not goodbye.done():
            goodbye.set_exception(BrokerUnavailableError(f"redis unreachable: {exc}"))

    async def _pipeline(
        self, batch: list[tuple[str, object, bool, Any]], maxlen: str, ttl: str
    ) -> None:
        pid = self.process_id
        index = f"{self.prefix}:presence-of:{pid}"
        goodbye = self._goodbye
        said = goodbye is not None and goodbye.done()  # no presence written after it
        resync = self._resync and goodbye is None
        # One per result: None for a presence write; else (room, the offset this process
        # read in it, the future of its position or None).
        numbered: list[tuple[str, int, asyncio.Future[tuple[str, int]] | None] | None] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, payload, keep, future in batch:
                if type(payload) is _PresenceOp:
                    if said:
                        continue
                    keys = [self._presence_key(room), index]
                    field, member = f"{pid}:{payload.key}", f"{room}\n{payload.key}"
                    if payload.value is None:
                        await self._remove_script(keys=keys, args=[field, member], client=pipe)
                    else:
                        args = [field, payload.value, member]
                        await self._add_script(keys=keys, args=args, client=pipe)
                    numbered.append(None)
                    continue
                seen = self._seen(room)
                keys, args = publish_call(
                    self.prefix, room, payload, keep=keep, maxlen=maxlen, ttl=ttl, seen=seen
                )
                await self._script(keys=keys, args=args, client=pipe)
                numbered.append((room, seen[1], future))
            confirm = self.replicas > 0 and any(p and p[2] for p in numbered)
            if confirm:  # (its answer follows the batch's)
                self._wait(pipe)
            if resync:  # after the batch: what Redis has of this process is then exactly it
                await self._resync_script(
                    keys=[f"{self.prefix}:alive:{pid}", f"{self.prefix}:processes"],
                    args=self._resync_args(),
                    client=pipe,
                )
            elif goodbye is not None and not said:
                await self._goodbye_script(
                    keys=[f"{self.prefix}:processes"], args=[self.prefix, pid], client=pipe
                )
            results = await pipe.execute()
        replicated = int(results[len(numbered)]) if confirm else self.replicas
        self._settle(numbered, results, replicated)
        if resync:
            self._resync = False
            log.info("presence of this process written again to redis")
            if int(results[-1]):  # it had been swept: its members' leaves were announced
                log.warning(
                    "this process was taken for dead (no heartbeat for %.0f s): "
                    "announcing its members again",
                    self.presence_ttl,
                )
                for room, entries in self._presence.items():
                    self.announce(room, "join", list(entries.values()))
        elif goodbye is not None and not said and not goodbye.done():
            goodbye.set_result(results[-1])

    def _settle(
        self,
        numbered: list[tuple[str, int, asyncio.Future[tuple[str, int]] | None] | None],
        results: list[Any],
        replicated: int,
    ) -> None:
        """Answer the numbering futures of a pipeline's publications from its ``results``
        (``replicated``: how many replicas confirmed them); log a room found to have
        lost events."""
        for published, result in zip(numbered, results):
            if published is None:
                continue
            room, read, future = published
            if result[3] == 1:
                self._lost(room, read, str(result[0]))
            epoch, offset = str(result[0]), int(result[1])
            self._numbered.put(room, epoch, offset)
            if future is not None and not future.done():
                if replicated < self.replicas:
                    future.set_exception(self._not_replicated(replicated, epoch, offset))
                else:
                    future.set_result((epoch, offset))

    def _seen(self, room: str) -> tuple[str, int]:
        """The highest position this process knows ``room`` reached: read or given to
        its own publications (for the publish script's check)."""
        epoch, offset = self._epochs.get(room, ""), self._offsets.get(room, 0)
        mine = self._numbered.get(room)
        if mine is not None and (mine[0] == epoch or not epoch) and mine[1] > offset:
            return mine
        return epoch, offset

    def _lost(self, room: str, seen: int, epoch: str) -> None:
        self.history_losses += 1
        log.warning(
            "room %r: redis has fewer events of epoch %s than this process read (%d): it "
            "lost some (a failover before they reached the replica?); the room starts a new "
            "epoch%s, resumes from before are refused",
            room,
            self._epochs.get(room),
            seen,
            f" ({epoch})" if epoch else "",
        )

    def _resync_args(self) -> list[str]:
        args = [self.prefix, self.process_id, str(int(self.presence_ttl * 1000))]
        for room, entries in self._presence.items():
            for key, entry in entries.items():
                args += (room, key, _json(entry))
        return args

    def _local(self, batch: list[tuple[str, object, Any, Any]], exc: BaseException) -> None:
        messages = [item for item in batch if type(item[1]) is not _PresenceOp]
        if len(messages) < len(batch):
            self._resync = True  # written again once Redis is back
        if not messages:
            return
        self.failures += len(messages)
        log.warning(
            "redis unreachable (%s): %d message(s) delivered to this process only",
            exc,
            len(messages),
        )
        deliver = self._deliver
        assert deliver is not None
        for room, payload, _, future in messages:
            if room in self._positions or room in self._pending:
                deliver(Envelope(room, 0, payload, ""))
            if future is not None and not future.done():
                future.set_exception(
                    BrokerUnavailableError(f"redis unreachable ({exc}): delivered here only")
                )

    # Presence

    def presence_add(self, room: str, key: str, entry: Any) -> None:
        if "\n" in key:
            raise ValueError(f"a presence key has no newline: {key!r}")
        super().presence_add(room, key, entry)
        self._outbox.append((room, _PresenceOp(key, _json(entry)), True, None))
        self._wake_publisher.set()

    def presence_remove(self, room: str, key: str) -> None:
        if key not in self._presence.get(room, ()):
            return
        super().presence_remove(room, key)
        self._outbox.append((room, _PresenceOp(key, None), True, None))
        self._wake_publisher.set()

    def presence_now(self, room: str) -> list[Any] | None:
        """``None`` once started: the other processes' entries are in Redis."""
        return self.presence_local(room) if self._redis is None else None

    async def presence(self, room: str) -> list[Any]:
        if self._redis is None:
            return self.presence_local(room)
        read = self._presence_reads.get(room)
        if read is None:  # (else: share the read in flight, one at a time per room)
            read = asyncio.ensure_future(self._read_presence(room))
            self._presence_reads[room] = read
            read.add_done_callback(lambda _: self._presence_reads.pop(room, None))
        others = await asyncio.shield(read)
        return self.presence_local(room) + others

    async def _read_presence(self, room: str) -> list[Any]:
        """The other processes' entries of ``room`` (none when Redis does not answer)."""
        try:
            values = await asyncio.wait_for(
                self._read_script(
                    keys=[self._presence_key(room)], args=[self.prefix, self.process_id]
                ),
                self.presence_timeout,
            )
        except self._read_errors as exc:
            self._read_failed(exc, room)
            return []
        self._read_worked()
        return [json.loads(value) for value in values]

    async def presence_count(self, room: str) -> int:
        if self._redis is None:
            return len(self._presence.get(room, ()))
        try:
            count = await asyncio.wait_for(
                self._redis.hlen(self._presence_key(room)), self.presence_timeout
            )
        except self._read_errors as exc:
            self._read_failed(exc, room)
            return len(self._presence.get(room, ()))
        self._read_worked()
        return int(count)

    def _read_failed(self, exc: BaseException, room: str) -> None:
        if not self._read_failing:  # (once per outage)
            self._read_failing = True
            log.warning(
                "redis unreachable (%s): presence of %r (and of other rooms until redis "
                "answers) from this process only",
                exc or f"no answer within {self.presence_timeout:.1f} s",
                room,
            )

    def _read_worked(self) -> None:
        if self._read_failing:
            self._read_failing = False
            log.info("presence read from redis again")

    def announce(self, room: str, kind: str, entries: list[Any]) -> None:
        """Publish that ``entries`` left (``kind`` ``"leave"``) or joined ``room``, for a
        process that cannot: one that died (swept here) or that was taken for dead.

        For a ``/live`` channel's room, one presence push to its listeners (not kept);
        for a chat room, one ``leave`` (or ``join``) event per nick, numbered and kept,
        as the process's own would have been. Override it for rooms of other kinds.
        """
        if room.startswith(_LIVE_ROOM):
            channel = room[len(_LIVE_ROOM) :]
            change = PresenceChange(channel, kind, entries)
            self.publish(_LIVE_PRESENCE_ROOM + channel, change, keep=False)
            return
        for nick in entries:
            if isinstance(nick, str):
                self.publish(room, ChatEvent(kind, nick))

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.heartbeat
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time() - self.heartbeat)  # (after a stall: no burst)
            await self._beat()

    async def _beat(self) -> None:
        """One heartbeat, then one sweep of the dead; announce the leaves of what it swept."""
        if self._stopping:
            return
        self._beating += 1
        try:
            await self._beat_once()
        finally:
            self._beating -= 1

    async def _beat_once(self) -> None:
        prefix, pid = self.prefix, self.process_id
        try:
            new = await self._heartbeat_script(
                keys=[f"{prefix}:alive:{pid}", f"{prefix}:processes"],
                args=[pid, str(int(self.presence_ttl * 1000))],
            )
            if int(new) and self._registered:  # swept, or Redis lost its data
                self._resync = True
            self._registered = True
            if self._resync:
                self._wake_publisher.set()
            flat = await self._sweep_script(keys=[f"{prefix}:processes"], args=[prefix, pid])
        except self._errors as exc:
            if not self._beat_failing:
                self._beat_failing = True
                log.warning("redis unreachable (%s): no presence heartbeat", exc)
            return
        if self._beat_failing:
            self._beat_failing = False
            log.info("presence heartbeat: redis answers again")
        gone = _removed(flat)
        for room, entries in gone:
            self.announce(room, "leave", entries)
        if gone:
            count = sum(len(entries) for _, entries in gone)
            self.swept += count
            log.info(
                "swept %d presence entr%s of dead process(es) in %d room(s); leaves announced",
                count,
                "y" if count == 1 else "ies",
                len(gone),
            )

    # Reading

    async def _reader(self) -> None:
        while True:
            try:
                await self._read_forever()
            except self._errors as exc:  # retry with backoff
                if self._up:
                    log.warning("redis connection lost (%s); retrying", exc)
                self._down(exc)
            except Exception as exc:  # not Redis's: a bug; the reader must not die of it
                log.exception("reading redis failed; retrying")
                self._down(exc)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, _BACKOFF_CAP)

    def _down(self, exc: BaseException) -> None:
        """Redis did not answer: until the reader reaches it again, publications go to
        this process's members only, at once."""
        self._outage = exc
        self._wake_reader.set()  # (the reader finds out when it answers again)
        if self._up:
            self._up = False
            self.outages += 1

    def _known_down(self) -> bool:
        return self._outage is not None

    @property
    def up(self) -> bool:
        """Whether Redis answered last (reading, or publishing)."""
        return self._up

    async def _read_forever(self) -> None:
        redis = self._redis
        await redis.ping()
        self._backoff = 0.1
        self._outage = None
        if not self._up:
            log.info("redis connected: %s (%s)", redacted(self.url), _where(redis))
            self._up = True
        await self._check_rooms()
        while True:
            if self._known_down():  # the publisher failed since: does Redis answer?
                await redis.ping()
                self._outage = None
                if not self._up:
                    self._up = True
                    log.info("redis answers again: %s (%s)", redacted(self.url), _where(redis))
            if self._pending:
                await self._position_pending(redis)
            if not self._positions:
                self._wake_reader.clear()
                if not self._known_down():
                    await self._wake_reader.wait()
                continue
            streams = {self._key(room, "stream"): pos for room, pos in self._positions.items()}
            answer = await redis.xread(streams, count=1000, block=100)
            for stream, entries in answer or ():
                room = stream[len(self.prefix) + 6 : -len(":stream")]
                for entry_id, fields in entries:
                    if room not in self._positions:
                        break
                    try:
                        offset, epoch = _offset(entry_id, fields), fields["e"]
                        payload = decode_payload(fields["p"])
                    except (KeyError, ValueError, TypeError) as exc:
                        log.warning(
                            "room %r: entry %s is not tornws's (%r); skipped", room, entry_id, exc
                        )
                        self._positions[room] = entry_id
                        continue
                    previous = self._offsets[room]
                    same = epoch == self._epochs[room]
                    if (same and offset <= previous) or (
                        self._spoiled and self._spoiled.get(room) == epoch
                    ):
                        self._positions[room] = entry_id  # (not delivered: see _renumbered)
                        await self._renumbered(room, epoch, previous)
                        continue
                    if previous and offset > previous + 1 and same:
                        self.skipped += offset - previous - 1
                        log.warning(
                            "room %r: fell %d event(s) behind the stream's length; skipped",
                            room,
                            offset - previous - 1,
                        )
                    self._positions[room] = entry_id
                    self._offsets[room] = offset
                    self._epochs[room] = epoch
                    assert self._deliver is not None
                    self._deliver(Envelope(room, offset, payload, epoch))

    async def _position_pending(self, redis: Any) -> None:
        """Find where the stream of each room subscribed to stands: read after that."""
        for room in list(self._pending):
            last = await redis.xrevrange(self._key(room, "stream"), count=1)
            epoch = await redis.get(self._key(room, "epoch"))
            future = self._pending.pop(room, None)
            if future is None:
                continue  # unsubscribed meanwhile
            self._positions[room] = last[0][0] if last else "0-0"
            same = last and last[0][1]["e"] == epoch
            self._offsets[room] = _offset(*last[0]) if same else 0
            self._epochs[room] = epoch or ""
            if not future.done():
                future.set_result(None)

    async def _check_rooms(self) -> None:
        """(Re)start every room where it was, back on Redis; a room whose epoch changed
        (Redis lost its data; or lost events, and so starts a new one) starts from the
        beginning of its new epoch."""
        for room in list(self._positions):
            keys = [self._key(room, kind) for kind in ("stream", "epoch", "n")]
            known, seen = self._seen(room)
            epoch, lost = await self._check_script(keys=keys, args=[known, str(seen)])
            if int(lost):
                self._lost(room, seen, "")
            if epoch != self._epochs.get(room):
                self._positions[room] = "0-0"
                self._offsets[room] = 0
                self._epochs[room] = epoch or ""

    async def _renumbered(self, room: str, epoch: str, read: int) -> None:
        """An entry of ``room`` numbered at or below the offset this process read in that
        epoch: Redis gave an offset clients saw to another event (it lost events, in a
        failover, before anyone who read them published). Every later entry of that epoch
        is left undelivered (a client would take them for what follows what it saw), and
        the room starts a new epoch."""
        if self._spoiled.get(room) == epoch:
            return
        self._spoiled[room] = epoch
        self._lost(room, read, "")
        keys = [self._key(room, kind) for kind in ("stream", "epoch", "n")]
        await self._check_script(keys=keys, args=[epoch, str(2**53)])  # (whatever its counter)

    # History

    async def _read_range(
        self, room: str, offset: int, upto: int, position: str
    ) -> tuple[list[tuple[int, bool, int, Envelope]], Any]:
        """``room``'s stream after ``offset`` up to ``position`` (offset ``upto``): its
        last ``upto - offset`` entries there, decoded once for every reader that shares
        them, ``(offset, kept, time in ms, envelope)`` each, in order; and the room's
        epoch now."""
        redis = self._redis
        assert redis is not None
        stream = self._key(room, "stream")
        entries = await redis.xrevrange(stream, position, "-", count=upto - offset)
        epoch = await redis.get(self._key(room, "epoch"))
        decoded = []
        for entry_id, fields in reversed(entries):
            try:
                number = _offset(entry_id, fields)
                envelope = Envelope(room, number, decode_payload(fields["p"]), fields["e"])
            except (KeyError, ValueError, TypeError):
                continue  # (not tornws's: the reader logged it; the range is then not whole)
            millis = int(fields.get("t") or entry_id.split("-", 1)[0])  # (the id: Redis's time)
            decoded.append((number, fields.get("k") != "0", millis, envelope))
        return decoded, epoch

    async def recover(self, room: str, epoch: str, offset: int) -> list[Envelope] | None:
        """The envelopes of ``room`` after ``offset`` up to what this process has
        delivered, or ``None`` if Redis cannot tell them all."""
        position = self._positions.get(room)
        if position is None or self._epochs.get(room) != epoch:
            return None
        upto = self._offsets.get(room, 0)
        if offset >= upto:
            return []  # (anything newer comes live)
        shared = self._range_reads.get(room)
        if shared is None or shared[0] > offset or shared[1] != position:
            read = asyncio.ensure_future(self._read_range(room, offset, upto, position))
            entry = shared = self._range_reads[room] = (offset, position, read)

            def done(future: asyncio.Future[Any]) -> None:
                if self._range_reads.get(room) is entry:
                    del self._range_reads[room]
                if not future.cancelled():
                    future.exception()  # (retrieved: each waiter gets it, if any is left)

            read.add_done_callback(done)
        try:
            entries, current = await asyncio.shield(shared[2])
        except self._errors:
            return None  # cannot tell: the client learns it with recovered false
        entries = [entry for entry in entries if entry[0] > offset]
        if current != epoch or not entries or entries[0][0] != offset + 1:
            return None
        if not all(kept and envelope.epoch == epoch for _, kept, _, envelope in entries):
            return None  # a message that was not to be kept is in the range
        horizon = time.time() * 1000 - self.history_age * 1000
        if entries[0][2] <= horizon:
            return None
        # (The same envelopes for every reader: each is encoded once per codec.)
        return [envelope for _, _, _, envelope in entries]
