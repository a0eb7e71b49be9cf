"""Admission: what a tornws handler checks before it answers an upgrade.

Pure functions of the request's facts, called by
:class:`tornws.handlers.WebSocketHandler` (and usable by your own handlers):

- :func:`over_limit`: the process-wide limits, answered with HTTP 503 and
  ``Retry-After``: draining, ``tornws_max_connections``,
  ``tornws_max_connections_per_ip``, ``tornws_outgoing_budget``;
- :func:`ticket_user`: the user of a one-time ticket (HTTP 401 when it is missing,
  forged, expired or used);
- :func:`origin_allowed`: an ``Origin`` against an allow-list with wildcards
  (HTTP 403 otherwise; the same host is always allowed, Tornado's rule).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from .auth import TicketError, Tickets
from .exceptions import HandshakeError
from .node import Node

__all__ = ["DEFAULT_OUTGOING_BUDGET", "origin_allowed", "over_limit", "ticket_user"]

#: Bytes unsent over all connections above which upgrades get 503.
DEFAULT_OUTGOING_BUDGET = 256 * 1024 * 1024


def over_limit(node: Node, settings: Mapping[str, Any], ip: str) -> tuple[str, str] | None:
    """``(kind, reason)`` when a new connection from ``ip`` must wait (HTTP 503), else
    ``None``. ``kind`` names the limit for the refusal counters."""
    if node.draining:
        return "draining", "server shutting down; retry on another instance"
    limit = settings.get("tornws_max_connections")
    if limit is not None and len(node.connections) >= limit:
        return "connections", f"too many connections (limit {limit})"
    limit = settings.get("tornws_max_connections_per_ip")
    if limit is not None and node.stats.by_ip[ip] >= limit:
        return "connections_per_ip", f"too many connections from your address (limit {limit})"
    budget = settings.get("tornws_outgoing_budget", DEFAULT_OUTGOING_BUDGET)
    if budget and node.stats.outgoing_bytes > budget:
        return "outgoing_budget", "server busy: too much unsent data"
    return None


def ticket_user(tickets: Tickets, ticket: str) -> Any:
    """The user of ``ticket``, redeemed now (once).

    Raises:
        HandshakeError: 401 saying why the ticket is refused.
    """
    if not ticket:
        raise HandshakeError(401, "ticket required", kind="ticket")
    try:
        return tickets.redeem(ticket)
    except TicketError as exc:
        raise HandshakeError(401, str(exc), kind="ticket") from None


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether ``origin`` is one of ``allowed``: an exact origin, or
    ``scheme://*.domain[:port]`` for every subdomain of ``domain`` (not ``domain``
    itself). Scheme and port must match; host names compare case-insensitively."""
    try:
        parsed = urllib.parse.urlsplit(origin.lower())
        port = parsed.port
    except ValueError:
        return False
    host = parsed.hostname or ""
    for pattern in allowed:
        if "*" not in pattern:
            if origin == pattern:
                return True
            continue
        wanted = urllib.parse.urlsplit(pattern.lower())
        domain = wanted.netloc.rsplit(":", 1)[0] if wanted.port is not None else wanted.netloc
        if (
            wanted.scheme == parsed.scheme
            and domain.startswith("*.")
            and host.endswith(domain[1:])
            and len(host) > len(domain) - 1
            and wanted.port == port
        ):
            return True
    return False
