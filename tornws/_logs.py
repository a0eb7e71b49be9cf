"""``tornws serve``'s logging: a line per connection opened and closed, made cheap.

Its handler on stderr formats the time once per second rather than with
``time.strftime`` for every record, and, rather than a ``write`` system call per
record (stderr is line-buffered), writes records into a block buffer flushed once per
event-loop turn: at once for warnings and above, outside a running loop, before a
fork and at exit. (A process killed with SIGKILL loses what its last turn logged.)
Nothing global to the ``logging`` module changes: an ``--app`` that logs caller
locations or thread names keeps them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import TextIO

__all__ = ["configure"]


class _Formatter(logging.Formatter):
    """``%(asctime)s`` as the default format, made once per second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


class _TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes once per event-loop turn (at once outside a
    running loop, and for records of ``flush_level`` and above)."""

    def __init__(self, stream: TextIO, flush_level: int = logging.WARNING) -> None:
        super().__init__(stream)
        self.flush_level = flush_level
        self._due = False
        self._urgent = True
        os.register_at_fork(before=self.flush_now)  # (a buffered line written twice, else)

    def emit(self, record: logging.LogRecord) -> None:
        self._urgent = record.levelno >= self.flush_level
        super().emit(record)  # (calls flush())

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._urgent:
            self.flush_now()
        elif not self._due:
            self._due = True
            loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._due = False
        super().flush()


def configure(level: str, fmt: str) -> None:
    """Log ``level`` and above to stderr in ``fmt``, as ``logging.basicConfig`` would
    (nothing if the root logger has handlers already), through the handler above."""
    root = logging.getLogger()
    if root.handlers:
        return
    try:
        stream: TextIO = open(  # noqa: SIM115 - stderr's own descriptor, for the process's life
            sys.stderr.fileno(), "w", buffering=1 << 16, encoding=sys.stderr.encoding or "utf-8",
            errors="backslashreplace", closefd=False,
        )  # fmt: skip
    except (AttributeError, OSError, ValueError):  # not a file (captured): as it is
        stream = sys.stderr
    handler = _TurnHandler(stream)
    handler.setFormatter(_Formatter(fmt))
    root.setLevel(level)
    root.addHandler(handler)
