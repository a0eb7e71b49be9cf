"""What goes on the wire: close codes and outgoing messages.

A :class:`Message` is encoded once (text to UTF-8) and can then be handed to any
number of connections: fan-out never re-encodes per receiver.
"""

from __future__ import annotations

import enum
from typing import Union

__all__ = ["CloseCode", "Data", "Message"]

#: What a WebSocket message carries: ``str`` for a text message, ``bytes`` for binary.
Data = Union[str, bytes]


class CloseCode(enum.IntEnum):
    """Close codes from RFC 6455 section 7.4.1 and the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


class Message:
    """One outgoing WebSocket message, encoded once.

    Args:
        data: ``str`` makes a text message, ``bytes`` (or any bytes-like) a
            binary one.
    """

    __slots__ = ("binary", "payload")

    def __init__(self, data: Data | bytearray | memoryview) -> None:
        if isinstance(data, str):
            self.payload: bytes = data.encode("utf-8")
            self.binary = False
        else:
            self.payload = bytes(data)
            self.binary = True

    @property
    def data(self) -> Data:
        """The message as a receiver sees it: ``str`` for text, ``bytes`` for binary."""
        return self.payload if self.binary else self.payload.decode("utf-8")

    def __len__(self) -> int:
        return len(self.payload)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.binary == other.binary and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.binary, self.payload))

    def __repr__(self) -> str:
        kind = "binary" if self.binary else "text"
        return f"<Message {kind} {len(self.payload)} bytes>"
