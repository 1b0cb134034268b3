"""OSC in and out: an asyncio UDP server with validated intake and replies that never raise.

The server validates and decodes every datagram once (:mod:`livegen.control.osc_wire`; python-osc
only builds the replies) and hands every message (also each message of a bundle) to
``on_message(address, args, sender)`` on the event loop; bundles are dispatched at once, whatever
their time tag. Malformed datagrams and senders outside the allow-list never reach the daemon's
logic: the first go to ``on_malformed`` (rate-limited per sender), the second are dropped. See
:class:`OscServer` and docs/reliability.md.

The built-in ``/livegen/...`` addresses are parsed by :mod:`livegen.control.osc_verbs`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

from livegen.control import osc_wire
from livegen.control.ratelimit import PerKeyLimit, RateLimitedLog

log = logging.getLogger("livegen.osc")

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


class AllowList:
    """``osc.allow`` compiled once: addresses, networks (192.168.1.0/24) or host names; empty = all."""

    def __init__(self, allow: Sequence[str]) -> None:
        self.entries = list(allow)
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._names: set[str] = set()
        for entry in self.entries:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry)
        self._cache: dict[str, bool] = {}

    def __call__(self, host: str) -> bool:
        if not self.entries:
            return True
        known = self._cache.get(host)
        if known is None:
            known = self._match(host)
            if len(self._cache) >= 1024:
                self._cache.clear()
            self._cache[host] = known
        return known

    def _match(self, host: str) -> bool:
        if host in self._names:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._networks)


def sender_allowed(host: str, allow: Sequence[str]) -> bool:
    """True if ``host`` is in the allow-list (addresses or networks like 192.168.1.0/24; empty = all)."""
    return AllowList(allow)(host)


MessageHandler = Callable[[str, tuple, tuple[str, int]], None]
MalformedHandler = Callable[[tuple[str, int], str], None]

MALFORMED_REPLY_INTERVAL = 1.0  # at most one "malformed" reply per sender per second
LOG_WINDOW = 10.0  # at most one warning per sender (or target) per 10 s, "N more suppressed" after
REFUSED_LOG_WINDOW = 60.0  # a sender outside osc.allow: one warning per minute
MAX_SEND_BUFFER = 1 << 20  # replies waiting in the transport beyond this are dropped (counted)
RECEIVE_BUFFER = 4 << 20  # the kernel's default (208 KiB) holds three maximal datagrams: too few for a burst


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: OscServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.server._datagram(data, (addr[0], addr[1]))
        except Exception:  # noqa: BLE001 - nothing a datagram does may end the protocol
            self.server._internal("OSC datagram handling failed")

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable for an earlier reply; never closes the socket
        self.server._socket_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._lost(self, exc)


class OscServer:
    """UDP OSC server on the running asyncio loop; replies go out from the same socket.

    Every datagram is validated and decoded once by :func:`livegen.control.osc_wire.decode`;
    each of its messages goes to ``on_message(address, args, sender)``. An undecodable datagram
    goes to ``on_malformed(sender, reason)``, at most once per sender per second (the rest are
    counted in ``suppressed``). Invalid OSC *patterns* such as ``/livegen/[`` are valid address
    strings: they reach ``on_message``, whose owner answers unknown addresses.

    :meth:`send` never raises and never lets the socket close: targets are checked first (port
    1-65535, an address of the socket's family or a resolvable name), every failure is counted in
    ``send_errors`` and logged at most once per target per 10 s. Should the transport close
    anyway, the server binds the same port again (``reopened``).

    Counters: ``datagrams`` (received), ``received`` (messages handed to on_message),
    ``malformed``, ``rejected`` (sender not in the allow-list), ``send_errors``, ``suppressed``
    (malformed replies held back), ``log_suppressed``, ``reopened``; :meth:`stats` has them all.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: MessageHandler,
        on_malformed: MalformedHandler | None = None,
        allow: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.allow = list(allow)
        self._allowed = AllowList(self.allow)
        self._on_message = on_message
        self._on_malformed = on_malformed
        self._protocol: _Protocol | None = None
        self._closing = False
        self._reopening: asyncio.Task | None = None
        self._family = socket.AF_INET
        self._names: dict[str, tuple[str, int] | str] = {}  # host name -> address, or why not
        self.datagrams = 0
        self.received = 0
        self.rejected = 0
        self.malformed = 0
        self.send_errors = 0
        self.suppressed = 0
        self.reopened = 0
        self._malformed_reply = PerKeyLimit(MALFORMED_REPLY_INTERVAL)
        self._log_malformed = RateLimitedLog(log, LOG_WINDOW)
        self._log_refused = RateLimitedLog(log, REFUSED_LOG_WINDOW)
        self._log_send = RateLimitedLog(log, LOG_WINDOW)
        self._log_internal = RateLimitedLog(log, LOG_WINDOW)
        self._logs = (self._log_malformed, self._log_refused, self._log_send, self._log_internal)

    @property
    def log_suppressed(self) -> int:
        return sum(r.suppressed for r in self._logs)

    def stats(self) -> dict[str, int]:
        return {"datagrams": self.datagrams, "received": self.received, "malformed": self.malformed,
                "rejected": self.rejected, "send_errors": self.send_errors, "suppressed": self.suppressed,
                "log_suppressed": self.log_suppressed, "reopened": self.reopened}

    async def start(self) -> tuple[str, int]:
        self._closing = False
        await self._bind()
        return self.host, self.port

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._protocol = protocol  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._family = sock.family if sock is not None else socket.AF_INET
        if sock is not None:
            try:  # capped by net.core.rmem_max; a smaller buffer only drops more under a flood
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError as exc:
                log.debug("could not enlarge the OSC receive buffer: %s", exc)
        self.port = int(transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        self._closing = True
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
        for limiter in self._logs:
            limiter.flush(what="OSC warning")

    # ------------------------------------------------------------------ sending
    def send(self, target: tuple[str, int], address: str, *args: Any) -> bool:
        """Send one message from the server's socket; False (counted, logged) when it cannot be
        sent. Never raises."""
        try:
            transport = self._protocol.transport if self._protocol is not None else None
            if transport is None or transport.is_closing():
                raise OSError("the OSC socket is not open")
            addr = self._resolve(target)
            data = build_message(address, args)
            if len(data) > osc_wire.MAX_DATAGRAM:
                raise ValueError(f"the message is {len(data)} bytes, more than fits in one datagram")
            if transport.get_write_buffer_size() > MAX_SEND_BUFFER:
                raise OSError("the send buffer is full")
            transport.sendto(data, addr)
            return True
        except Exception as exc:  # noqa: BLE001 - a reply that cannot be built or sent is not fatal
            self.send_errors += 1
            shown = _show_target(target)
            self._log_send.log(logging.WARNING, shown, "could not send %s to %s: %s",
                               _short_text(address), shown, _short_text(exc))
            return False

    def _resolve(self, target: Any) -> tuple[str, int]:
        """The socket address for ``target`` or ValueError with a sentence."""
        if not isinstance(target, tuple) or len(target) < 2:
            raise ValueError("the target is not a (host, port) pair")
        host, port = target[0], target[1]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port {_short_text(port)} is not between 1 and 65535")
        if not isinstance(host, str) or not host or len(host) > 253:
            raise ValueError(f"host {_short_text(host)} is not an address or host name")
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            ip = None
        if ip is None:
            resolved = self._names.get(host)
            if resolved is None:
                resolved = self._lookup(host)
                if len(self._names) >= 64:
                    self._names.clear()
                self._names[host] = resolved
            if isinstance(resolved, str):
                raise ValueError(resolved)
            return resolved[0], port
        if self._family == socket.AF_INET:
            if ip.version == 6 and ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped), port
            if ip.version != 4:
                raise ValueError(f"{host} is an IPv6 address but the OSC socket is IPv4")
            return host, port
        if ip.version == 4:
            return f"::ffff:{host}", port
        return host, port

    def _lookup(self, host: str) -> tuple[str, int] | str:
        try:  # host names only come from the settings (status_host): looked up once, then cached
            infos = socket.getaddrinfo(host, None, self._family, socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            return f"host {host!r} cannot be resolved ({_short_text(exc)})"
        if not infos:
            return f"host {host!r} has no address"
        return str(infos[0][4][0]), 0

    # ------------------------------------------------------------------ receiving
    def _datagram(self, data: bytes, sender: tuple[str, int]) -> None:
        self.datagrams += 1
        if not self._allowed(sender[0]):
            self.rejected += 1
            self._log_refused.log(logging.WARNING, sender[0], "OSC from %s dropped: sender not in osc.allow",
                                  sender[0])
            return
        try:
            messages = osc_wire.decode(data)
        except osc_wire.MalformedPacket as exc:
            self.malformed += 1
            self._log_malformed.log(logging.WARNING, sender, "OSC from %s:%s: %s", sender[0], sender[1],
                                    exc.reason)
            if self._on_malformed is None:
                return
            if not self._malformed_reply.allow(sender):
                self.suppressed += 1
                return
            self._call_malformed(sender, exc.reason)
            return
        for message in messages:
            self._dispatch(sender, message.address, message.args)

    def _dispatch(self, sender: tuple[str, int], address: str, args: tuple) -> None:
        self.received += 1
        try:
            self._on_message(address, args, sender)
        except Exception:  # noqa: BLE001 - one bad message must never stop the server
            self._log_internal.log(logging.ERROR, sender, "OSC handler failed for %s", _short_text(address),
                                   exc_info=True)
            self._call_malformed(sender, f"The daemon hit an internal error while handling {_short_text(address)}; "
                                         "the message was ignored.")

    def _call_malformed(self, sender: tuple[str, int], reason: str) -> None:
        if self._on_malformed is None:
            return
        try:
            self._on_malformed(sender, reason)
        except Exception:  # noqa: BLE001
            self._log_internal.log(logging.ERROR, ("malformed", sender), "OSC error handler failed",
                                   exc_info=True)

    def _internal(self, what: str) -> None:
        self._log_internal.log(logging.ERROR, what, what, exc_info=True)

    def _socket_error(self, exc: Exception) -> None:
        self.send_errors += 1
        self._log_send.log(logging.INFO, "socket", "OSC socket error (a reply was not delivered): %s",
                           _short_text(exc))

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if self._closing or protocol is not self._protocol:
            return
        log.error("the OSC socket closed unexpectedly (%s); binding %s:%s again", exc or "no error",
                  self.host, self.port)
        self._protocol = None
        try:
            self._reopening = asyncio.get_running_loop().create_task(self._rebind())
        except RuntimeError:  # the loop is gone: nothing to serve
            pass

    async def _rebind(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._bind()
                self.reopened += 1
                log.warning("the OSC socket listens again on %s:%s", self.host, self.port)
                return
            except OSError as exc:
                log.error("could not bind the OSC socket again: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _short_text(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show_target(target: Any) -> str:
    if isinstance(target, tuple) and len(target) >= 2:
        return _short_text(f"{target[0]}:{target[1]}", 80)
    return _short_text(repr(target), 80)
