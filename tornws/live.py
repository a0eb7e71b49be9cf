"""Live channels: many subscriptions on one connection, subprotocol ``tornws.v1``.

A client of ``/live`` sends commands as JSON text frames, ``{"id": <int>,
"type": <command>, ...}``, and gets one reply per command, ``{"id", "result"}``
or ``{"id", "error": {"code", "message"}}``, in order; publications arrive as
pushes without an id, ``{"type": "pub", "channel", "epoch", "offset", "data"}``.
``docs/protocol.md`` has the whole protocol; in short:

- ``subscribe`` (``channel``, optional ``since: "<epoch>:<offset>"``, optional
  ``presence: true``) → ``{"epoch", "offset"}``, the channel's latest; with
  ``since`` also ``recovered`` and, when true, exactly the missed
  ``publications``;
- ``unsubscribe`` (``channel``) → ``{}``;
- ``publish`` (``channel``, ``data``: any JSON) → ``{"epoch", "offset"}``;
- ``presence`` (``channel``) → ``{"count", "members"}``, of every process the
  broker reaches (:meth:`Broker.presence <tornws.broker.Broker.presence>`).

Channels are rooms of the application's :class:`~tornws.registry.Registry`
(``live:<channel>``), so they ride its broker (memory or Redis), keep its
history and resume from it, and a publication is encoded once per channel and
the same frame goes to every subscriber on the registry's direct path. Each
subscription is its own member of the channel's room (:class:`Subscription`).
Join and leave pushes go only to subscriptions that asked for them, through a
second room per channel, and are coalesced to at most one push per channel per
second (:data:`PRESENCE_INTERVAL`) in each process: a storm of joins costs each
listener one message a second, not one per join.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, ClassVar

from .broker import Codec, Envelope
from .chat import parse_since
from .exceptions import BrokerUnavailableError, TornwsError
from .frames import Message
from .handlers import WebSocketHandler
from .registry import Registry
from .transport import Transport

__all__ = [
    "ACTIONS",
    "CHANNEL_PATTERN",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "LIVE_SUBPROTOCOL",
    "PRESENCE",
    "PRESENCE_INTERVAL",
    "PUB",
    "CommandError",
    "LiveHandler",
    "PresenceChange",
    "PresenceCodec",
    "PubCodec",
    "Publication",
    "Subscription",
    "allow_public",
    "channel_room",
]

log = logging.getLogger(__name__)

#: The subprotocol a ``/live`` client must offer.
LIVE_SUBPROTOCOL = "tornws.v1"
#: Channel names (a leading ``#`` is reserved for per-user channels).
CHANNEL_PATTERN = r"[A-Za-z0-9_.:@~-]{1,128}"
_CHANNEL = re.compile(CHANNEL_PATTERN)
#: Subscriptions one connection may hold.
DEFAULT_MAX_SUBSCRIPTIONS = 100
#: What the authorization hook is asked about.
ACTIONS = ("subscribe", "publish", "presence")
#: Seconds between two join/leave pushes of one channel (joins in between are coalesced).
PRESENCE_INTERVAL = 1.0
_ROOM = "live:"
_PRESENCE_ROOM = "live.presence:"
_COMMANDS = ("subscribe", "unsubscribe", "publish", "presence")


def channel_room(channel: str) -> str:
    """The registry room that holds ``channel``'s subscriptions."""
    return _ROOM + channel


def allow_public(user: Any, channel: str, action: str) -> bool:
    """The demo's authorization: every action on every channel without a leading ``#``."""
    return not channel.startswith("#")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class CommandError(TornwsError):
    """A command that cannot be carried out: answered with ``{"error": {code, message}}``;
    the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Publication:
    """What is published to a channel: its ``data`` as JSON text (encoded once, by the
    publisher), and the publishing connection's id (``""`` from elsewhere)."""

    __slots__ = ("data", "origin")

    def __init__(self, data: str, origin: str = "") -> None:
        self.data = data
        self.origin = origin

    def __repr__(self) -> str:
        return f"<Publication {self.data[:40]!r}>"


class PresenceChange:
    """Subscriptions that joined (``kind`` ``"join"``) or left (``"leave"``) one channel,
    in order: a presence push, not numbered, not kept."""

    __slots__ = ("channel", "kind", "members")

    def __init__(self, channel: str, kind: str, members: list[Any]) -> None:
        self.channel = channel
        self.kind = kind
        self.members = members


class PubCodec:
    """Publications as ``pub`` pushes: one frame per publication, for every subscriber."""

    echo_own: ClassVar[bool] = True

    def encode(self, envelope: Envelope, /) -> Message | None:
        publication = envelope.payload
        if not isinstance(publication, Publication):
            return None
        channel = envelope.room[len(_ROOM) :]
        return Message(
            f'{{"type":"pub","channel":{_dumps(channel)},"epoch":{_dumps(envelope.epoch)},'
            f'"offset":{envelope.offset},"data":{publication.data}}}'
        )

    def __repr__(self) -> str:
        return "PUB"


class PresenceCodec:
    """Presence changes as ``join`` and ``leave`` pushes, ``{"type", "channel", "members"}``."""

    echo_own: ClassVar[bool] = True

    def encode(self, envelope: Envelope, /) -> Message | None:
        change = envelope.payload
        if not isinstance(change, PresenceChange):
            return None
        return Message(
            _dumps({"type": change.kind, "channel": change.channel, "members": change.members})
        )

    def __repr__(self) -> str:
        return "PRESENCE"


PUB = PubCodec()
PRESENCE = PresenceCodec()


class Subscription:
    """One channel of one connection: the member of the channel's registry room.

    While it is being answered (``subscribe`` in flight: the channel's position or
    its missed publications are being read) the publications that arrive are held;
    after a resume, the ones it was replayed are skipped; then it is on the
    registry's direct path like any member.
    """

    __slots__ = (
        "__weakref__",
        "_after",
        "_waiting",
        "automatic",
        "channel",
        "handler",
        "listener",
    )

    def __init__(self, handler: LiveHandler, channel: str, presence: bool) -> None:
        self.handler = handler
        self.channel = channel
        #: Its member of the channel's presence room, when it asked for presence.
        self.listener = _Listener(handler) if presence else None
        #: Made by the server (a user's own channel), not by a subscribe.
        self.automatic = False
        self._waiting: list[Envelope] | None = []  # until the reply is sent
        self._after: tuple[str, int] | None = None  # publications up to this were sent

    def direct_delivery(self) -> tuple[Codec, Transport] | None:
        if self._waiting is not None or self._after is not None:
            return None
        transport = self.handler.ws_connection
        return (PUB, transport) if type(transport) is Transport else None

    def deliver(self, envelope: Envelope) -> None:
        if self._waiting is not None:
            self._waiting.append(envelope)
            return
        if self._after is not None:
            epoch, offset = self._after
            if envelope.epoch == epoch and envelope.offset <= offset:
                return  # sent with the reply already
            self._after = None
            self.handler.registry.update(self)  # caught up: on the direct path
        message = envelope.encode(PUB)
        if message is not None:
            self.handler.send(message)

    def answered(self, epoch: str, offset: int) -> None:
        """The reply is sent, reporting (or replaying) up to ``offset``: send what was
        held after it, then take the direct path."""
        waiting, self._waiting = self._waiting, None
        self._after = (epoch, offset)
        for envelope in waiting or ():
            self.deliver(envelope)
        if self._after is not None:
            self._after = None
            self.handler.registry.update(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} of {self.handler!r}>"


class _Listener:
    """The member of a channel's presence room: a subscription that asked for presence."""

    __slots__ = ("__weakref__", "handler")

    def __init__(self, handler: LiveHandler) -> None:
        self.handler = handler

    def direct_delivery(self) -> tuple[Codec, Transport] | None:
        transport = self.handler.ws_connection
        return (PRESENCE, transport) if type(transport) is Transport else None

    def deliver(self, envelope: Envelope) -> None:
        message = envelope.encode(PRESENCE)
        if message is not None:
            self.handler.send(message)


class _Announcer:
    """Coalesces the joins and leaves of each channel of one registry: the first change
    after a quiet :data:`PRESENCE_INTERVAL` is pushed at once (on the next loop turn),
    later ones at most once per interval, as runs of joins and of leaves in the order
    they happened."""

    def __init__(self, registry: Registry) -> None:
        # (Weakly: it is the value of a WeakKeyDictionary keyed by that registry.)
        self._registry = weakref.ref(registry)
        self._pending: dict[str, list[tuple[str, Any]]] = {}
        self._last: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # The changes held back go out when the broker closes (the leaves of a drain).
        registry.broker.at_close(self.flush_all)

    def flush_all(self) -> None:
        """Push every held-back change now."""
        for channel, timer in list(self._timers.items()):
            timer.cancel()
            self._flush(channel)

    def announce(self, channel: str, kind: str, member: dict[str, Any]) -> None:
        self._pending.setdefault(channel, []).append((kind, member))
        if channel in self._timers:
            return
        loop = asyncio.get_running_loop()
        due = self._last.get(channel, -PRESENCE_INTERVAL) + PRESENCE_INTERVAL
        self._timers[channel] = loop.call_at(max(due, loop.time()), self._flush, channel)

    def _flush(self, channel: str) -> None:
        del self._timers[channel]
        changes = self._pending.pop(channel, [])
        now = self._last[channel] = asyncio.get_running_loop().time()
        if len(self._last) > 10_000:  # forget quiet channels
            self._last = {c: t for c, t in self._last.items() if t > now - PRESENCE_INTERVAL}
        room = _PRESENCE_ROOM + channel
        registry = self._registry()
        if registry is None:
            return
        publish = registry.broker.publish
        run: list[Any] = []
        for index, (kind, member) in enumerate(changes):
            run.append(member)
            if index + 1 == len(changes) or changes[index + 1][0] != kind:
                publish(room, PresenceChange(channel, kind, run), keep=False)
                run = []


_announcers: weakref.WeakKeyDictionary[Registry, _Announcer] = weakref.WeakKeyDictionary()


def _announcer(registry: Registry) -> _Announcer:
    announcer = _announcers.get(registry)
    if announcer is None:
        announcer = _announcers[registry] = _Announcer(registry)
    return announcer


class LiveHandler(WebSocketHandler):
    """``/live``: the ``tornws.v1`` protocol (see the module docstring and docs/protocol.md).

    Args (``initialize``, besides the common ones):
        authorizer: ``(current_user, channel, action) -> bool``, asked on every
            ``subscribe``, ``publish`` and ``presence`` (``action`` names it); ``False``
            answers ``forbidden``. Default: :func:`allow_public`.
        max_subscriptions: subscriptions one connection may hold (then
            ``too_many_subscriptions``).
    """

    subprotocols = (LIVE_SUBPROTOCOL,)
    subprotocol_required = True

    # Per connection, in slots (see WebSocketHandler.__slots__); the defaults are for
    # subclasses whose initialize() does not call super().initialize().
    __slots__ = ("_last_entry", "_subscriptions", "authorizer", "max_subscriptions")
    _slot_defaults: ClassVar[dict[str, Any]] = {
        "authorizer": allow_public,
        "max_subscriptions": DEFAULT_MAX_SUBSCRIPTIONS,
        "_subscriptions": None,
        "_last_entry": None,
    }
    authorizer: Callable[[Any, str, str], bool]
    max_subscriptions: int
    _subscriptions: dict[str, Subscription] | None
    _last_entry: dict[str, Any] | None

    def initialize(
        self,
        registry: Registry | None = None,
        *,
        authorizer: Callable[[Any, str, str], bool] = allow_public,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        **options: Any,
    ) -> None:
        super().initialize(registry, **options)
        self.authorizer = authorizer
        if max_subscriptions < 1:
            raise ValueError(f"max_subscriptions must be at least 1, not {max_subscriptions}")
        self.max_subscriptions = max_subscriptions

    # Hooks

    def authorize(self, channel: str, action: str) -> bool:
        """Whether this connection may ``action`` (``subscribe``, ``publish``,
        ``presence``) on ``channel``; runs on every such command. The default asks
        the ``authorizer`` with ``current_user``."""
        return bool(self.authorizer(self.current_user, channel, action))

    def member_info(self) -> Any:
        """What presence shows of this connection besides its id and user (JSON-able);
        ``None`` by default. Override to attach, e.g., a display name."""
        return None

    # Tornado hooks

    def open(self, *args: str, **kwargs: str) -> None:
        self._subscriptions = {}
        own = self.user_channel
        if own is not None:  # reachable at once, before any command
            subscription = self._subscriptions[own] = Subscription(self, own, False)
            subscription.automatic = True
            subscription._waiting = None  # nothing to answer: on the direct path now
            self.registry.join(channel_room(own), subscription)

    @property
    def user_channel(self) -> str | None:
        """``#<user>`` for a signed-in connection (subscribed automatically; only that
        user may subscribe to it), else ``None``; also ``None`` when ``str(user)`` is
        not a valid channel name."""
        user = self.current_user
        if user is None:
            return None
        name = str(user)
        return f"#{name}" if _CHANNEL.fullmatch(name) else None

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        if isinstance(message, bytes):
            self._reply(None, error=("bad_request", "commands are JSON text frames, not binary"))
            return None
        try:
            command = json.loads(message)
        except ValueError as exc:
            self._reply(None, error=("bad_request", f"not JSON: {exc}"))
            return None
        ident = command.get("id") if isinstance(command, dict) else None
        if type(ident) is not int:
            self._reply(
                None,
                error=("bad_request", 'expected a JSON object with an integer "id"'),
            )
            return None
        kind = command.get("type")
        if kind not in _COMMANDS:
            self._reply(
                ident,
                error=(
                    "unknown_type",
                    f"unknown type {kind!r}; known: " + ", ".join(_COMMANDS),
                ),
            )
            return None
        try:
            return getattr(self, f"_{kind}")(ident, command)  # type: ignore[no-any-return]
        except CommandError as exc:
            self._reply(ident, error=(exc.code, exc.message))
            return None

    def on_close(self) -> None:
        for channel in list(self._subscriptions or ()):
            self._drop(channel)

    # Commands

    def _subscribe(self, ident: int, command: dict[str, Any]) -> Awaitable[None] | None:
        channel = self._channel(command, "subscribe")
        subscriptions = self._subscriptions
        assert subscriptions is not None
        existing = subscriptions.get(channel)
        if existing is not None and existing.automatic:
            # One's own channel, subscribed at open: subscribing again (with a since,
            # after a reconnect) answers like any subscribe, resume included.
            self._drop(channel, announce=False)
        elif existing is not None:
            raise CommandError("already_subscribed", f"already subscribed to {channel!r}")
        if len(subscriptions) >= self.max_subscriptions:
            raise CommandError(
                "too_many_subscriptions",
                f"a connection may hold {self.max_subscriptions} subscriptions",
            )
        since = command.get("since")
        position: tuple[str, int] | None = None
        if since is not None:
            if not isinstance(since, str):
                raise CommandError("bad_request", '"since" must be "<epoch>:<offset>"')
            try:
                position = parse_since(since)
            except ValueError:
                raise CommandError(
                    "bad_request", f'invalid since {since!r}: expected "<epoch>:<offset>"'
                ) from None
        presence = command.get("presence", False)
        if not isinstance(presence, bool):
            raise CommandError("bad_request", '"presence" must be true or false')
        subscription = subscriptions[channel] = Subscription(self, channel, presence)
        listener = subscription.listener
        registry = self.registry
        room = channel_room(channel)
        registry.join(room, subscription)
        if listener is not None:
            registry.join(_PRESENCE_ROOM + channel, listener)
        if not channel.startswith("#"):  # (a user's channel has no presence)
            entry = self._shared_entry()
            registry.broker.presence_add(room, self.connection_id, entry)
            _announcer(registry).announce(channel, "join", entry)
        return self._answer_subscribe(ident, subscription, position)

    async def _answer_subscribe(
        self, ident: int, subscription: Subscription, since: tuple[str, int] | None
    ) -> None:
        broker = self.registry.broker
        room = channel_room(subscription.channel)
        ready = broker.ready(room)
        if ready is not None:
            try:  # (shared by every subscriber of the channel: not to be cancelled by one)
                await asyncio.wait_for(asyncio.shield(ready), 2.0)
            except asyncio.TimeoutError:
                log.warning("channel %r not ready after 2 s: answering anyway", room)
        try:
            epoch, offset = await broker.position(room)
        except BrokerUnavailableError as exc:
            if self._holds(subscription):
                self._reply(ident, error=("unavailable", str(exc)))
                self._drop(subscription.channel)  # (its join was announced: so is its leave)
            return
        missed = None
        if since is not None:
            missed = await broker.recover(room, *since)
        if self.ws_connection is None or not self._holds(subscription):
            return  # closed, or unsubscribed, meanwhile
        # Publications up to `sent` go with the reply (or came before the subscription);
        # the ones held since it joined that are newer are sent right after it.
        sent = offset
        body = f'"epoch":{_dumps(epoch)},"offset":{offset}'
        if since is not None:
            if missed is None or (missed and missed[0].epoch != epoch):
                body += ',"recovered":false'
            else:
                texts = [
                    m.payload.decode() for m in (e.encode(PUB) for e in missed) if m is not None
                ]
                body += ',"recovered":true,"publications":[' + ",".join(texts) + "]"
                # (A broker may replay less than its latest offset: what its reader has
                # delivered here so far. The rest is held, and follows the reply.)
                sent = missed[-1].offset if missed else since[1]
        self.send(Message(f'{{"id":{ident},"result":{{{body}}}}}'))
        subscription.answered(epoch, sent)

    def _holds(self, subscription: Subscription) -> bool:
        """Whether ``subscription`` is still this connection's (not unsubscribed or closed)."""
        return (self._subscriptions or {}).get(subscription.channel) is subscription

    def _unsubscribe(self, ident: int, command: dict[str, Any]) -> None:
        channel = self._channel(command, None)
        if channel not in (self._subscriptions or {}):
            raise CommandError("not_subscribed", f"not subscribed to {channel!r}")
        self._drop(channel)
        self._reply(ident, result={})

    def _publish(self, ident: int, command: dict[str, Any]) -> Awaitable[None] | None:
        channel = self._channel(command, "publish")
        if "data" not in command:
            raise CommandError("bad_request", 'publish needs "data" (any JSON)')
        publication = Publication(_dumps(command["data"]), self.connection_id)
        room = channel_room(channel)
        numbered = self.registry.broker.publish_numbered_now(room, publication)
        if numbered is None:
            return self._answer_publish(ident, room, publication)
        # (At once: a burst of publications read together is one write per receiver.)
        self._reply(ident, result={"epoch": numbered[0], "offset": numbered[1]})
        return None

    async def _answer_publish(self, ident: int, room: str, publication: Publication) -> None:
        try:
            epoch, offset = await self.registry.broker.publish_numbered(room, publication)
        except BrokerUnavailableError as exc:
            self._reply(ident, error=("unavailable", str(exc)))
            return
        self._reply(ident, result={"epoch": epoch, "offset": offset})

    def _presence(self, ident: int, command: dict[str, Any]) -> Awaitable[None] | None:
        channel = self._channel(command, "presence")
        room = channel_room(channel)
        members = self.registry.broker.presence_now(room)  # (the memory broker: at once)
        if members is None:
            return self._answer_presence(ident, room)
        self._reply(ident, result={"count": len(members), "members": members})
        return None

    async def _answer_presence(self, ident: int, room: str) -> None:
        members = await self.registry.broker.presence(room)  # every process's
        self._reply(ident, result={"count": len(members), "members": members})

    # Helpers

    def _channel(self, command: dict[str, Any], action: str | None) -> str:
        channel = command.get("channel")
        if not isinstance(channel, str) or not _CHANNEL.fullmatch(
            channel[1:] if channel.startswith("#") else channel
        ):
            raise CommandError(
                "bad_channel",
                f"invalid channel {channel!r}: 1 to 128 of A-Z a-z 0-9 _ . : @ ~ -, "
                "after an optional # (a user's channel)",
            )
        if channel.startswith("#") and action == "subscribe" and channel != self.user_channel:
            raise CommandError("forbidden", f"{channel!r} is another user's channel")
        if channel.startswith("#") and action == "subscribe":
            return channel  # one's own
        if action is not None and not self.authorize(channel, action):
            raise CommandError("forbidden", f"not allowed to {action} on {channel!r}")
        return channel

    def _drop(self, channel: str, *, announce: bool = True) -> None:
        subscriptions = self._subscriptions
        assert subscriptions is not None
        subscription = subscriptions.pop(channel)
        listener = subscription.listener
        registry = self.registry
        room = channel_room(channel)
        registry.leave(room, subscription)
        if listener is not None:
            registry.leave(_PRESENCE_ROOM + channel, listener)
        if not channel.startswith("#"):  # (a user's channel has no presence)
            registry.broker.presence_remove(room, self.connection_id)  # (before its leave)
            if announce:
                _announcer(registry).announce(channel, "leave", self.presence_entry())

    def _shared_entry(self) -> dict[str, Any]:
        """:meth:`presence_entry`, as the same object for every subscription while it
        gives the same value (a subscription's entry costs no dict of its own)."""
        entry = self.presence_entry()
        if entry == self._last_entry:
            return self._last_entry
        self._last_entry = entry
        return entry

    def presence_entry(self) -> dict[str, Any]:
        """This connection as presence shows it: ``{"id", "user", "info"}``; what it
        gives when a subscription joins is what its join push and ``presence`` show."""
        user = self.current_user
        return {
            "id": self.connection_id,
            "user": None if user is None else str(user),
            "info": self.member_info(),
        }

    def _reply(
        self,
        ident: int | None,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        if error is not None:
            body = {"id": ident, "error": {"code": error[0], "message": error[1]}}
        else:
            body = {"id": ident, "result": result}
        self.send(Message(_dumps(body)))
