"""The browser chat page: ``GET /`` of the demo app, or under a prefix of yours.

The page is plain HTML, CSS and JavaScript shipped in the package (``tornws/static``,
``tornws/templates``): no build step, nothing loaded from another host. Its
WebSocket client, ``tornws.js``, is documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import tornado.template
import tornado.web

__all__ = ["STATIC_DIR", "ChatPageHandler", "StaticHandler"]

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The page's scripts and style sheet.
STATIC_DIR = os.path.join(_HERE, "static")
_loader = tornado.template.Loader(os.path.join(_HERE, "templates"))

#: Everything the page needs comes from its own origin; nothing inline runs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@cache
def _version(name: str) -> str:
    with open(os.path.join(STATIC_DIR, name), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:12]


class _SecureHeaders:
    def set_default_headers(self: Any) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")


class StaticHandler(_SecureHeaders, tornado.web.StaticFileHandler):
    """The page's files; cached for good when asked with their ``?v=`` version."""


class ChatPageHandler(_SecureHeaders, tornado.web.RequestHandler):
    """The chat page. Options: ``chat_path`` (where ``/chat`` is), ``static_path``
    (where :class:`StaticHandler` serves :data:`STATIC_DIR`), ``endpoints``
    (``(path, description)`` pairs listed at the bottom), ``user_loader`` (as for
    the WebSocket handlers: a signed-in user chats under their own name)."""

    def initialize(
        self,
        chat_path: str = "/chat",
        static_path: str = "/_tornws",
        endpoints: tuple[tuple[str, str], ...] = (),
        user_loader: Callable[[Any], Any] | None = None,
        **_: Any,
    ) -> None:
        self.chat_path = chat_path
        self.static_path = static_path
        self.endpoints = endpoints
        self._user_loader = user_loader

    def get_current_user(self) -> Any:
        return self._user_loader(self) if self._user_loader is not None else None

    def asset(self, name: str) -> str:
        return f"{self.static_path}/{name}?v={_version(name)}"

    def get(self) -> None:
        user = self.current_user
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("Cache-Control", "no-cache")
        self.finish(
            _loader.load("chat.html").generate(
                asset=self.asset,
                chat_path=self.chat_path,
                endpoints=self.endpoints,
                host=self.request.host,
                user="" if user is None else str(user),
            )
        )
