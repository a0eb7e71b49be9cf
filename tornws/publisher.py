"""Publishing from another process through Redis: :class:`Publisher` and :class:`AsyncPublisher`.

A Django or Flask view, a Celery task, a cron script — code with no event loop
and no tornws in its process — publishes to the channels and rooms of the
tornws processes that share its Redis (``tornws serve --broker URL``)::

    from tornws.publisher import Publisher

    with Publisher("redis://127.0.0.1:6379/0") as publisher:
        position = publisher.publish("news", {"title": "hello"})  # Position(epoch, offset)
        publisher.publish("#ann", {"unread": 3})                  # every connection of ann
        publisher.say("lobby", "the deploy is done")              # a chat room
        publisher.disconnect("ann")                               # close ann's connections

It runs the same publish script as the tornws processes
(:func:`tornws.redis_broker.publish_call`), so its publications are numbered in
the channel's one sequence, ordered with the clients' publications, kept in
the channel's history and resumable. Give it the ``prefix``, ``history`` and
``history_age`` the servers use (their defaults match). Without Redis there is
no other process to reach: publish in the process with :class:`tornws.Hub`.

Needs redis-py (``pip install 'tornws[redis]'``). ``tornws publish --broker
URL CHANNEL JSON`` is the same from a shell.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .broker import DEFAULT_HISTORY, DEFAULT_HISTORY_AGE
from .chat import ChatEvent
from .exceptions import BrokerUnavailableError, ConfigError, NotReplicatedError
from .hub import Position, disconnect_message, publication
from .node import CONTROL_ROOM, DISCONNECT_CODE, DISCONNECT_REASON
from .redis_broker import (
    PUBLISH_SCRIPT,
    Numbered,
    check_url,
    check_wait,
    connect,
    disconnect,
    publish_call,
    redacted,
)

__all__ = ["AsyncPublisher", "Publisher"]


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError("tornws.Publisher needs redis-py: pip install 'tornws[redis]'") from None
    return redis


def _chat(room: str, text: str, nick: str) -> ChatEvent:
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    return ChatEvent("message", nick, text)


class _Base:
    def __init__(
        self,
        url: str,
        prefix: str,
        history: int,
        history_age: float,
        *,
        replicas: int,
        replica_timeout: float,
    ) -> None:
        check_url(url, "a Publisher's url")
        self.url = url
        self.replicas = replicas
        self._wait = ("WAIT", replicas, max(1, int(replica_timeout * 1000)))
        self._replica_timeout = replica_timeout
        self._numbered = Numbered()
        self.prefix = prefix
        self._maxlen = str(max(history, 1))
        self._ttl = str(int(history_age * 1000))

    def _call(self, room: str, payload: object, keep: bool) -> tuple[list[str], list[str]]:
        return publish_call(
            self.prefix,
            room,
            payload,
            keep=keep,
            maxlen=self._maxlen,
            ttl=self._ttl,
            seen=self._numbered.get(room) or ("", 0),
        )

    def _position(self, room: str, results: list[Any]) -> Position:
        """The position a pipeline's answers give: the script's, then ``WAIT``'s count."""
        position = Position(str(results[0][0]), int(results[0][1]))
        self._numbered.put(room, *position)
        if self.replicas and int(results[1]) < self.replicas:
            raise NotReplicatedError(
                f"published at {position}, but {results[1]} of {self.replicas} replica(s) "
                f"confirmed it within {self._replica_timeout:g} s: a failover may lose it",
                *position,
            )
        return position


class Publisher(_Base):
    """Publishes to tornws through Redis, synchronously (see the module docstring).

    Thread-safe (redis-py's connection pool); one per process is enough. ``url`` may
    name a server or its Sentinels (:data:`tornws.redis_broker.URL_SCHEMES`). With
    ``replicas`` N > 0, a publication returns once N replicas have it (Redis ``WAIT``,
    ``replica_timeout`` seconds at most), so that a failover cannot lose it.

    Every method raises :class:`~tornws.exceptions.BrokerUnavailableError` when Redis
    could not be reached (nothing was published), and its subclass
    :class:`~tornws.exceptions.NotReplicatedError` when the publication was made (at the
    error's ``epoch`` and ``offset``) but fewer than ``replicas`` replicas confirmed it.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornws",
        history: int = DEFAULT_HISTORY,
        history_age: float = DEFAULT_HISTORY_AGE,
        timeout: float = 5.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        check_wait(replicas, replica_timeout, timeout)
        super().__init__(
            url, prefix, history, history_age, replicas=replicas, replica_timeout=replica_timeout
        )
        redis = _redis()
        self._errors = (redis.exceptions.RedisError, OSError)
        self._client = connect(
            url,
            asynchronous=False,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._script = self._client.register_script(PUBLISH_SCRIPT)

    def publish(self, channel: str, data: Any) -> Position:
        """Publish ``data`` (any JSON) to ``channel`` (``#<user>``: that user's
        connections); return where it landed."""
        return self._run(*publication(channel, data), keep=True)

    def say(self, room: str, text: str, *, nick: str = "server") -> Position:
        """Post ``text`` to chat room ``room`` as ``nick``."""
        return self._run(room, _chat(room, text, nick), keep=True)

    def disconnect(
        self, user: Any, *, code: int = DISCONNECT_CODE, reason: str = DISCONNECT_REASON
    ) -> None:
        """Close every connection of ``user`` on every tornws process of this Redis."""
        self._run(CONTROL_ROOM, disconnect_message(user, code, reason), keep=False)

    def _run(self, room: str, payload: object, *, keep: bool) -> Position:
        keys, args = self._call(room, payload, keep)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                self._script(keys=keys, args=args, client=pipe)
                if self.replicas:
                    pipe.execute_command(*self._wait)
                results = pipe.execute()
        except self._errors as exc:
            where = redacted(self.url)
            raise BrokerUnavailableError(f"redis unreachable ({where}): {exc}") from None
        return self._position(room, results)

    def close(self) -> None:
        self._client.close()
        sentinel = getattr(self._client.connection_pool, "sentinel_manager", None)
        for client in sentinel.sentinels if sentinel is not None else ():
            client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPublisher(_Base):
    """:class:`Publisher`'s asyncio twin: the same methods, awaited
    (``async with AsyncPublisher(url) as publisher: await publisher.publish(...)``)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tornws",
        history: int = DEFAULT_HISTORY,
        history_age: float = DEFAULT_HISTORY_AGE,
        timeout: float = 5.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        check_wait(replicas, replica_timeout, timeout)
        super().__init__(
            url, prefix, history, history_age, replicas=replicas, replica_timeout=replica_timeout
        )
        redis = _redis()
        self._errors = (redis.exceptions.RedisError, OSError)
        self._client = connect(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._client.register_script(PUBLISH_SCRIPT)

    async def publish(self, channel: str, data: Any) -> Position:
        return await self._run(*publication(channel, data), keep=True)

    async def say(self, room: str, text: str, *, nick: str = "server") -> Position:
        return await self._run(room, _chat(room, text, nick), keep=True)

    async def disconnect(
        self, user: Any, *, code: int = DISCONNECT_CODE, reason: str = DISCONNECT_REASON
    ) -> None:
        await self._run(CONTROL_ROOM, disconnect_message(user, code, reason), keep=False)

    async def _run(self, room: str, payload: object, *, keep: bool) -> Position:
        keys, args = self._call(room, payload, keep)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                await self._script(keys=keys, args=args, client=pipe)
                if self.replicas:
                    pipe.execute_command(*self._wait)
                results = await pipe.execute()
        except self._errors as exc:
            where = redacted(self.url)
            raise BrokerUnavailableError(f"redis unreachable ({where}): {exc}") from None
        return self._position(room, results)

    async def close(self) -> None:
        await disconnect(self._client)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
