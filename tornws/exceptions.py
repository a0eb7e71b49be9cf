"""Exceptions raised by tornws.

Every exception tornws defines derives from :class:`TornwsError`::

    TornwsError
     ├── HandshakeError   (also tornado.web.HTTPError) the request is refused
     │                    before the upgrade: an HTTP status and a plain-text body
     │                    that says what to change
     ├── ConfigError      (also ValueError) tornws was configured wrongly, e.g. a
     │                    bad ``--app module:factory`` or an invalid room name
     ├── ProtocolError    the peer broke RFC 6455 (the peer's fault): carries the
     │                    close code the connection is failed with
     ├── BrokerUnavailableError  a publication could not be numbered: the broker
     │    │               (Redis) is unreachable
     │    └── NotReplicatedError  it was numbered, but fewer replicas than asked
     │                    confirmed it in time (Redis ``WAIT``)
     ├── TicketError      (tornws.auth) a ticket that cannot be redeemed: forged,
     │                    expired or used; answered with HTTP 401
     ├── ChatInputError   (tornws.chat; also ValueError) a chat.json message that
     │                    cannot be understood; answered with an ``error`` event
     ├── CommandError     (tornws.live) a tornws.v1 command that cannot be carried
     │                    out; answered with ``{"error": {code, message}}``
     ├── ApiError         (tornws.api; also tornado.web.HTTPError) a server API
     │                    request that cannot be carried out: its HTTP status and
     │                    ``{"error": {code, message}}``
     └── CheckFailed      (tornws.bench.load; also AssertionError) a server under
                          ``tornws bench`` answered wrongly

Errors on a connection that is already open are answered with a close code
(see :class:`tornws.frames.CloseCode`) or, in the ``chat.json`` protocol, with an
``error`` event; they are not raised to the caller.
"""

from __future__ import annotations

import tornado.web

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "HandshakeError",
    "NotReplicatedError",
    "ProtocolError",
    "TornwsError",
]


class TornwsError(Exception):
    """Base class of every exception tornws raises."""


class HandshakeError(TornwsError, tornado.web.HTTPError):
    """Refuse a WebSocket handshake with ``status`` and a plain-text ``body``.

    Raise it from ``prepare()``, ``select_subprotocol()`` or any hook that runs
    before the upgrade; tornws's handlers answer with the status and the body,
    and log the refusal at INFO on the ``tornws.handlers`` logger.
    """

    def __init__(self, status: int, body: str, kind: str = "") -> None:
        tornado.web.HTTPError.__init__(self, status, "%s", body)
        self.body = body
        #: A short name for counting refusals (``ticket``, ``room``, …); the status if empty.
        self.kind = kind

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.body}"


class ConfigError(TornwsError, ValueError):
    """tornws was configured in a way it cannot run with; the message says how to fix it."""


class ProtocolError(TornwsError):
    """The peer sent something RFC 6455 forbids; the connection fails with ``code``.

    Raised by :class:`tornws.connection.Reader`; the data plane answers it with a
    close frame carrying ``code`` (1002 protocol error, 1007 invalid data, 1009
    message too big) and closes the connection.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class BrokerUnavailableError(TornwsError):
    """A publication could not be numbered because the broker is unreachable (it may
    have reached this process's members, unnumbered)."""


class NotReplicatedError(BrokerUnavailableError):
    """A publication was numbered at ``epoch``:``offset``, but fewer than the replicas
    asked for confirmed it within the time allowed (Redis ``WAIT``): it has reached the
    members, and a failover now may lose it from the history."""

    def __init__(self, message: str, epoch: str, offset: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.offset = offset
