"""The built-in /livegen/ address space: addresses and arguments -> typed commands."""

from __future__ import annotations

import pytest

from livegen.control.osc_verbs import Command, OscArgError, Reset, Verb, parse


def test_generate_with_optional_seed_and_seconds():
    assert parse("/livegen/generate", ("warm pad",)) == Command(Verb.GENERATE, {"prompt": "warm pad"})
    assert parse("/livegen/generate", ("warm pad", 42, 8.0)) == Command(
        "generate", {"prompt": "warm pad", "seed": 42, "seconds": 8.0}
    )
    # Pure Data sends every number as a float: whole floats are accepted where ints are expected
    cmd = parse("/livegen/generate", ("pad", 42.0, 2))
    assert cmd.values == {"prompt": "pad", "seed": 42, "seconds": 2.0}
    assert isinstance(cmd.values["seed"], int) and isinstance(cmd.values["seconds"], float)
    # a prompt split at spaces (Pd/Max message boxes) is joined back together
    cmd = parse("/livegen/generate", ("warm", "analog", "pad", 42.0, 0.5))
    assert cmd.values == {"prompt": "warm analog pad", "seed": 42, "seconds": 0.5}


@pytest.mark.parametrize(
    "address, args, message",
    [
        ("/livegen/generate", (), "Expected /livegen/generate s:prompt"),
        ("/livegen/generate", (12,), "prompt must be a string, got 12"),
        ("/livegen/generate", ("p", 4.5), "seed must be a whole number, got 4.5"),
        ("/livegen/generate", ("p", 1, "long"), "seconds must be a number, got 'long'"),
        ("/livegen/generate", ("p", 1, float("nan")), "seconds must be a finite number"),
        ("/livegen/trigger", ("one",), "slot must be a whole number, got 'one'"),
        ("/livegen/trigger", (), "Expected /livegen/trigger i:slot, got 0 argument(s)"),
        ("/livegen/set", ("volume", 1), "no parameter 'volume'"),
        ("/livegen/set", ("steps",), "Expected /livegen/set s:param value"),
        ("/livegen/steps", ("many",), "steps must be a whole number, got 'many'"),
        ("/livegen/status", (1,), "Expected /livegen/status (no arguments)"),
        ("/livegen/done", (1, "x", 2.0), "is a reply address"),
        ("/livegen/frobnicate", (), "Unknown address /livegen/frobnicate"),
    ],
)
def test_wrong_arguments_give_a_sentence(address, args, message):
    with pytest.raises(OscArgError) as info:
        parse(address, args)
    assert message in str(info.value)


def test_single_value_addresses_and_set():
    assert parse("/livegen/seed", (42,)) == Command(Verb.SET, {"name": "seed", "value": 42})
    assert parse("/livegen/bpm", (120,)) == Command(Verb.SET, {"name": "bpm", "value": 120.0})
    assert parse("/livegen/steps", (8.0,)) == Command(Verb.SET, {"name": "steps", "value": 8})
    assert parse("/livegen/prompt", ("dub",)) == Command(Verb.SET, {"name": "prompt", "value": "dub"})
    assert parse("/livegen/set", ("cfg", 3)) == Command(Verb.SET, {"name": "cfg", "value": 3.0})
    assert parse("/livegen/stop", ()) == Command(Verb.STOP, {"slot": None})
    assert parse("/livegen/stop", (2.0,)) == Command(Verb.STOP, {"slot": 2})
    assert parse("/livegen/cancel", (7,)) == Command(Verb.CANCEL, {"job": 7})
    assert parse("/livegen/subscribe", (9001,)) == Command(Verb.SUBSCRIBE, {"port": 9001})
    assert parse("/livegen/reload", ()) == Command(Verb.RELOAD)
    assert parse("/livegen/loop", (1.0,)) == Command(Verb.SET, {"name": "loop", "value": True})
    assert parse("/livegen/launch", ("beat",)) == Command(Verb.SET, {"name": "launch", "value": "beat"})
    assert parse("/livegen/bank", (2,)) == Command(Verb.SET, {"name": "bank", "value": 2})
    assert parse("/livegen/bank", ("drums",)) == Command(Verb.SET, {"name": "bank", "value": "drums"})
    assert parse("/livegen/launch", (2.0,)) == Command(Verb.SET, {"name": "launch", "value": "bar"})
    assert parse("/livegen/get", ("cfg",)) == Command(Verb.GET, {"name": "cfg"})
    for name in ("sampler", "model", "steps", "cfg", "negative_prompt", "seed"):
        assert parse(f"/livegen/{name}", ("",)) == Command(Verb.SET, {"name": name, "value": Reset.DEFAULT})
        assert parse("/livegen/set", (name, "default")) == Command(Verb.SET, {"name": name, "value": Reset.DEFAULT})
    assert parse("/livegen/generate", ("pad", -1)).values == {"prompt": "pad", "seed": None}
    with pytest.raises(OscArgError, match="from 1 to 65535"):
        parse("/livegen/subscribe", (70000,))
    with pytest.raises(OscArgError, match="from 1 to 65535"):
        parse("/livegen/subscribe", (70000.0,))
    with pytest.raises(OscArgError, match="launch must be one of now, beat, bar"):
        parse("/livegen/launch", ("later",))
    assert parse("/other/address", (1,)) is None


