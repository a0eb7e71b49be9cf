"""Tornado's own WebSocket tests (from the installed Tornado) on tornws's data plane.

Every ``tornado.websocket.WebSocketHandler`` in ``tornado/test/websocket_test.py``
gets :class:`tornws.transport.Transport` instead of Tornado's
``WebSocketProtocol13`` for its server side (the client side stays Tornado's).
The tests that pin raw Tornado's own behaviour where tornws deliberately
differs are listed in ``DIFFERENT`` with the reason, and asserted to fail.
"""

from __future__ import annotations

import logging
import unittest
from collections.abc import Iterator

import pytest
import tornado.websocket
from tornado.test import websocket_test as upstream

from tornws.transport import Transport

#: Tests of Tornado's suite that check what tornws deliberately does differently.
DIFFERENT: dict[str, str] = {
    "TestTornadoFloodTest::test_pong_most_recent_ping": (
        "replaces WebSocketProtocol13._write_frame, a private method tornws's protocol "
        "does not use, to hold pongs back; tornws answers every ping, in order, as soon "
        "as it arrives (RFC 6455 5.5.3 allows answering only the most recent)"
    ),
}


@pytest.fixture(autouse=True)
def tornws_data_plane(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Tornado WebSocketHandler in these tests runs on tornws's Transport.

    Logging is set as Tornado's own runner sets it (its tests fail on any
    unexpected log line): no access log, and tornws's INFO lines about
    connections it fails are not what these tests are about.
    """
    monkeypatch.setattr(
        tornado.websocket.WebSocketHandler,
        "get_websocket_protocol",
        # a plain function, so that it binds to each handler as a method does
        lambda handler: Transport.for_handler(handler),  # noqa: PLW0108
    )
    quiet = [
        logging.getLogger(name)
        for name in ("tornado.access", "tornws.transport", "tornws.connection")
    ]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(quiet, levels):
        logger.setLevel(level)


def _cases() -> Iterator[tuple[str, type[unittest.TestCase]]]:
    for name in dir(upstream):
        value = getattr(upstream, name)
        if (
            isinstance(value, type)
            and issubclass(value, unittest.TestCase)
            and value.__module__ == upstream.__name__
            and any(attr.startswith("test") for attr in dir(value))
        ):
            yield name, value


def _expect_failure(case: type[unittest.TestCase], method: str) -> None:
    test = getattr(case, method, None)
    if test is not None:  # older Tornado releases may not have that test
        setattr(case, method, unittest.expectedFailure(test))


for _name, _case in _cases():
    _ours = type(f"TestTornado{_name}", (_case,), {})
    for _id in DIFFERENT:
        _class, _method = _id.split("::")
        if _class == _ours.__name__:
            _expect_failure(_ours, _method)
    globals()[_ours.__name__] = _ours
del _name, _case, _ours, _id, _class, _method
