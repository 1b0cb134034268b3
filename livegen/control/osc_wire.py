"""OSC datagrams on the wire: validate a datagram completely and decode it once.

:func:`decode` is the only parser the server uses; python-osc never sees received bytes. It
accepts the OSC 1.0/1.1 subset below and refuses everything else with a sentence
(:class:`MalformedPacket`), in time linear in the datagram's size and without logging:

- a datagram is 1 to 65,507 bytes (the largest UDP payload over IPv4);
- an OSC string is UTF-8 text without NUL, ended by 1-4 NUL bytes up to a multiple of 4;
- a message is an address (``/`` followed by printable characters, no spaces, at most
  :data:`MAX_ADDRESS` bytes), then optionally a type-tag string (``,`` + at most :data:`MAX_TAGS`
  tags from :data:`TAGS`; arrays ``[ ]`` nest at most :data:`MAX_ARRAY_DEPTH` deep), then exactly
  the bytes of its arguments: nothing may be missing and nothing may follow;
- a bundle is ``#bundle``, a 64-bit time tag (any value: the server dispatches at once) and
  elements, each an int32 size (positive, a multiple of 4, within the datagram) followed by a
  message or a bundle; bundles nest at most :data:`MAX_BUNDLE_DEPTH` deep, and one datagram holds
  at most :data:`MAX_ELEMENTS` elements.

A datagram is decoded whole or refused whole: one bad element refuses the bundle.

The address is not checked as a pattern (``/livegen/[`` is a valid address string): the server
does not dispatch by pattern, the daemon answers an address it does not know.

Argument types are those python-osc produced, so handlers see the same values: ``i``/``h`` int,
``f``/``d`` float, ``s``/``S`` str, ``b`` bytes, ``T``/``F`` bool, ``N`` None, ``I`` math.inf
(OSC 1.0 "Infinitum"), ``c`` a one-character str, ``r`` the RGBA int, ``m`` a 4-tuple
(port, status, data1, data2), ``t`` a :class:`Timetag`, an array a list.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_DATAGRAM = 65507
MAX_ADDRESS = 1024
MAX_TAGS = 64
MAX_ARRAY_DEPTH = 4
MAX_BUNDLE_DEPTH = 4
MAX_ELEMENTS = 256

BUNDLE_HEADER = b"#bundle\x00"
TAGS = frozenset("ifdsSbhtTFNIcrm[]")
IMMEDIATELY = 1  # the time tag meaning "now"

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


class MalformedPacket(ValueError):
    """The datagram is not a valid OSC packet; ``reason`` says why in one sentence."""

    def __init__(self, size: int, detail: str) -> None:
        self.size = size
        self.detail = detail
        super().__init__(f"The OSC packet of {size} bytes is malformed: {detail}.")

    @property
    def reason(self) -> str:
        return str(self)


class Timetag(NamedTuple):
    """An OSC time tag: NTP seconds since 1900 and a 32-bit fraction of a second."""

    seconds: int
    fraction: int


@dataclass(frozen=True)
class Message:
    """One decoded OSC message."""

    address: str
    args: tuple[Any, ...] = ()


class _Fail(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def decode(data: bytes) -> list[Message]:
    """Every message of a datagram (a bundle's in order, nested bundles flattened).

    Raises :class:`MalformedPacket` for anything outside the accepted subset.
    """
    size = len(data)
    if size == 0:
        raise MalformedPacket(0, "the datagram is empty")
    if size > MAX_DATAGRAM:
        raise MalformedPacket(size, f"it is larger than {MAX_DATAGRAM} bytes")
    data = bytes(data)
    out: list[Message] = []
    try:
        if data.startswith(b"#bundle"):
            _bundle(data, 0, size, 1, out, [0])
        elif data[0:1] == b"/":
            out.append(_message(data, 0, size))
        else:
            raise _Fail(f"it starts with the bytes {data[:4].hex(' ')}, neither '/' (a message) nor '#bundle'")
    except _Fail as exc:
        raise MalformedPacket(size, exc.detail) from None
    return out


def _bundle(data: bytes, start: int, end: int, depth: int, out: list[Message], count: list[int]) -> None:
    where = "the bundle" if depth == 1 else f"a bundle nested at depth {depth}"
    if depth > MAX_BUNDLE_DEPTH:
        raise _Fail(f"bundles are nested more than {MAX_BUNDLE_DEPTH} deep")
    if data[start:start + 8] != BUNDLE_HEADER:
        raise _Fail(f"{where} does not start with the 8 bytes '#bundle' and NUL")
    if end - start < 16:
        raise _Fail(f"{where} is {end - start} bytes, too short for its header and time tag")
    pos = start + 16  # the time tag (any value) is not used: bundles are dispatched at once
    index = 0
    while pos < end:
        index += 1
        if end - pos < 4:
            raise _Fail(f"element {index} of {where} has only {end - pos} bytes for its 4-byte size")
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        if length <= 0 or length % 4:
            raise _Fail(f"element {index} of {where} has size {length}; sizes are positive multiples of 4")
        if length > end - pos:
            raise _Fail(f"element {index} of {where} has size {length} but only {end - pos} bytes follow")
        count[0] += 1
        if count[0] > MAX_ELEMENTS:
            raise _Fail(f"it holds more than {MAX_ELEMENTS} bundle elements")
        first = data[pos:pos + 1]
        if first == b"#":
            _bundle(data, pos, pos + length, depth + 1, out, count)
        elif first == b"/":
            out.append(_message(data, pos, pos + length))
        else:
            raise _Fail(f"element {index} of {where} is neither a message nor a bundle")
        pos += length


def _string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    nul = data.find(b"\x00", pos, end)
    if nul < 0:
        raise _Fail(f"{what} has no terminating NUL byte")
    stop = nul + 4 - (nul - pos) % 4  # 1-4 NULs up to a multiple of 4 bytes
    if stop > end:
        raise _Fail(f"{what} lacks its NUL padding to a multiple of 4 bytes")
    if data.count(b"\x00", nul, stop) != stop - nul:
        raise _Fail(f"{what} has non-NUL bytes in its padding")
    try:
        return data[pos:nul].decode("utf-8"), stop
    except UnicodeDecodeError:
        raise _Fail(f"{what} is not valid UTF-8 text") from None


def _message(data: bytes, start: int, end: int) -> Message:
    address, pos = _string(data, start, end, "the address")
    if len(address.encode()) > MAX_ADDRESS:
        raise _Fail(f"the address is longer than {MAX_ADDRESS} bytes")
    if not address.startswith("/") or any(ch <= " " or ch == "\x7f" for ch in address):
        raise _Fail(f"the address {_short(address)} is not an OSC address ('/' then printable "
                    "characters without spaces)")
    if pos == end:  # OSC 1.0 allows a message without a type-tag string: no arguments
        return Message(address, ())
    if data[pos:pos + 1] != b",":
        raise _Fail(f"the type-tag string of {_short(address)} does not start with ','")
    nul = data.find(b"\x00", pos, min(end, pos + MAX_TAGS + 2))
    if nul < 0:
        raise _Fail(f"the type-tag string of {_short(address)} has more than {MAX_TAGS} tags "
                    "or no terminating NUL")
    tags, pos = _string(data, pos, end, f"the type-tag string of {_short(address)}")
    tags = tags[1:]
    bad = sorted(set(tags) - TAGS)
    if bad:
        shown = ", ".join(repr(t) for t in bad[:5])
        raise _Fail(f"the type tags of {_short(address)} include unsupported tag(s) {shown} "
                    f"(supported: {' '.join(sorted(TAGS))})")
    args, pos = _arguments(data, pos, end, tags, address)
    if pos != end:
        raise _Fail(f"{end - pos} bytes follow the last argument of {_short(address)}")
    return Message(address, args)


def _arguments(data: bytes, pos: int, end: int, tags: str, address: str) -> tuple[tuple[Any, ...], int]:
    top: list[Any] = []
    stack: list[list[Any]] = [top]
    for n, tag in enumerate(tags, 1):
        if tag == "[":
            if len(stack) > MAX_ARRAY_DEPTH:
                raise _Fail(f"the arrays of {_short(address)} nest more than {MAX_ARRAY_DEPTH} deep")
            inner: list[Any] = []
            stack[-1].append(inner)
            stack.append(inner)
            continue
        if tag == "]":
            if len(stack) == 1:
                raise _Fail(f"the type tags of {_short(address)} close an array that was not opened")
            stack.pop()
            continue
        value, pos = _argument(data, pos, end, tag, n, address)
        stack[-1].append(value)
    if len(stack) != 1:
        raise _Fail(f"the type tags of {_short(address)} leave an array open")
    return tuple(top), pos


_FIXED = {"i": 4, "f": 4, "c": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}


def _argument(data: bytes, pos: int, end: int, tag: str, n: int, address: str) -> tuple[Any, int]:
    what = f"argument {n} ({tag!r}) of {_short(address)}"
    width = _FIXED.get(tag)
    if width is not None:
        if end - pos < width:
            raise _Fail(f"{what} needs {width} bytes but {end - pos} are left")
        if tag == "i":
            value: Any = _I32.unpack_from(data, pos)[0]
        elif tag == "f":
            value = _F32.unpack_from(data, pos)[0]
        elif tag == "h":
            value = _I64.unpack_from(data, pos)[0]
        elif tag == "d":
            value = _F64.unpack_from(data, pos)[0]
        elif tag == "r":
            value = _U32.unpack_from(data, pos)[0]
        elif tag == "m":
            value = tuple(data[pos:pos + 4])
        elif tag == "t":
            raw = _U64.unpack_from(data, pos)[0]
            value = Timetag(raw >> 32, raw & 0xFFFFFFFF)
        else:  # "c": a character in 32 bits
            code = _U32.unpack_from(data, pos)[0]
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise _Fail(f"{what} is not a character code ({code})")
            value = chr(code)
        return value, pos + width
    if tag in "sS":
        return _string(data, pos, end, what)
    if tag == "b":
        if end - pos < 4:
            raise _Fail(f"{what} needs 4 bytes for its size but {end - pos} are left")
        (length,) = _I32.unpack_from(data, pos)
        if length < 0:
            raise _Fail(f"{what} has a negative size ({length})")
        stop = pos + 4 + length + (-length) % 4
        if stop > end:
            raise _Fail(f"{what} has size {length} but only {end - pos - 4} bytes are left")
        return data[pos + 4:pos + 4 + length], stop
    value = {"T": True, "F": False, "N": None, "I": math.inf}[tag]
    return value, pos


def _short(address: str) -> str:
    text = repr(address)
    return text if len(text) <= 60 else text[:57] + "..."


def encode_message(address: str, tags: str, args: tuple[Any, ...] | list[Any]) -> bytes:
    """Bytes of one message with explicit tags (arrays excluded); for tests and the fuzzer, which
    must also build messages python-osc's builder refuses (NaN, any int64, 'c', 'I')."""
    out = bytearray(_pad(address.encode()))
    out += _pad(("," + tags).encode())
    values = iter(args)
    for tag in tags:
        if tag in "TFNI":
            continue
        value = next(values)
        if tag == "i":
            out += _I32.pack(value)
        elif tag == "h":
            out += _I64.pack(value)
        elif tag == "f":
            out += _F32.pack(value)
        elif tag == "d":
            out += _F64.pack(value)
        elif tag in "sS":
            out += _pad(value.encode())
        elif tag == "b":
            out += _I32.pack(len(value)) + value + b"\x00" * ((-len(value)) % 4)
        elif tag == "c":
            out += _U32.pack(ord(value))
        elif tag == "r":
            out += _U32.pack(value)
        elif tag == "m":
            out += bytes(value)
        elif tag == "t":
            out += _U64.pack((value[0] << 32) | value[1])
        else:
            raise ValueError(f"encode_message does not encode tag {tag!r}")
    return bytes(out)


def encode_bundle(elements: list[bytes], timetag: int = IMMEDIATELY) -> bytes:
    """A bundle of already encoded messages or bundles."""
    out = bytearray(BUNDLE_HEADER + _U64.pack(timetag))
    for element in elements:
        out += _I32.pack(len(element)) + element
    return bytes(out)


def _pad(raw: bytes) -> bytes:
    return raw + b"\x00" * (4 - len(raw) % 4)
