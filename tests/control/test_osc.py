"""The OSC address space and the asyncio UDP server (real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from livegen.control.osc import OscServer, build_message, sender_allowed
from livegen.control.ratelimit import PerKeyLimit, RateLimitedLog
from tests.control.test_osc_wire import FREEZE, stall_message, zero_elements


def test_build_message_infers_or_takes_types():
    msg = OscMessage(build_message("/livegen/generate", ["pad", 42, 8.0]))
    assert msg.address == "/livegen/generate" and msg.params == ["pad", 42, 8.0]
    msg = OscMessage(build_message("/livegen/generate", ["pad", "42", "8"], types="sif"))
    assert msg.params == ["pad", 42, 8.0]
    with pytest.raises(ValueError, match="2 type tag"):
        build_message("/x", [1], types="ii")


def test_sender_allow_list():
    assert sender_allowed("127.0.0.1", ["127.0.0.1", "::1"])
    assert not sender_allowed("192.168.1.20", ["127.0.0.1", "::1"])
    assert sender_allowed("192.168.1.20", ["192.168.1.0/24"])
    assert sender_allowed("::ffff:127.0.0.1", ["127.0.0.1"])
    assert sender_allowed("10.0.0.1", [])


def _raw(address: str, *args) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


class Peer:
    """A client UDP socket on 127.0.0.1 read from the event loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()

    def send(self, port: int, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    async def recv(self, timeout: float = 5.0) -> OscMessage:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout)
        return OscMessage(data)

    async def silent(self, seconds: float) -> bool:
        try:
            await self.recv(seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


class Echo:
    """A server whose handler answers every message with an ack and every malformed datagram
    with an error, like the daemon does."""

    def __init__(self, allow=("127.0.0.1",)) -> None:
        self.got: list[tuple] = []
        self.bad: list[str] = []
        self.server = OscServer("127.0.0.1", 0, self.on_message, self.on_malformed, allow=list(allow))

    def on_message(self, address, args, sender):
        self.got.append((address, args))
        if address == "/explode":
            raise RuntimeError("handler bug")
        if address == "/reply-to":  # reply to (sender host, args[0]) the way /livegen/subscribe does
            self.server.send((sender[0], args[0]), "/livegen/ack", 0, "subscribed")
            return
        self.server.send(sender, "/livegen/ack", 1, f"got {address}")

    def on_malformed(self, sender, reason):
        self.bad.append(reason)
        self.server.send(sender, "/livegen/error", reason)

    async def start(self) -> int:
        return (await self.server.start())[1]


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_server_dispatches_replies_and_survives_garbage():
    async def main():
        echo = Echo()
        port = await echo.start()
        peer = Peer()
        peer.send(port, _raw("/livegen/generate", "pad", 42, 8.0))
        reply = await peer.recv()
        assert echo.got[-1] == ("/livegen/generate", ("pad", 42, 8.0))
        assert reply.address == "/livegen/ack" and reply.params == [1, "got /livegen/generate"]

        for garbage in (b"\x00\x01garbage", b"/livegen/generate\x00\x00\x00,s\x00\x00", b"#bundle\x00\x00"):
            other = Peer()  # one malformed reply per sender per second: a fresh sender each
            other.send(port, garbage)
            reply = await other.recv()
            assert reply.address == "/livegen/error"
            assert reply.params[0].startswith(f"The OSC packet of {len(garbage)} bytes is malformed: ")
            other.close()

        peer.send(port, _raw("/explode"))
        reply = await peer.recv()
        assert reply.address == "/livegen/error"
        assert reply.params[0] == ("The daemon hit an internal error while handling /explode; "
                                   "the message was ignored.")

        # a bundle dated an hour ahead is dispatched at once
        bundle = OscBundleBuilder(time.time() + 3600)
        b1 = OscMessageBuilder("/livegen/trigger")
        b1.add_arg(3)
        bundle.add_content(b1.build())
        t0 = time.monotonic()
        peer.send(port, bundle.build().dgram)
        await peer.recv()
        assert time.monotonic() - t0 < 1.0
        assert echo.got[-1] == ("/livegen/trigger", (3,))
        assert echo.server.malformed == 3 and echo.server.received == 3 and echo.server.datagrams == 6
        echo.server.close()
        peer.close()

    run(main())


def test_the_freezing_bundle_gets_an_error_and_the_loop_runs_on():
    async def main():
        echo = Echo()
        port = await echo.start()
        peer = Peer()
        peer.send(port, FREEZE)  # #bundle, time tag 1, element size -4: python-osc looped forever
        reply = await peer.recv(2.0)
        assert reply.address == "/livegen/error" and "element 1 of the bundle has size -4" in reply.params[0]
        peer.send(port, _raw("/livegen/status"))
        assert (await peer.recv(2.0)).params == [1, "got /livegen/status"]
        echo.server.close()
        peer.close()

    run(main())


@pytest.mark.parametrize("data", [_raw("/reply-to", 70000), _raw("/reply-to", -1), _raw("/reply-to", 70000.0)])
def test_replies_to_impossible_ports_never_close_the_socket(data):
    """`/livegen/subscribe i 70000` made the ack's sendto raise OverflowError, which closed the socket."""
    async def main():
        echo = Echo()
        port = await echo.start()
        peer = Peer()
        for _ in range(3):
            peer.send(port, data)
        for _ in range(100):
            if echo.server.send_errors == 3:
                break
            await asyncio.sleep(0.01)
        assert echo.server.send_errors == 3 and echo.server.reopened == 0
        peer.send(port, _raw("/livegen/status"))
        assert (await peer.recv(2.0)).params == [1, "got /livegen/status"]
        echo.server.close()
        peer.close()

    run(main())


def test_send_refuses_bad_targets_and_bad_messages_without_raising(caplog):
    async def main():
        echo = Echo()
        port = await echo.start()
        peer = Peer()
        server = echo.server
        bad_targets = [("127.0.0.1", 70000), ("127.0.0.1", -1), ("127.0.0.1", 0), ("127.0.0.1", 70000.0),
                       ("127.0.0.1", True), ("::1", 9000), ("", 9000), (None, 9000), ("not a host!", 9000),
                       ("no-such-host.invalid", 9000), ("x" * 300, 9000), "127.0.0.1:9000", ("127.0.0.1",)]
        for target in bad_targets:
            assert server.send(target, "/livegen/ack", 0, "x") is False
        assert server.send(peer.addr, "/livegen/ack", object()) is False  # cannot be built
        assert server.send(peer.addr, "/livegen/ack", "x" * 70000) is False  # larger than a datagram
        assert server.send_errors == len(bad_targets) + 2
        assert server.send(peer.addr, "/livegen/ack", 7, "fine") is True
        assert (await peer.recv()).params == [7, "fine"]
        assert server.send(("localhost", peer.addr[1]), "/livegen/ack", 8, "by name") is True
        assert (await peer.recv()).params == [8, "by name"]
        peer.send(port, _raw("/livegen/status"))
        assert (await peer.recv()).params == [1, "got /livegen/status"]
        for _ in range(50):  # the same bad target again and again: one warning per 10 s
            server.send(("127.0.0.1", 70000), "/livegen/ack", 0, "x")
        server.close()
        peer.close()
        assert server.send(peer.addr, "/livegen/ack", 1) is False  # closed: still no exception

    with caplog.at_level("INFO", logger="livegen.osc"):
        run(main())
    about_70000 = [r for r in caplog.records if "to 127.0.0.1:70000:" in r.getMessage()]
    assert len(about_70000) == 1
    assert "port 70000 is not between 1 and 65535" in about_70000[0].getMessage()
    assert "more OSC warning(s) were suppressed" in caplog.records[-1].getMessage()


def test_stalling_and_flooding_packets_are_refused_quickly_with_little_log(caplog):
    async def main():
        echo = Echo()
        port = await echo.start()
        for data in (stall_message(), zero_elements()):
            peer = Peer()
            t0 = time.monotonic()
            peer.send(port, data)
            reply = await peer.recv()
            assert time.monotonic() - t0 < 0.5
            assert reply.address == "/livegen/error" and f"of {len(data)} bytes is malformed" in reply.params[0]
            peer.close()
        echo.server.close()

    with caplog.at_level("DEBUG"):
        run(main())
    assert len(caplog.records) <= 4 and sum(len(r.getMessage()) for r in caplog.records) < 2000


def test_malformed_replies_and_warnings_are_rate_limited_per_sender(caplog):
    async def main():
        echo = Echo()
        port = await echo.start()
        peer, other = Peer(), Peer()
        for _ in range(50):
            peer.send(port, FREEZE)
        other.send(port, b"\x00\x01garbage")
        assert (await peer.recv()).address == "/livegen/error"
        assert (await other.recv()).address == "/livegen/error"  # its own limit
        assert await peer.silent(0.3)
        assert echo.server.malformed == 51 and echo.server.suppressed == 49 and len(echo.bad) == 2
        await asyncio.sleep(0.8)  # a second later the sender is answered again
        peer.send(port, FREEZE)
        assert (await peer.recv()).address == "/livegen/error"
        # decodable bad messages are never rate-limited: each one is the handler's to answer
        for i in range(20):
            peer.send(port, _raw("/livegen/[", i))
        acks = [await peer.recv() for _ in range(20)]
        assert [m.params[1] for m in acks] == ["got /livegen/["] * 20
        echo.server.close()
        peer.close()
        other.close()

    with caplog.at_level("WARNING", logger="livegen.osc"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "is malformed" in r.getMessage()]
    assert len(lines) == 2  # one per sender per 10 s (the 2nd freeze of `peer` is within 10 s)


def test_server_drops_senders_outside_the_allow_list(caplog):
    async def main():
        got = []
        server = OscServer("127.0.0.1", 0, lambda a, args, s: got.append(a), allow=["10.1.2.3"])
        _, port = await server.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for _ in range(30):
                client.sendto(_raw("/livegen/status"), ("127.0.0.1", port))
            for _ in range(100):
                if server.rejected == 30:
                    break
                await asyncio.sleep(0.01)
        assert server.rejected == 30 and got == []
        server.close()

    with caplog.at_level("WARNING", logger="livegen.osc"):
        run(main())
    dropped = [r.getMessage() for r in caplog.records if "not in osc.allow" in r.getMessage()]
    assert dropped == ["OSC from 127.0.0.1 dropped: sender not in osc.allow"]


def test_a_lost_transport_is_bound_again_on_the_same_port():
    async def main():
        echo = Echo()
        port = await echo.start()
        echo.server._protocol.transport.abort()  # what asyncio does after a fatal send error
        for _ in range(200):
            if echo.server.reopened:
                break
            await asyncio.sleep(0.01)
        assert echo.server.reopened == 1 and echo.server.port == port
        peer = Peer()
        peer.send(port, _raw("/livegen/status"))
        assert (await peer.recv()).params == [1, "got /livegen/status"]
        assert echo.server.stats()["reopened"] == 1
        echo.server.close()
        peer.close()

    run(main())


def test_rate_limited_log_aggregates():
    import logging

    now = [0.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("livegen.test.ratelimit")
    logger.propagate = False
    logger.addHandler(Keep())
    limited = RateLimitedLog(logger, window=10.0, burst=3, clock=lambda: now[0])
    for i in range(5):
        limited.log(logging.WARNING, "a", "bad %d", i)
    now[0] = 10.5
    limited.log(logging.WARNING, "a", "bad %d", 99)
    for key in "bcde":
        limited.log(logging.WARNING, key, "from %s", key)
    assert records == ["bad 0", "bad 99 (4 more like this suppressed)", "from b", "from c"]
    assert limited.suppressed == 6
    limited.flush()
    assert records[-1] == "2 more log line(s) were suppressed by the rate limit"
    limits = PerKeyLimit(1.0, clock=lambda: now[0])
    assert limits.allow("x") and not limits.allow("x") and limits.allow("y")
    now[0] = 12.0
    assert limits.allow("x") and limits.refused == 1
