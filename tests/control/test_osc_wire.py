"""OSC datagram validation and decoding (livegen.control.osc_wire), against the bytes that froze,
stalled or flooded the daemon and against python-osc for valid packets."""

from __future__ import annotations

import math
import random
import struct
import time

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from livegen.control.osc_wire import (
    MAX_BUNDLE_DEPTH,
    MAX_DATAGRAM,
    MAX_ELEMENTS,
    MAX_TAGS,
    MalformedPacket,
    Message,
    Timetag,
    decode,
    encode_bundle,
    encode_message,
)

# The 20-byte bundle (#bundle, time tag 1, element size -4) that sent python-osc into an endless
# loop on the event-loop thread.
FREEZE = bytes.fromhex("2362756e646c65000000000000000001fffffffc")


def stall_message() -> bytes:
    """The 65,020-byte message whose type tag has 65,000 unknown characters (python-osc logged a
    warning per character: 1.2-2.4 s and 7 MB of log per packet)."""
    data = b"/livegen/status\x00" + b"," + b"x" * 65000 + b"\x00" * 3
    assert len(data) == 65020
    return data


def zero_elements() -> bytes:
    """A bundle of 1,000 zero-length elements (python-osc logged two lines per element)."""
    return b"#bundle\x00" + struct.pack(">Q", 1) + b"\x00\x00\x00\x00" * 1000


def _reason(data: bytes) -> str:
    with pytest.raises(MalformedPacket) as info:
        decode(data)
    return info.value.reason


def test_the_freezing_bundle_is_refused_at_once():
    t0 = time.perf_counter()
    reason = _reason(FREEZE)
    assert time.perf_counter() - t0 < 0.05
    assert reason == ("The OSC packet of 20 bytes is malformed: element 1 of the bundle has size -4; "
                      "sizes are positive multiples of 4.")


def test_the_stalling_type_tag_is_refused_without_reading_it():
    data = stall_message()
    t0 = time.perf_counter()
    reason = _reason(data)
    assert time.perf_counter() - t0 < 0.01
    assert "65020 bytes" in reason and f"more than {MAX_TAGS} tags" in reason


def test_zero_length_elements_are_one_refusal():
    assert "element 1 of the bundle has size 0" in _reason(zero_elements())


@pytest.mark.parametrize("data, detail", [
    (b"", "the datagram is empty"),
    (b"\x00\x01garbage", "starts with the bytes 00 01 67 61"),
    (b"#bundle\x00\x00", "too short for its header and time tag"),
    (b"#bundlX\x00" + bytes(8), "neither '/' (a message) nor '#bundle'"),
    (b"/livegen/generate\x00\x00\x00,s\x00\x00", "argument 1 ('s') of '/livegen/generate' has no terminating NUL"),
    (b"/abc", "the address has no terminating NUL"),
    (b"/abc\x00\x00\x00", "lacks its NUL padding"),
    (b"/ab\x00,i\x00x" + bytes(4), "has non-NUL bytes in its padding"),
    (b"/a b\x00\x00\x00\x00", "is not an OSC address"),
    (b"/a\n\x00", "is not an OSC address"),
    (b"/\xff\xfe\x00", "the address is not valid UTF-8 text"),
    (b"/a\x00\x00i\x00\x00\x00", "does not start with ','"),
    (b"/a\x00\x00,q\x00\x00", "unsupported tag(s) 'q'"),
    (b"/a\x00\x00,i\x00\x00\x00\x00", "needs 4 bytes but 2 are left"),
    (b"/a\x00\x00,i\x00\x00", "argument 1 ('i') of '/a' needs 4 bytes but 0 are left"),
    (b"/a\x00\x00,i\x00\x00" + bytes(8), "4 bytes follow the last argument"),
    (b"/a\x00\x00,b\x00\x00" + struct.pack(">i", -8), "has a negative size (-8)"),
    (b"/a\x00\x00,b\x00\x00" + struct.pack(">i", 100) + bytes(8), "has size 100 but only 8 bytes are left"),
    (b"/a\x00\x00,c\x00\x00" + struct.pack(">I", 0xD800), "is not a character code"),
    (b"/a\x00\x00,]\x00\x00", "close an array that was not opened"),
    (b"/a\x00\x00,[\x00\x00", "leave an array open"),
    (b"/a\x00\x00,[[[[[]]]]]\x00\x00\x00\x00", "nest more than 4 deep"),
    (encode_bundle([b"/a\x00\x00"])[:-1], "only 3 bytes follow"),
    (encode_bundle([b"/a\x00\x00"]) + b"\x00\x00", "element 2 of the bundle has only 2 bytes for its 4-byte size"),
    (b"#bundle\x00" + bytes(8) + struct.pack(">i", 6) + b"/a\x00\x00\x00\x00", "has size 6"),
    (b"#bundle\x00" + bytes(8) + struct.pack(">i", 8) + b"xyzw\x00\x00\x00\x00", "neither a message nor a bundle"),
    (b"#bundle\x00" + bytes(8) + struct.pack(">i", 8) + b"#bundle\x00", "nested at depth 2 is 8 bytes"),
    (b"/" + b"a" * MAX_DATAGRAM, "larger than 65507 bytes"),
])
def test_refusals_say_why(data, detail):
    reason = _reason(data)
    assert reason.startswith(f"The OSC packet of {len(data)} bytes is malformed: ") and reason.endswith(".")
    assert detail in reason


def test_limits_on_tags_nesting_and_elements():
    ok = encode_message("/a", "i" * MAX_TAGS, [1] * MAX_TAGS)
    assert decode(ok) == [Message("/a", (1,) * MAX_TAGS)]
    assert f"more than {MAX_TAGS} tags" in _reason(encode_message("/a", "i" * (MAX_TAGS + 1), [1] * (MAX_TAGS + 1)))

    msg = encode_message("/deep", "i", [7])
    packet = msg
    for _ in range(MAX_BUNDLE_DEPTH):
        packet = encode_bundle([packet])
    assert decode(packet) == [Message("/deep", (7,))]
    assert f"nested more than {MAX_BUNDLE_DEPTH} deep" in _reason(encode_bundle([packet]))

    assert len(decode(encode_bundle([msg] * MAX_ELEMENTS))) == MAX_ELEMENTS
    assert f"more than {MAX_ELEMENTS} bundle elements" in _reason(encode_bundle([msg] * (MAX_ELEMENTS + 1)))


def test_one_bad_element_refuses_the_whole_bundle():
    good = encode_message("/livegen/trigger", "i", [1])
    bad = b"/x\x00\x00,q\x00\x00"
    assert "element 2" not in _reason(encode_bundle([good, bad]))  # the reason names the bad message
    assert "unsupported tag(s) 'q'" in _reason(encode_bundle([good, bad]))


def test_every_tag_decodes_like_python_osc_would():
    data = encode_message("/a", "sSifhdbTFNIcrmt",
                          ["x", "sym", -5, 2.5, -(2**40), 1e300, b"\x01\x02\x03", "z", 0x11223344,
                           (0, 0x90, 60, 100), (3, 4)])
    (msg,) = decode(data)
    assert msg.args == ("x", "sym", -5, 2.5, -(2**40), 1e300, b"\x01\x02\x03", True, False, None, math.inf, "z",
                        0x11223344, (0, 0x90, 60, 100), Timetag(3, 4))
    assert decode(b"/livegen/status\x00") == [Message("/livegen/status", ())]  # no type-tag string
    assert decode(b"/livegen/[\x00\x00,\x00\x00\x00") == [Message("/livegen/[", ())]  # not a valid pattern
    arr = b"/a\x00\x00,i[if]s\x00" + struct.pack(">ii", 1, 2) + struct.pack(">f", 0.5) + b"ok\x00\x00"
    assert decode(arr) == [Message("/a", (1, [2, 0.5], "ok"))]
    nan = decode(encode_message("/n", "fd", [math.nan, -math.inf]))[0].args
    assert math.isnan(nan[0]) and nan[1] == -math.inf


def _builder(address: str, *args) -> OscMessageBuilder:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b


def test_valid_packets_agree_with_python_osc():
    rng = random.Random(1)
    for _ in range(300):
        args = []
        for _ in range(rng.randrange(0, 8)):
            kind = rng.randrange(6)
            args.append([rng.randrange(-2**31, 2**31), rng.uniform(-1e6, 1e6),
                         "".join(rng.choice("abc é✓") for _ in range(rng.randrange(0, 9))),
                         bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))),
                         rng.random() < 0.5, None][kind])
        msg = _builder("/livegen/x/" + str(rng.randrange(100)), *args).build()
        ours = decode(msg.dgram)
        assert ours == [Message(msg.address, tuple(msg.params))]
        bundle = OscBundleBuilder(time.time() + rng.uniform(-100, 3600))
        bundle.add_content(msg)
        bundle.add_content(_builder("/b", 1, "two").build())
        dgram = bundle.build().dgram
        theirs = [(t.message.address, tuple(t.message.params)) for t in OscPacket(dgram).messages]
        assert [(m.address, m.args) for m in decode(dgram)] == theirs


def test_random_bytes_and_mutations_never_raise_anything_else():
    rng = random.Random(7)
    seeds = [encode_message("/livegen/generate", "sif", ["pad", 4, 0.5]),
             encode_bundle([encode_message("/livegen/trigger", "i", [1]), encode_bundle([b"/x\x00\x00"])]),
             b"/a\x00\x00,b[s]h\x00\x00" + struct.pack(">i", 4) + b"blobin\x00\x00" + struct.pack(">q", 5)]
    assert [len(decode(s)) for s in seeds] == [1, 2, 1]
    decoded = refused = 0
    t0 = time.perf_counter()
    for i in range(20000):
        base = bytearray(rng.choice(seeds))
        if i % 4 == 0:
            base = bytearray(rng.randbytes(rng.randrange(0, 64)))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            if op == 0 and base:
                base[rng.randrange(len(base))] = rng.randrange(256)
            elif op == 1:
                base = base[:rng.randrange(len(base) + 1)]
            else:
                base.insert(rng.randrange(len(base) + 1), rng.randrange(256))
        try:
            messages = decode(bytes(base))
        except MalformedPacket as exc:
            assert exc.reason.endswith(".")
            refused += 1
        else:
            assert all(isinstance(m.address, str) and m.address.startswith("/") for m in messages)
            decoded += 1
    assert decoded > 100 and refused > 10000
    assert time.perf_counter() - t0 < 10
