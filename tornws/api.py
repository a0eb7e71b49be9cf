"""The HTTP server API: publish, broadcast, disconnect and look up presence over HTTP.

For services that speak HTTP but not Redis (or not Python). Enabled on
``tornws serve`` with ``--api-key KEY`` (or ``TORNWS_API_KEY``); in a host
application, mount :func:`api_routes`. Every request carries the key in an
``X-API-Key`` header, compared in constant time; the key is never logged (the
access log shows the path only). docs/protocol.md ("The server API") has it all:

- ``POST /api/publish`` ``{"channel", "data", "idempotency_key"?}`` → ``{"epoch", "offset"}``
- ``POST /api/broadcast`` ``{"channels": [...], "data"}`` → ``{"publications": [{"channel",
  "epoch", "offset"}, ...]}``
- ``POST /api/disconnect`` ``{"user", "code"?, "reason"?}`` → ``{}``
- ``GET /api/presence?channel=`` → ``{"count", "members"}``
- ``GET /api/channels`` → ``{"channels": {"<channel>": <subscribers>, ...}}`` (the
  channels this process has subscribers of, each counted over every process)

Answers: 200 with a JSON object; a missing or wrong key 401; malformed JSON or
fields 400; a body over ``max_body`` (default 64 KiB) 413; the API not enabled
404; the broker unable to number a publication 503. Errors are
``{"error": {"code", "message"}}``. A channel may be ``#<user>``: every
``/live`` connection of that user.

An ``idempotency_key`` (1-128 characters) makes a retried publish safe: within
:data:`IDEMPOTENCY_SECONDS` the same key answers the first publication's
position again instead of publishing twice: remembered in Redis for every process on
a Redis broker (atomically with the publication), else by this process.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import tornado.web
from tornado.routing import URLSpec

from .exceptions import BrokerUnavailableError, TornwsError
from .hub import Hub, Position, check_channel

__all__ = [
    "API_KEY_HEADER",
    "DEFAULT_MAX_BODY",
    "IDEMPOTENCY_SECONDS",
    "ApiError",
    "ApiHandler",
    "api_routes",
]

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
#: Largest request body, bytes (bigger: 413).
DEFAULT_MAX_BODY = 64 * 1024
#: How long an idempotency key is remembered, seconds.
IDEMPOTENCY_SECONDS = 300.0
#: How many idempotency keys one process remembers at most (the oldest go first).
IDEMPOTENCY_KEYS = 100_000


class ApiError(TornwsError, tornado.web.HTTPError):
    """A server API request that cannot be carried out: answered with ``status`` and
    ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status)
        self.status = status
        self.code = code
        self.message = message


class _Remembered:
    """Idempotency keys → the position their publication got, for a while."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, tuple[float, Position]] = OrderedDict()

    def get(self, key: str) -> Position | None:
        now = time.monotonic()
        while self._keys:  # forget the expired (oldest first)
            oldest, (when, _) = next(iter(self._keys.items()))
            if when > now - IDEMPOTENCY_SECONDS:
                break
            del self._keys[oldest]
        entry = self._keys.get(key)
        return entry[1] if entry is not None else None

    def put(self, key: str, position: Position) -> None:
        self._keys[key] = (time.monotonic(), position)
        while len(self._keys) > IDEMPOTENCY_KEYS:
            self._keys.popitem(last=False)


class ApiHandler(tornado.web.RequestHandler):
    """One endpoint of the server API (``action``: ``publish``, ``broadcast``,
    ``disconnect``, ``presence`` or ``channels``)."""

    def initialize(
        self,
        action: str,
        key: str | None,
        max_body: int = DEFAULT_MAX_BODY,
        remembered: _Remembered | None = None,
    ) -> None:
        self.action = action
        self.key = key
        self.max_body = max_body
        self.remembered = remembered if remembered is not None else _Remembered()

    @property
    def hub(self) -> Hub:
        return Hub.for_application(self.application)

    def check_xsrf_cookie(self) -> None:
        """The API authenticates by key, not by cookie: no XSRF check."""

    def prepare(self) -> None:
        if not self.key:
            raise ApiError(404, "not_found", "the server API is not enabled (--api-key)")
        given = self.request.headers.get(API_KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            missing = not given
            raise ApiError(
                401,
                "unauthorized",
                f"{'missing' if missing else 'wrong'} {API_KEY_HEADER} header",
            )
        if len(self.request.body) > self.max_body:
            raise ApiError(
                413,
                "too_large",
                f"the body is over {self.max_body} bytes ({len(self.request.body)})",
            )

    # Endpoints

    async def post(self) -> None:
        if self.action not in ("publish", "broadcast", "disconnect"):
            raise ApiError(405, "method_not_allowed", f"{self.action} takes GET")
        body = self._body()
        if self.action == "publish":
            self._reply(await self._publish(body))
        elif self.action == "broadcast":
            self._reply(await self._broadcast(body))
        else:
            self._reply(await self._disconnect(body))

    async def get(self) -> None:
        if self.action == "presence":
            channel = self.get_query_argument("channel", "")
            self._reply(await self.hub.presence(self._channel(channel)))
        elif self.action == "channels":
            self._reply({"channels": await self.hub.channels()})
        else:
            raise ApiError(405, "method_not_allowed", f"{self.action} takes POST")

    async def _publish(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(body.get("channel"))
        if "data" not in body:
            raise ApiError(400, "bad_request", 'publish needs "data" (any JSON)')
        key = body.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise ApiError(400, "bad_request", '"idempotency_key" must be 1-128 characters')
        if key is None:
            position = await self._number(channel, body["data"])
            return {"epoch": position.epoch, "offset": position.offset}
        earlier = self.remembered.get(key)
        if earlier is not None:
            return {"epoch": earlier.epoch, "offset": earlier.offset, "repeated": True}
        try:  # (on Redis: remembered there, for every process)
            once = await self.hub.publish_once(channel, body["data"], key, IDEMPOTENCY_SECONDS)
        except BrokerUnavailableError as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        if once is None:  # a broker that reaches no other process: this one remembers
            position = await self._number(channel, body["data"])
            self.remembered.put(key, position)
            return {"epoch": position.epoch, "offset": position.offset}
        position, repeated = once
        return {
            "epoch": position.epoch,
            "offset": position.offset,
            **({"repeated": True} if repeated else {}),
        }

    async def _broadcast(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = body.get("channels")
        if not isinstance(channels, list) or not channels or len(channels) > 1000:
            raise ApiError(400, "bad_request", '"channels" must be a list of 1 to 1000 channels')
        names = [self._channel(c) for c in channels]
        if "data" not in body:
            raise ApiError(400, "bad_request", 'broadcast needs "data" (any JSON)')
        publications = []
        for channel in names:
            position = await self._number(channel, body["data"])
            publications.append(
                {"channel": channel, "epoch": position.epoch, "offset": position.offset}
            )
        return {"publications": publications}

    async def _disconnect(self, body: dict[str, Any]) -> dict[str, Any]:
        user = body.get("user")
        if not isinstance(user, str) or not user:
            raise ApiError(400, "bad_request", '"user" must be a non-empty string')
        code = body.get("code", 3000)
        reason = body.get("reason", "disconnected by the server")
        if type(code) is not int or not 3000 <= code <= 4999:
            raise ApiError(400, "bad_request", '"code" must be an integer from 3000 to 4999')
        if not isinstance(reason, str) or len(reason.encode()) > 123:
            raise ApiError(400, "bad_request", '"reason" must be a string of at most 123 bytes')
        await self.hub.disconnect(user, code=code, reason=reason)
        return {}

    # Helpers

    async def _number(self, channel: str, data: Any) -> Position:
        try:
            return await self.hub.publish(channel, data)
        except BrokerUnavailableError as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        except ValueError as exc:  # data JSON cannot encode (NaN)
            raise ApiError(400, "bad_request", str(exc)) from None

    def _body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        return body

    @staticmethod
    def _channel(channel: Any) -> str:
        try:
            return check_channel(channel)
        except ValueError as exc:
            raise ApiError(400, "bad_channel", str(exc)) from None

    def _reply(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, ApiError):
            code, message = error.code, error.message
        else:
            code, message = "server_error", http.client.responses.get(status_code, "")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):  # (never the key: it is in a header)
            log.info(
                "api %s %s from %s: %d %s",
                self.request.method,
                self.request.path,
                self.request.remote_ip,
                value.status,
                value.message,
            )
        else:
            super().log_exception(typ, value, tb)


def api_routes(
    key: str | None, prefix: str = "/api", *, max_body: int = DEFAULT_MAX_BODY
) -> list[URLSpec]:
    """The server API's routes under ``prefix``, answering 404 unless ``key`` is given."""
    if key is not None and len(key) < 16:
        raise ValueError("an API key must be at least 16 characters")
    remembered = _Remembered()
    return [
        URLSpec(
            f"{prefix}/{action}",
            ApiHandler,
            {"action": action, "key": key, "max_body": max_body, "remembered": remembered},
            name=f"tornws.api.{action}",
        )
        for action in ("publish", "broadcast", "disconnect", "presence", "channels")
    ]
