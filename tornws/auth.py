"""Short-lived, signed, single-use tickets: how a browser authenticates a WebSocket.

The browser WebSocket API cannot set headers, and a long-lived token in a URL
ends up in logs and histories. So: an ordinary authenticated HTTP request (your
login cookie, your ``get_current_user``) mints a ticket — :class:`TicketHandler`,
``POST`` — and the page opens ``wss://…/chat/room?ticket=<ticket>`` at once.
The WebSocket handler (option ``tickets``) redeems it before the upgrade: the
ticket's user becomes ``current_user``; a missing, forged, expired or reused
ticket gets HTTP 401 with the reason. Tickets live :data:`DEFAULT_TTL` seconds
and are good for one connection; :func:`log_request` keeps them out of the
access log.

Single use is remembered in this process, and across processes when the
handlers' registry has a broker that reaches them (Redis: the ticket's nonce is
claimed with ``SET NX`` for the ticket's lifetime, :meth:`tornws.Broker.claim_once`);
on the memory broker, several processes sharing the secret would each accept a
ticket once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import tornado.web

from .exceptions import TornwsError

__all__ = ["DEFAULT_TTL", "TicketError", "TicketHandler", "Tickets", "log_request", "redact"]

log = logging.getLogger(__name__)

#: Seconds a ticket is valid: long enough to open a connection, too short to be worth stealing.
DEFAULT_TTL = 30.0


class TicketError(TornwsError):
    """A ticket that cannot be redeemed; ``str()`` says why (for the 401 body and the log)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tickets:
    """Mints and redeems tickets signed with ``secret`` (HMAC-SHA256).

    Args:
        secret: at least 16 bytes of secret; e.g. your application's ``cookie_secret``.
        ttl: seconds a ticket is valid.
        clock: ``time.time`` (a parameter for tests).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ValueError("the ticket secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"tornws ticket\0" + key).digest()
        self.ttl = ttl
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> expiry, until it expires

    def mint(self, user: str) -> str:
        """A new ticket for ``user`` (a string: the user's id or name)."""
        body = json.dumps(
            {"u": user, "e": round(self._clock() + self.ttl, 3), "n": _b64(os.urandom(12))},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def redeem(self, ticket: str) -> str:
        """The ticket's user; the ticket cannot be redeemed again (in this process).

        Raises:
            TicketError: ``invalid ticket``, ``ticket expired`` or ``ticket already used``.
        """
        user, nonce, expiry = self.claims(ticket)
        self._forget_expired(self._clock())
        if nonce in self._used:
            raise TicketError("ticket already used")
        self._used[nonce] = expiry
        return user

    def claims(self, ticket: str) -> tuple[str, str, float]:
        """The ticket's ``(user, nonce, expiry)`` if it is genuine and unexpired, used or
        not (what a shared store of used nonces needs).

        Raises:
            TicketError: ``invalid ticket`` or ``ticket expired``.
        """
        body_text, _, signature = ticket.partition(".")
        try:
            body = _unb64(body_text)
            if not hmac.compare_digest(_unb64(signature), self._sign(body)):
                raise ValueError("bad signature")
            claims = json.loads(body)
            user, expiry, nonce = claims["u"], float(claims["e"]), claims["n"]
        except (ValueError, TypeError, KeyError):
            raise TicketError("invalid ticket") from None
        if not isinstance(user, str) or not isinstance(nonce, str):
            raise TicketError("invalid ticket")
        if self._clock() >= expiry:
            raise TicketError("ticket expired")
        return user, nonce, expiry

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def _forget_expired(self, now: float) -> None:
        if len(self._used) > 1024:
            self._used = {nonce: expiry for nonce, expiry in self._used.items() if expiry > now}


class TicketHandler(tornado.web.RequestHandler):
    """``POST``: a ticket for the current user, as JSON ``{"ticket": …, "expires_in": …}``.

    401 without a current user. Options: ``tickets`` (a :class:`Tickets`),
    ``user_loader`` (as for the WebSocket handlers; else the application's
    ``get_current_user`` is not known here, so pass it). With ``xsrf_cookies``
    on, Tornado checks the ``_xsrf`` token of the POST as for any form.
    """

    def initialize(self, tickets: Tickets, user_loader: Callable[[Any], Any] | None = None) -> None:
        self.tickets = tickets
        self._user_loader = user_loader

    def get_current_user(self) -> Any:
        return self._user_loader(self) if self._user_loader is not None else None

    def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        user = self.current_user
        if user is None:
            self.set_status(401)
            self.finish({"error": "sign in first"})
            return
        self.finish({"ticket": self.tickets.mint(str(user)), "expires_in": self.tickets.ttl})


_TICKET_RE = re.compile(r"([?&]ticket=)[^&]*")


def redact(uri: str) -> str:
    """``uri`` with the value of any ``ticket`` query argument replaced by ``…``."""
    return _TICKET_RE.sub(r"\1…", uri)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line without tickets: set ``log_function=log_request``
    in your application settings (the demo app does)."""
    status = handler.get_status()
    if status < 400:
        logger = logging.getLogger("tornado.access").info
    elif status < 500 or status == 505:  # (505: the client's HTTP version)
        logger = logging.getLogger("tornado.access").warning
    else:
        logger = logging.getLogger("tornado.access").error
    request = handler.request
    logger(
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redact(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )
