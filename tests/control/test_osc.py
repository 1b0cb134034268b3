"""The OSC address space and the asyncio UDP server (real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from livegen.control.osc import (
    Command,
    OscArgError,
    OscServer,
    build_message,
    parse_command,
    sender_allowed,
)


def test_generate_with_optional_seed_and_seconds():
    assert parse_command("/livegen/generate", ("warm pad",)) == Command("generate", {"prompt": "warm pad"})
    assert parse_command("/livegen/generate", ("warm pad", 42, 8.0)) == Command(
        "generate", {"prompt": "warm pad", "seed": 42, "seconds": 8.0}
    )
    # Pure Data sends every number as a float: whole floats are accepted where ints are expected
    cmd = parse_command("/livegen/generate", ("pad", 42.0, 2))
    assert cmd.values == {"prompt": "pad", "seed": 42, "seconds": 2.0}
    assert isinstance(cmd.values["seed"], int) and isinstance(cmd.values["seconds"], float)
    # a prompt split at spaces (Pd/Max message boxes) is joined back together
    cmd = parse_command("/livegen/generate", ("warm", "analog", "pad", 42.0, 0.5))
    assert cmd.values == {"prompt": "warm analog pad", "seed": 42, "seconds": 0.5}


@pytest.mark.parametrize(
    "address, args, message",
    [
        ("/livegen/generate", (), "expected /livegen/generate s:prompt"),
        ("/livegen/generate", (12,), "prompt must be a string, got 12"),
        ("/livegen/generate", ("p", 4.5), "seed must be a whole number, got 4.5"),
        ("/livegen/generate", ("p", 1, "long"), "seconds must be a number, got 'long'"),
        ("/livegen/generate", ("p", 1, float("nan")), "seconds must be a finite number"),
        ("/livegen/trigger", ("one",), "slot must be a whole number, got 'one'"),
        ("/livegen/trigger", (), "expected /livegen/trigger i:slot, got 0 argument(s)"),
        ("/livegen/set", ("volume", 1), "unknown parameter 'volume'"),
        ("/livegen/set", ("steps",), "expected /livegen/set s:param value"),
        ("/livegen/steps", ("many",), "steps must be a whole number, got 'many'"),
        ("/livegen/status", (1,), "expected /livegen/status (no arguments)"),
        ("/livegen/done", (1, "x", 2.0), "is a reply address"),
        ("/livegen/frobnicate", (), "unknown address /livegen/frobnicate"),
    ],
)
def test_wrong_arguments_give_a_sentence(address, args, message):
    with pytest.raises(OscArgError) as info:
        parse_command(address, args)
    assert message in str(info.value)


def test_single_value_addresses_and_set():
    assert parse_command("/livegen/seed", (42,)) == Command("set", {"name": "seed", "value": 42})
    assert parse_command("/livegen/bpm", (120,)) == Command("set", {"name": "bpm", "value": 120.0})
    assert parse_command("/livegen/steps", (8.0,)) == Command("set", {"name": "steps", "value": 8})
    assert parse_command("/livegen/prompt", ("dub",)) == Command("set", {"name": "prompt", "value": "dub"})
    assert parse_command("/livegen/set", ("cfg", 3)) == Command("set", {"name": "cfg", "value": 3.0})
    assert parse_command("/livegen/stop", ()) == Command("stop", {"slot": None})
    assert parse_command("/livegen/stop", (2.0,)) == Command("stop", {"slot": 2})
    assert parse_command("/livegen/cancel", (7,)) == Command("cancel", {"job": 7})
    assert parse_command("/livegen/subscribe", (9001,)) == Command("subscribe", {"port": 9001})
    assert parse_command("/livegen/reload", ()) == Command("reload")
    assert parse_command("/livegen/loop", (1.0,)) == Command("set", {"name": "loop", "value": True})
    assert parse_command("/livegen/launch", ("beat",)) == Command("set", {"name": "launch", "value": "beat"})
    assert parse_command("/livegen/bank", (2,)) == Command("set", {"name": "bank", "value": 2})
    with pytest.raises(OscArgError, match="launch must be one of now, beat, bar"):
        parse_command("/livegen/launch", ("later",))
    assert parse_command("/other/address", (1,)) is None


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


def test_server_dispatches_replies_and_survives_garbage():
    async def main():
        loop = asyncio.get_running_loop()
        got: list[tuple] = []
        bad: list[str] = []
        arrived = asyncio.Event()

        def on_message(address, args, sender):
            got.append((address, args, sender[0]))
            if address == "/explode":
                raise RuntimeError("handler bug")
            server.send(sender, "/livegen/ack", 1, f"got {address}")
            arrived.set()

        def on_malformed(sender, reason):
            bad.append(reason)
            server.send(sender, "/livegen/error", reason)
            arrived.set()

        server = OscServer("127.0.0.1", 0, on_message, on_malformed, allow=["127.0.0.1"])
        _, port = await server.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)

        async def exchange(data: bytes) -> OscMessage:
            arrived.clear()
            client.sendto(data, ("127.0.0.1", port))
            await asyncio.wait_for(arrived.wait(), 5)
            reply = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
            return OscMessage(reply)

        reply = await exchange(_raw("/livegen/generate", "pad", 42, 8.0))
        assert got[-1] == ("/livegen/generate", ("pad", 42, 8.0), "127.0.0.1")
        assert reply.address == "/livegen/ack" and reply.params == [1, "got /livegen/generate"]

        for garbage in (b"\x00\x01garbage", b"/livegen/generate\x00\x00\x00,s\x00\x00", b"#bundle\x00\x00"):
            reply = await exchange(garbage)
            assert reply.address == "/livegen/error" and "malformed OSC packet" in reply.params[0]

        reply = await exchange(_raw("/explode"))
        assert reply.address == "/livegen/error" and "internal error" in reply.params[0]

        # a bundle dated an hour ahead is dispatched at once (strict_timing=False)
        bundle = OscBundleBuilder(time.time() + 3600)
        b1 = OscMessageBuilder("/livegen/trigger")
        b1.add_arg(3)
        bundle.add_content(b1.build())
        t0 = time.monotonic()
        reply = await exchange(bundle.build().dgram)
        assert time.monotonic() - t0 < 2.0
        assert got[-1][:2] == ("/livegen/trigger", (3,))
        assert server.malformed == 3
        server.close()
        client.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_server_drops_senders_outside_the_allow_list():
    async def main():
        got = []
        server = OscServer("127.0.0.1", 0, lambda a, args, s: got.append(a), allow=["10.1.2.3"])
        _, port = await server.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(_raw("/livegen/status"), ("127.0.0.1", port))
            for _ in range(100):
                if server.rejected:
                    break
                await asyncio.sleep(0.01)
        assert server.rejected == 1 and got == []
        server.close()

    asyncio.run(asyncio.wait_for(main(), 30))
