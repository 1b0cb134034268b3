"""OSC in and out: a python-osc asyncio UDP server and the built-in ``/livegen/...`` address space.

The server hands every message (also each message of a bundle) to ``on_message(address, args,
sender)`` on the event loop; future-dated bundles are dispatched at once (``strict_timing=False``)
so they cannot block the loop. Malformed datagrams and senders outside the allow-list never reach
the daemon's logic: the first are answered with ``/livegen/error``, the second are dropped.

:func:`parse_command` turns a built-in address and its arguments into a :class:`Command`, or
raises :class:`OscArgError` with a sentence for the error reply. Whole floats are accepted where
an int is expected (Pure Data sends every number as a float).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pythonosc import osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder

from livegen.mapping import PARAM_TYPES
from livegen.request import LAUNCHES

log = logging.getLogger("livegen.osc")

PREFIX = "/livegen/"

# Single-value addresses (TouchDesigner CHOP export, faders): /livegen/<name> value. The names are
# the mapper's state parameters, plus "bank" (select a bank by number).
SINGLE_VALUES: dict[str, str] = {**PARAM_TYPES, "bank": "int"}

# Reply / push addresses the daemon sends.
ACK = "/livegen/ack"
PROGRESS = "/livegen/progress"
DONE = "/livegen/done"
ERROR = "/livegen/error"
READY = "/livegen/ready"
STATUS = "/livegen/status"

HELP = (
    "/livegen/generate s:prompt [i:seed] [f:seconds], /livegen/trigger i:slot, /livegen/stop [i:slot], "
    "/livegen/cancel [i:job], /livegen/set s:param value, /livegen/status, /livegen/reload, "
    "/livegen/subscribe [i:port], /livegen/<param> value for " + ", ".join(SINGLE_VALUES)
)


class OscArgError(ValueError):
    """The arguments of a built-in address are wrong (the message is the error reply)."""


@dataclass(frozen=True)
class Command:
    """A parsed built-in message: ``verb`` is generate, trigger, stop, cancel, set, status, reload or
    subscribe; ``values`` holds its typed arguments."""

    verb: str
    values: dict[str, Any] = field(default_factory=dict)


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    raise OscArgError(f"{what} must be a whole number, got {_show(value)}")


def as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OscArgError(f"{what} must be a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise OscArgError(f"{what} must be a finite number, got {value}")
    return value


def as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise OscArgError(f"{what} must be a string, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no"):
        return value.lower() in ("true", "on", "yes")
    raise OscArgError(f"{what} must be 0 or 1 (or true/false), got {_show(value)}")


def as_launch(value: Any, what: str) -> str:
    if value not in LAUNCHES:
        raise OscArgError(f"{what} must be one of {', '.join(LAUNCHES)}, got {_show(value)}")
    return value


_CONVERT = {"int": as_int, "float": as_float, "str": as_str, "bool": as_bool, "launch": as_launch}


def convert_value(name: str, value: Any) -> Any:
    """Type a value for a single-value parameter (``/livegen/set name value`` or ``/livegen/name``)."""
    kind = SINGLE_VALUES.get(name)
    if kind is None:
        raise OscArgError(f"unknown parameter {name!r}; known: {', '.join(SINGLE_VALUES)}")
    return _CONVERT[kind](value, name)


def _count(args: Sequence[Any], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise OscArgError(f"expected {usage}, got {len(args)} argument(s)")


def parse_command(address: str, args: Sequence[Any]) -> Command | None:
    """Parse a built-in address; None when ``address`` is not one (the mapper may still match it)."""
    if not address.startswith(PREFIX):
        return None
    verb = address[len(PREFIX):]
    if verb == "generate":
        usage = "/livegen/generate s:prompt [i:seed] [f:seconds]"
        # Pd and Max split an unquoted prompt at spaces: leading strings are joined back together
        words = 0
        while words < len(args) and isinstance(args[words], str):
            words += 1
        if words > 1:
            args = (" ".join(args[:words]), *args[words:])
        _count(args, 1, 3, usage)
        values: dict[str, Any] = {"prompt": as_str(args[0], "prompt")}
        if len(args) > 1:
            values["seed"] = as_int(args[1], "seed")
        if len(args) > 2:
            values["seconds"] = as_float(args[2], "seconds")
        return Command("generate", values)
    if verb == "trigger":
        _count(args, 1, 1, "/livegen/trigger i:slot")
        return Command("trigger", {"slot": as_int(args[0], "slot")})
    if verb in ("stop", "cancel"):
        key = "slot" if verb == "stop" else "job"
        _count(args, 0, 1, f"/livegen/{verb} [i:{key}]")
        return Command(verb, {key: as_int(args[0], key) if args else None})
    if verb == "set":
        _count(args, 2, 2, "/livegen/set s:param value")
        name = as_str(args[0], "param")
        return Command("set", {"name": name, "value": convert_value(name, args[1])})
    if verb in ("status", "reload"):
        _count(args, 0, 0, f"/livegen/{verb} (no arguments)")
        return Command(verb)
    if verb == "subscribe":
        _count(args, 0, 1, "/livegen/subscribe [i:port]")
        return Command("subscribe", {"port": as_int(args[0], "port") if args else None})
    if verb in SINGLE_VALUES:
        _count(args, 1, 1, f"/livegen/{verb} value")
        return Command("set", {"name": verb, "value": convert_value(verb, args[0])})
    if verb in ("ack", "progress", "done", "error", "ready"):
        raise OscArgError(f"{address} is a reply address the daemon sends, not one it receives")
    raise OscArgError(f"unknown address {address}; known: {HELP}")


def build_message(address: str, args: Iterable[Any], types: str | None = None) -> bytes:
    """One OSC message as bytes; ``types`` (e.g. "sif") overrides the inferred type tags."""
    builder = OscMessageBuilder(address=address)
    args = list(args)
    if types is not None and len(types) != len(args):
        raise ValueError(f"{len(types)} type tag(s) for {len(args)} argument(s)")
    for i, arg in enumerate(args):
        if types is None:
            builder.add_arg(arg)
            continue
        tag = types[i]
        if tag == "i":
            builder.add_arg(int(float(arg)), "i")
        elif tag == "f":
            builder.add_arg(float(arg), "f")
        elif tag == "d":
            builder.add_arg(float(arg), "d")
        elif tag == "s":
            builder.add_arg(str(arg), "s")
        elif tag in "TF":
            builder.add_arg(tag == "T", tag)
        else:
            raise ValueError(f"unsupported OSC type tag {tag!r} (use i, f, d, s, T, F)")
    return builder.build().dgram


def sender_allowed(host: str, allow: Sequence[str]) -> bool:
    """True if ``host`` is in the allow-list (addresses or networks like 192.168.1.0/24; empty = all)."""
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host in allow
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            if host == entry:
                return True
    return False


MessageHandler = Callable[[str, tuple, tuple[str, int]], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: OscServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable for a reply
        log.debug("OSC socket error: %s", exc)


class OscServer:
    """UDP OSC server on the running asyncio loop; replies go out from the same socket."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: MessageHandler,
        on_malformed: Callable[[tuple[str, int], str], None] | None = None,
        allow: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.allow = list(allow)
        self._on_message = on_message
        self._on_malformed = on_malformed
        self._dispatcher = Dispatcher(strict_timing=False)
        self._dispatcher.set_default_handler(self._dispatch, needs_reply_address=True)
        self._protocol: _Protocol | None = None
        self.received = 0
        self.rejected = 0
        self.malformed = 0

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._protocol = protocol  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.port = int(sockname[1])
        return self.host, self.port

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    def send(self, target: tuple[str, int], address: str, *args: Any) -> None:
        """Send one message from the server's socket (errors are logged, never raised)."""
        if self._protocol is None or self._protocol.transport is None:
            return
        try:
            self._protocol.transport.sendto(build_message(address, args), target)
        except Exception as exc:  # noqa: BLE001 - a reply that cannot be built or sent is not fatal
            log.warning("could not send %s to %s:%s: %s", address, target[0], target[1], exc)

    def _datagram(self, data: bytes, sender: tuple[str, int]) -> None:
        if not sender_allowed(sender[0], self.allow):
            self.rejected += 1
            log.warning("OSC from %s:%s dropped: sender not in osc.allow", *sender)
            return
        try:
            osc_packet.OscPacket(data)
        except osc_packet.ParseError as exc:
            self.malformed += 1
            reason = f"malformed OSC packet ({len(data)} bytes): {exc}"
            if self._on_malformed is not None:
                self._on_malformed(sender, reason)
            return
        except Exception as exc:  # noqa: BLE001 - python-osc raises other errors on some garbage
            self.malformed += 1
            if self._on_malformed is not None:
                self._on_malformed(sender, f"malformed OSC packet ({len(data)} bytes): {exc}")
            return
        self._dispatcher.call_handlers_for_packet(data, sender)

    def _dispatch(self, sender: tuple[str, int], address: str, *args: Any) -> None:
        self.received += 1
        try:
            self._on_message(address, tuple(args), sender)
        except Exception:  # noqa: BLE001 - one bad message must never stop the server
            log.exception("OSC handler failed for %s", address)
            if self._on_malformed is not None:
                self._on_malformed(sender, f"internal error while handling {address}")
