"""The feedback section's checks, the LED table, its de-duplication and rate bound, the thread."""

from __future__ import annotations

import threading
import time

import pytest

from livegen.feedback import Feedback, LedBoard, TokenBucket
from livegen.mapping import Mapper, MappingError
from livegen.slot_states import SlotState, SlotStates

BASE = """\
name: fb
midi:
  - note: 36-37
    action: generate
    prompt: x
feedback:
  pads:
    - note: 36-37
      channel: 10
    - cc: [1, 2]
  states:
    idle: 0
    queued: {value: 13}
    rendering: {value: [7, 9, 13], channel: 3}
    cached: {velocity: 37}
    playing: {value: 21, channel: 2}
"""


def spec(text: str = BASE):
    return Mapper.from_yaml(text, "fb.yaml").feedback


def errors(text: str) -> list[str]:
    with pytest.raises(MappingError) as info:
        Mapper.from_yaml(text, "fb.yaml")
    return info.value.errors


def test_the_section_is_read():
    s = spec()
    assert [(g.kind, g.numbers, g.channel) for g in s.groups] == [("note", (36, 37), 9), ("cc", (1, 2), 0)]
    assert s.message(s.groups[0], 1, "playing") == (0x91, 37, 21)  # the state's channel 2 replaces 10
    assert s.message(s.groups[0], 0, "queued") == (0x99, 36, 13)
    assert s.message(s.groups[1], 1, "cached") == (0xB0, 2, 37)
    assert s.message(s.groups[0], 2, "idle") is None  # no third LED
    # a list of values is stepped through by the progress
    assert [s.message(s.groups[0], 0, "rendering", p)[2] for p in (0.0, 0.3, 0.34, 0.7, 1.0)] == [7, 7, 9, 13, 13]
    assert Mapper.from_yaml(BASE.replace("feedback:", "ignored:").split("ignored:")[0], "x").feedback is None


@pytest.mark.parametrize(("change", "wanted"), [
    (("idle: 0", "idel: 0"), "fb.yaml:12: unknown slot state 'idel'. Did you mean 'idle'?"),
    (("idle: 0", "idel: 0"), "fb.yaml:11: feedback 'states' lacks idle"),
    (("channel: 3", "channel: 17"), "fb.yaml:14: a MIDI channel is 1-16, not 17."),
    (("value: 13", "value: 128"), "fb.yaml:13: state 'queued': a value is 0-127"),
    (("    - cc: [1, 2]", "    - cc: [1, 2]\n      note: 5"), "fb.yaml:10: an LED group names its LEDs with either"),
    (("    - cc: [1, 2]", "    - note: 37\n      channel: 10"), "fb.yaml:10: note 37 on channel 10 already shows a slot"),
    (("  pads:", "  rate: 0\n  pads:"), "fb.yaml:7: feedback 'rate' is messages per second"),
    (("  pads:", "  colour: red\n  pads:"), "fb.yaml:7: unknown feedback key 'colour'"),
    (("cached: {velocity: 37}", "cached: {velocity: 37, value: 3}"), "fb.yaml:15: state 'cached' gives both"),
])
def test_mistakes_are_file_line_sentences(change, wanted):
    found = errors(BASE.replace(*change))
    assert any(e.startswith(wanted) for e in found), found


def test_only_one_file_may_have_feedback():
    with pytest.raises(MappingError) as info:
        Mapper.from_texts([(BASE, "a.yaml"), (BASE.split("midi:")[0] + "feedback:" + BASE.split("feedback:")[1],
                                              "b.yaml")])
    assert any("b.yaml:2: only one mapping file may have a 'feedback' section; a.yaml:6 has one." in e
               for e in info.value.errors), info.value.errors


def test_shipped_mappings_have_complete_colour_tables():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "mappings"
    for name in ("launchpad.yaml", "akai-mpd218.yaml"):
        s = Mapper.from_files([root / name]).feedback
        assert s is not None, name
        assert s.slots() == 16, name
        looks = {st: s.message(s.groups[0], 0, st, 1.0) for st in ("idle", "queued", "rendering", "cached", "playing")}
        assert len(set(looks.values())) == 5, (name, looks)  # every state looks different
        assert looks["idle"][2] == 0, name


def test_board_sends_changes_only_in_order():
    b = LedBoard(spec())
    b.show_all()
    assert b.take(100) == [(0x99, 36, 0), (0xB0, 1, 0), (0x99, 37, 0), (0xB0, 2, 0)]
    b.show(0, "queued")
    for step in range(1, 101):  # a flood of progress: only the value steps go out
        b.show(0, "rendering", step / 100)
    b.show(0, "playing", 1.0)
    b.show(0, "playing", 1.0)
    assert [m for m in b.take(100) if m[0] & 0xF0 == 0x90] == [
        (0x99, 36, 13), (0x92, 36, 7), (0x92, 36, 9), (0x92, 36, 13), (0x91, 36, 21)]
    assert b.take(100) == []
    b.show(0, "playing", 1.0)
    assert b.take(100) == []  # the same look again sends nothing


def test_board_under_a_flood_keeps_each_leds_newest():
    b = LedBoard(spec())
    b.show_all()
    b.take(100)
    b.show(0, "queued")
    b.show(1, "queued")
    b.show(0, "rendering", 0.5)
    b.show(0, "playing", 1.0)
    b.show(1, "idle")  # back to what the LED shows: nothing to send for it at the end
    out = b.take(2)
    assert out == [(0x91, 36, 21), (0xB1, 1, 21)], out
    assert b.coalesced > 0
    assert b.take(10) == []


def test_board_resends_everything_and_follows_a_reload():
    b = LedBoard(spec())
    b.show(1, "cached", 1.0)
    b.take(100)
    b.show_all(resend=True)
    assert sorted(b.take(100)) == sorted([(0x99, 36, 0), (0xB0, 1, 0), (0x99, 37, 37), (0xB0, 2, 37)])
    smaller = spec(BASE.replace("    - cc: [1, 2]\n", ""))
    b.replace(smaller)
    assert b.take(100) == [(0xB0, 2, 0)]  # the CC LEDs left the mapping: the lit one is switched off


def test_token_bucket_bounds_the_rate():
    now = [0.0]
    bucket = TokenBucket(100.0, clock=lambda: now[0])
    assert bucket.available() == 5  # 50 ms of the rate
    bucket.spend(5)
    assert bucket.available() == 0
    assert bucket.wait_for_one() == pytest.approx(0.01)
    now[0] += 0.02
    assert bucket.available() == 2
    now[0] += 10
    assert bucket.available() == 5


class FakeOut:
    def __init__(self) -> None:
        self.wanted: list[list[str]] = []
        self.messages: list[tuple[float, tuple[int, ...]]] = []
        self.port_names = ["fake:midi_out"]
        self.sent = self.failed = 0
        self.reconnect = threading.Event()
        self.closed = False

    def open(self) -> list[str]:
        return self.port_names

    def check(self) -> bool:
        if self.reconnect.is_set():
            self.reconnect.clear()
            return True
        return False

    def want(self, connect) -> None:
        self.wanted.append(list(connect))

    def send(self, m) -> bool:
        self.messages.append((time.monotonic(), tuple(m)))
        self.sent += 1
        return True

    def close(self) -> None:
        self.closed = True


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_the_thread_sends_a_flood_within_the_rate_and_ends_right():
    text = BASE.replace("  pads:", "  rate: 100\n  pads:")
    out = FakeOut()
    fb = Feedback(lambda: spec(text), lambda s: out)
    slots = SlotStates(lambda *a: None)
    slots.listeners.append(fb.on_slot)
    fb.open()
    wait_until(lambda: len(out.messages) == 4)
    t0 = time.monotonic()
    calls = []
    for i in range(20000):  # 2 pads x 2 LEDs, a flood of changes from the loop; never blocks it
        a = time.perf_counter()
        slots.set(i % 2, SlotState.RENDERING, (i % 1000) / 1000)
        slots.set(i % 2, SlotState.QUEUED if i % 3 else SlotState.PLAYING)
        calls.append(time.perf_counter() - a)
    slots.set(0, SlotState.PLAYING, 1.0)
    slots.set(1, SlotState.IDLE)
    wait_until(lambda: fb.stats()["waiting"] == 0 and len(out.messages) > 4)
    time.sleep(0.1)
    flood = [m for t, m in out.messages if t >= t0]
    span = max(out.messages[-1][0] - t0, 1e-3)
    assert len(flood) <= 100 * span + 5 + 2, (len(flood), span)  # the rate, plus the bucket's burst
    last = {}
    for _, m in out.messages:
        last[(m[0] & 0xF0, m[1])] = m
    assert last[(0x90, 36)] == (0x91, 36, 21) and last[(0x90, 37)] == (0x99, 37, 0)
    assert last[(0xB0, 1)] == (0xB1, 1, 21) and last[(0xB0, 2)] == (0xB0, 2, 0)
    assert sorted(calls)[len(calls) // 2] < 0.001
    out.reconnect.set()  # a controller came back: every LED again
    n = len(out.messages)
    wait_until(lambda: len(out.messages) >= n + 4, timeout=3)
    assert {m for _, m in out.messages[n:]} == set(last.values())
    fb.close()
    assert out.closed
    assert {m for _, m in out.messages[-4:]} == {(0x99, 36, 0), (0x99, 37, 0), (0xB0, 1, 0), (0xB0, 2, 0)}


def test_no_output_leaves_the_daemon_without_feedback(caplog):
    class Broken(FakeOut):
        def open(self) -> list[str]:
            raise RuntimeError("no MIDI API available")

    fb = Feedback(lambda: spec(), lambda s: Broken())
    fb.open()
    fb.on_slot(0, SlotState.QUEUED, 0.0)
    assert fb.stats()["problem"] == "no MIDI API available"
    assert "MIDI feedback disabled: no MIDI API available" in caplog.text
    fb.close()


def test_preflight_warns_when_the_feedback_has_nowhere_to_go():
    from livegen import limits as lim
    from livegen import preflight
    from livegen.settings import MidiSettings, Settings

    mapper = Mapper.from_yaml(BASE, "fb.yaml")
    for midi, wanted in ((MidiSettings(), None),
                         (MidiSettings(enabled=False), "fb.yaml:6: the feedback section lights nothing: midi.enabled"),
                         (MidiSettings(virtual=False), "fb.yaml:6: the feedback section has no port to send to"),
                         (MidiSettings(virtual=False, feedback_connect=["LPX"]), None)):
        settings = Settings(midi=midi)
        limits = lim.Limits.from_settings(settings, lim.caps_from_settings(settings))
        found = preflight.check_mapping(mapper, settings, limits)
        assert found.errors == []
        got = [w for w in found.warnings if "feedback" in w]
        assert got == ([] if wanted is None else [got[0]]) and (wanted is None or got[0].startswith(wanted)), got


def test_the_midi_input_never_connects_the_feedback_output():
    """Its LED note-ons fed back into the input would play the pads: a `midi.connect` name that also
    matches livegen's own feedback output (JACK: `<port_name>_out:midi_out`) skips it."""
    from livegen.control.midi import MidiInput
    from livegen.mapping import MidiEvent

    midi = MidiInput(None, lambda e: None, MidiEvent, port_name="lgx", connect=["lgx"])
    assert midi._match("lgx", ["lgx_out:midi_out", "lgx-keys:out"]) == "lgx-keys:out"
    assert midi._match("midi_out", ["lgx_out:midi_out"]) is None


def test_a_reload_follows_the_new_section_and_its_ports():
    out = FakeOut()
    current = [spec()]
    fb = Feedback(lambda: current[0], lambda s: out, lambda s: ["from-settings", *s.connect])
    fb.open()
    wait_until(lambda: len(out.messages) == 4)
    current[0] = spec(BASE.replace("  pads:", "  connect: [LPX]\n  pads:").replace("idle: 0", "idle: 1"))
    fb.on_slot(0, SlotState.IDLE, 0.0)  # any wake; the thread also looks once a second
    wait_until(lambda: len(out.messages) == 8)
    assert {m for _, m in out.messages[4:]} == {(0x99, 36, 1), (0x99, 37, 1), (0xB0, 1, 1), (0xB0, 2, 1)}
    assert out.wanted == [["from-settings", "LPX"]]
    current[0] = None  # the section was removed: its LEDs are switched off
    fb.on_slot(0, SlotState.IDLE, 0.0)
    wait_until(lambda: len(out.messages) == 12)
    assert {m for _, m in out.messages[8:]} == {(0x99, 36, 0), (0x99, 37, 0), (0xB0, 1, 0), (0xB0, 2, 0)}
    fb.close()
