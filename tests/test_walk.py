"""One chat message's path through the code, as the interpreter runs it.

The server side of a real chat.json exchange runs under a profile hook that notes
every call into a tornws module. From the sender's socket becoming readable to
the moment the registry hands the message to its receivers, the files entered
must be at most five, each once (the README, "The data plane"): the
transport reads, the connection core parses and gives the message back, the chat
decodes and publishes, the broker numbers, the registry fans out.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from types import FrameType
from typing import Any

import pytest
from test_chat_handler import json_user

import tornws

from wsclient import recv_json

_PACKAGE = os.path.dirname(tornws.__file__) + os.sep


def _module(frame: FrameType | None) -> str | None:
    """The tornws file a frame runs in, relative to the package (``None``: not tornws)."""
    if frame is None:
        return None
    filename = frame.f_code.co_filename
    return filename[len(_PACKAGE) :] if filename.startswith(_PACKAGE) else None


def walk(calls: list[tuple[str, str, str | None]]) -> list[str]:
    """The files entered (calls from another file, or from outside tornws), in order,
    from the read of the sender's socket to the registry's first call out of itself."""
    start = next(
        i
        for i, (file, name, _) in enumerate(calls)
        if (file, name) == ("transport.py", "_on_readable")
    )
    entered: list[str] = []
    for file, _, caller in calls[start:]:
        if caller == "registry.py" and file != "registry.py":
            return entered  # handed to the receivers (their codec, their transport)
        if file != caller:
            entered.append(file)
    raise AssertionError(f"the registry never handed the message over: {entered}")


@pytest.mark.gen_test(timeout=20)
async def test_a_chat_message_passes_five_files_each_once(ws_url: str, ws_connect: Any) -> None:
    sender = await json_user(ws_connect, ws_url, "ann", room="walk")
    receiver = await json_user(ws_connect, ws_url, "bob", room="walk")
    assert (await recv_json(sender))["nick"] == "bob"  # (bob's join)
    await asyncio.sleep(0.05)  # (nothing else in flight)
    calls: list[tuple[str, str, str | None]] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            file = _module(frame)
            if file is not None:
                calls.append((file, frame.f_code.co_name, _module(frame.f_back)))

    sender.write_message(json.dumps({"type": "message", "text": "hello"}))
    sys.setprofile(profile)
    try:
        received = await recv_json(receiver)
    finally:
        sys.setprofile(None)
    assert received["type"] == "message" and received["text"] == "hello"
    assert walk(calls) == ["transport.py", "connection.py", "chat.py", "broker.py", "registry.py"]
