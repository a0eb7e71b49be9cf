"""permessage-deflate (RFC 7692): the server's negotiation, and compression shared by receivers.

Pure code, no sockets (tested in ``tests/test_deflate.py``).

A handler's ``compression`` option (Tornado's ``get_compression_options``
format) takes, besides Tornado's ``compression_level`` and ``mem_level``:

- ``server_max_window_bits`` (9-15): the window the server compresses with. It
  is declared in the response, so the client may inflate with that much memory
  too; a client asking for less gets what it asked for.
- ``client_max_window_bits`` (9-15): the most the server lets the client's window
  be, when the client's offer says it can be limited (else 15). It bounds the
  server's inflate window.
- ``server_no_context_takeover`` (bool): compress every message on its own. Then
  no compressor is kept per connection, and a broadcast is compressed once for
  every receiver that agreed on the same settings (``Message.deflated``): the
  *shared-compressor mode*.
- ``client_no_context_takeover`` (bool): the client compresses every message on
  its own, so the server keeps no inflate window per connection between messages.

:func:`negotiate` picks the first acceptable offer of a client and answers it;
an offer it cannot honour (a malformed or unknown parameter, a window of 8 bits,
which zlib cannot produce) is declined, and the connection goes on without
compression.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from .exceptions import ProtocolError

__all__ = [
    "OPTION_KEYS",
    "Compressor",
    "Decompressor",
    "Setting",
    "answer_header",
    "check_options",
    "compress",
    "compressors",
    "negotiate",
    "parse_offers",
]

#: The ``compression`` keys this module reads, besides Tornado's.
OPTION_KEYS = frozenset(
    {
        "server_max_window_bits",
        "client_max_window_bits",
        "server_no_context_takeover",
        "client_no_context_takeover",
    }
)
_TORNADO_KEYS = frozenset({"compression_level", "mem_level"})

#: A deflate offer's or answer's parameters: name → value (``None``: a flag).
Params = dict[str, Optional[str]]
#: An offer's parameters in order, duplicates kept (RFC 7692 declines those).
Offer = Union[Mapping[str, Optional[str]], Iterable[tuple[str, Optional[str]]]]


def parse_offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """A ``Sec-WebSocket-Extensions`` request header as (extension, parameters) offers.

    Parameters keep their order and duplicates; a flag's value is ``None``; a
    quoted value is unquoted. (Tornado's own parser drops flags such as
    ``server_no_context_takeover``, so tornws reads the header itself.)
    """
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for extension in header.split(","):
        name, *parameters = (part.strip() for part in extension.split(";"))
        if not name:
            continue
        params: list[tuple[str, str | None]] = []
        for parameter in parameters:
            key, equals, value = parameter.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            params.append((key.strip().lower(), value if equals else None))
        offers.append((name.lower(), params))
    return offers


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming what is wrong with a ``compression`` option."""
    unknown = set(options) - OPTION_KEYS - _TORNADO_KEYS
    if unknown:
        raise ValueError(f"compression: unknown option(s) {', '.join(sorted(unknown))}")
    for key in ("server_max_window_bits", "client_max_window_bits"):
        bits = options.get(key)
        if bits is not None and (type(bits) is not int or not 9 <= bits <= 15):
            raise ValueError(f"compression: {key} must be an int from 9 to 15, not {bits!r}")
    for key in ("server_no_context_takeover", "client_no_context_takeover"):
        if type(options.get(key, False)) is not bool:
            raise ValueError(f"compression: {key} must be True or False")
    level = options.get("compression_level", 6)
    if type(level) is not int or not 0 <= level <= 9:
        raise ValueError(f"compression: compression_level must be 0 to 9, not {level!r}")
    mem_level = options.get("mem_level", 8)
    if type(mem_level) is not int or not 1 <= mem_level <= 9:
        raise ValueError(f"compression: mem_level must be 1 to 9, not {mem_level!r}")


def _bits(value: str | None) -> int | None:
    """A window-bits value as RFC 7692 7.1.2 writes it (``"8"``…``"15"``), else ``None``."""
    if value is None or not value.isdigit() or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def negotiate(offer: Offer, options: Mapping[str, Any]) -> Params | None:
    """The server's answer to one client offer, or ``None`` to decline it.

    ``offer``: the offer's parameters (a flag has the value ``None``). The answer
    is in the form Tornado builds its compressors from and sends back.
    """
    answer: Params = {}
    pairs = offer.items() if isinstance(offer, Mapping) else offer
    for key, value in pairs:
        if key in answer:  # a parameter twice: RFC 7692 section 7
            return None
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            answer[key] = None
        elif key == "server_max_window_bits":
            bits = _bits(value)
            if bits is None or bits == 8:  # zlib has no 8-bit raw deflate
                return None
            answer[key] = str(bits)
        elif key == "client_max_window_bits":
            if value is not None:
                bits = _bits(value)
                if bits is None:
                    return None
                answer[key] = str(bits)
            else:
                answer[key] = None  # "limit me if you like": decided below
        else:
            return None
    if options.get("server_no_context_takeover"):
        answer["server_no_context_takeover"] = None
    if options.get("client_no_context_takeover"):
        answer["client_no_context_takeover"] = None
    server_bits = options.get("server_max_window_bits")
    if server_bits is not None:
        asked = answer.get("server_max_window_bits")
        answer["server_max_window_bits"] = str(min(int(asked or 15), server_bits))
    client_bits = options.get("client_max_window_bits")
    if "client_max_window_bits" in answer:
        asked = answer["client_max_window_bits"]
        if client_bits is not None:
            answer["client_max_window_bits"] = str(min(int(asked or 15), client_bits))
        elif asked is None:
            del answer["client_max_window_bits"]  # no limit: the client keeps 15
    return answer


def compress(payload: bytes, level: int, wbits: int, mem_level: int) -> bytes:
    """``payload`` as one message compressed on its own (no context kept), RFC 7692 7.2.1."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # the 00 00 ff ff that ends a sync flush


#: (level, window bits, memory level): what a compressor compresses with.
Setting = tuple[int, int, int]


class Compressor:
    """Compresses outgoing messages: one zlib stream kept across messages (context
    takeover), or each message on its own (``persistent=False``)."""

    __slots__ = ("_stream", "setting")

    def __init__(self, setting: Setting, *, persistent: bool) -> None:
        self.setting = setting
        self._stream = self._new() if persistent else None

    def _new(self) -> Any:
        level, wbits, mem_level = self.setting
        return zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level)

    def compress(self, payload: bytes) -> bytes:
        """One message's compressed payload (RFC 7692 7.2.1)."""
        stream = self._stream or self._new()
        data: bytes = stream.compress(payload) + stream.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]  # the 00 00 ff ff that ends a sync flush


class Decompressor:
    """Inflates incoming messages, refusing (1009) one that inflates past ``max_size``."""

    __slots__ = ("_stream", "max_size", "wbits")

    def __init__(self, wbits: int, *, persistent: bool, max_size: int) -> None:
        self.wbits = wbits
        self.max_size = max_size
        self._stream = zlib.decompressobj(-wbits) if persistent else None

    def decompress(self, data: bytes) -> bytes:
        """One message's payload, inflated.

        Raises:
            ProtocolError: 1009 when it is over ``max_size``; 1007 when it is not deflate.
        """
        stream = self._stream or zlib.decompressobj(-self.wbits)
        try:
            result: bytes = stream.decompress(data + b"\x00\x00\xff\xff", self.max_size)
        except zlib.error as exc:
            raise ProtocolError(1007, f"cannot inflate: {exc}") from None
        if stream.unconsumed_tail:
            raise ProtocolError(1009, "message too big")
        return result


def compressors(
    answer: Params, options: Mapping[str, Any], max_size: int
) -> tuple[Compressor, Decompressor]:
    """The server's compressor and decompressor for an agreed ``answer``
    (:func:`negotiate`), with ``options``' level and memory level."""
    setting = (
        int(options.get("compression_level", 6)),
        int(answer.get("server_max_window_bits") or 15),
        int(options.get("mem_level", 8)),
    )
    compressor = Compressor(setting, persistent="server_no_context_takeover" not in answer)
    decompressor = Decompressor(
        int(answer.get("client_max_window_bits") or 15),
        persistent="client_no_context_takeover" not in answer,
        max_size=max_size,
    )
    return compressor, decompressor


def answer_header(answer: Params) -> str:
    """The ``Sec-WebSocket-Extensions`` response header that sends ``answer``
    (parameters sorted by name)."""
    parts = ["permessage-deflate"]
    parts += [key if value is None else f"{key}={value}" for key, value in sorted(answer.items())]
    return "; ".join(parts)
