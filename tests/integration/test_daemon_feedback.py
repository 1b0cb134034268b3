"""Controller feedback from the real daemon (JACK dummy, tiny model) to a JACK MIDI input in
another process (``jack_midi_dump``, as a controller's LED input would be).

The mapping's feedback section names the recorder's port, which appears after the daemon started:
the daemon connects it within a second and sends every LED's state. A pad hit over JACK MIDI and
one over OSC each light their LEDs (a note and a CC group) through queued, rendering, playing and
back to idle, in order, with the documented bytes; a flood of changes does not flood the port; a
recorder that goes away and comes back under the same name is connected again and gets every LED.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import require_or_skip
from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

MIDI_NAME = "lgfb"
RECORDER = "lgfbrec"
OUT_PORT = f"{MIDI_NAME}_out:midi_out"

MAPPING_TEMPLATE = """\
name: feedback
params:
  prompt: test tone
  seconds: 0.1
  steps: 2
  launch: now
midi:
  - note: 60-61
    action: generate
    prompt: "midi pad {{pad}}"
    seconds: 0.1
osc:
  - address: /test/pad/{{pad}}
    action: generate
    prompt: "osc pad {{pad}}"
    seconds: 0.1
feedback:
  connect: ["{RECORDER}:input"]
  pads:
    - note: 60-61            # slot 0: note 60, slot 1: note 61
      channel: 1
    - cc: 20-21
      channel: 5
  states:
    idle: {{value: 0}}
    queued: {{value: 10}}
    rendering: {{value: 20, channel: 3}}
    cached: {{value: 40}}
    playing: {{value: 50, channel: 2}}
"""
MAPPING = MAPPING_TEMPLATE.format(RECORDER=RECORDER)

# what each state sends to note 60+slot (channel 1 = status 0x90; 3 -> 0x92; 2 -> 0x91) and cc 20+slot
NOTE = {"idle": (0x90, 0), "queued": (0x90, 10), "rendering": (0x92, 20), "cached": (0x90, 40),
        "playing": (0x91, 50)}
CC = {"idle": (0xB4, 0), "queued": (0xB4, 10), "rendering": (0xB2, 20), "cached": (0xB4, 40), "playing": (0xB1, 50)}
SEQUENCE = ("queued", "rendering", "playing", "idle")
IDLE_LOOKS = [(0x90, 60, 0), (0x90, 61, 0), (0xB4, 20, 0), (0xB4, 21, 0)]

NOTE_SENDER = r"""
import sys, time, mido
be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
out = be.open_output(sys.argv[1])
time.sleep(0.3)
out.send(mido.Message("note_on", channel=0, note=int(sys.argv[2]), velocity=100))
time.sleep(0.05)
out.send(mido.Message("note_off", channel=0, note=int(sys.argv[2]), velocity=0))
time.sleep(0.3)
out.close()
"""

LINE = re.compile(r"^\s*\d+:\s+((?:[0-9a-f]{2}\s?)+)")


class MidiRecorder:
    """``jack_midi_dump`` in its own process: every message its input receives, in order."""

    def __init__(self, name: str = RECORDER) -> None:
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen(["stdbuf", "-oL", "jack_midi_dump", "-a", name], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.messages: list[tuple[int, ...]] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = LINE.match(line)
            with self._cond:
                self.lines.append(line.rstrip())
                if m:
                    self.messages.append(tuple(int(b, 16) for b in m.group(1).split()))
                    self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait(self, done, since: int = 0, timeout: float = 30.0) -> list[tuple[int, ...]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.messages[since:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the recorder did not get what was expected in {timeout} s; got "
                                         f"{[' '.join(f'{b:02x}' for b in m) for m in self.messages[since:]]}")
                self._cond.wait(left)
            return list(self.messages[since:])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def jack_ports() -> list[str]:
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    return subprocess.run(["jack_lsp"], capture_output=True, text=True, env=env, timeout=15).stdout.split()


def wait_for_port(name: str, present: bool = True, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (name in jack_ports()) != present:
        if time.monotonic() > deadline:
            raise AssertionError(f"JACK port {name} {'did not appear' if present else 'stayed'}")
        time.sleep(0.1)


def led(messages: list[tuple[int, ...]], kind: str, number: int) -> list[tuple[int, ...]]:
    high = 0x90 if kind == "note" else 0xB0
    return [m for m in messages if len(m) == 3 and m[0] & 0xF0 == high and m[1] == number]


def expected(table: dict[str, tuple[int, int]], number: int, states=SEQUENCE) -> list[tuple[int, ...]]:
    return [(table[s][0], number, table[s][1]) for s in states]


@pytest.fixture(scope="module")
def fb_daemon(jack_server, tiny_model, tmp_path_factory):
    for tool in ("jack_midi_dump", "jack_lsp", "stdbuf"):
        if shutil.which(tool) is None:
            require_or_skip("LIVEGEN_REQUIRE_REALTIME", f"{tool} is not installed (jack-tools, coreutils)")
    d = start_daemon(tmp_path_factory.mktemp("feedback"), tiny_model, midi_port=MIDI_NAME, mapping_text=MAPPING)
    try:
        yield d
    finally:
        stop_daemon(d)


@pytest.fixture(scope="module")
def recorder(fb_daemon):
    wait_for_port(OUT_PORT)
    rec = MidiRecorder()
    try:
        yield rec
    finally:
        rec.close()


def hit_over_jack_midi(note: int) -> None:
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    proc = subprocess.run([sys.executable, "-c", NOTE_SENDER, f"{MIDI_NAME}:midi_in", str(note)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_late_controller_is_connected_and_gets_every_led(fb_daemon, recorder):
    got = recorder.wait(lambda ms: all(m in ms for m in IDLE_LOOKS), timeout=10)
    assert sorted(got[:4]) == sorted(IDLE_LOOKS), got
    assert "MIDI feedback connected to 'lgfbrec:input'" in fb_daemon.log_text()
    client = OscClient()
    try:
        fb = fb_daemon.query_status(client)["feedback"]
    finally:
        client.close()
    assert fb["ports"] == [OUT_PORT, f"{RECORDER}:input"] and fb["sent"] >= 4 and fb["problem"] is None, fb


@pytest.mark.parametrize("how", ["jack_midi", "osc"])
def test_a_pad_hit_lights_its_leds_through_every_state_in_order(fb_daemon, recorder, how):
    slot = 0 if how == "jack_midi" else 1
    # connected: the idle looks came (both LEDs, so that none of them arrives after the mark)
    recorder.wait(lambda ms: led(ms, "note", 60 + slot) and led(ms, "cc", 20 + slot), timeout=10)
    mark = recorder.mark()
    status = fb_daemon.status.mark()
    if how == "jack_midi":
        hit_over_jack_midi(60 + slot)
    else:
        client = OscClient()
        try:
            client.send(fb_daemon.port, f"/test/pad/{slot}")
        finally:
            client.close()
    fb_daemon.status.wait("/livegen/done", status, timeout=120)
    want_note, want_cc = expected(NOTE, 60 + slot), expected(CC, 20 + slot)
    got = recorder.wait(lambda ms: led(ms, "note", 60 + slot)[-1:] == want_note[-1:] and
                        led(ms, "cc", 20 + slot)[-1:] == want_cc[-1:], mark, timeout=20)
    assert led(got, "note", 60 + slot) == want_note, got
    assert led(got, "cc", 20 + slot) == want_cc, got
    other = 1 - slot  # the other pad's LEDs were left alone
    assert not led(got, "note", 60 + other) and not led(got, "cc", 20 + other), got
    # the same order as the slot states pushed over OSC
    pushed = [m.params[1] for m in fb_daemon.status.since(status) if m.address == "/livegen/slot" and
              m.params[0] == slot]
    assert [s for i, s in enumerate(pushed) if i == 0 or pushed[i - 1] != s] == list(SEQUENCE), pushed


def test_a_controller_that_comes_back_is_connected_again_and_gets_every_led(fb_daemon, recorder):
    recorder.close()
    wait_for_port(f"{RECORDER}:input", present=False)
    time.sleep(1.5)  # the daemon looks once a second: it sees the port gone
    again = MidiRecorder()
    try:
        got = again.wait(lambda ms: all(m in ms for m in IDLE_LOOKS), timeout=10)
        assert sorted(got[:4]) == sorted(IDLE_LOOKS), got
        assert "MIDI feedback port 'lgfbrec:input' is connected again." in fb_daemon.log_text()
    finally:
        again.close()


def test_a_mapping_reload_with_new_colours_relights_every_led(fb_daemon):
    """The feedback follows the mapping file: a new idle look goes to every LED (the controller that
    came back in the previous test is connected)."""
    rec = MidiRecorder()
    try:
        rec.wait(lambda ms: all(m in ms for m in IDLE_LOOKS), timeout=10)
        mark = rec.mark()
        text = fb_daemon.mapping.read_text()
        fb_daemon.mapping.write_text(text.replace("idle: {value: 0}", "idle: {value: 3}"))
        new = [(m[0], m[1], 3) for m in IDLE_LOOKS]
        got = rec.wait(lambda ms: all(m in ms for m in new), mark, timeout=15)
        assert sorted(got) == sorted(new), got  # just the changed looks, once each
    finally:
        rec.close()


def changes(states: list[str]) -> list[str]:
    return [x for i, x in enumerate(states) if i == 0 or states[i - 1] != x]


def test_pre_rendered_pads_show_cached_and_the_leds_follow_every_state(jack_server, tiny_model, tmp_path_factory):
    """With pre-rendering the pads light 'cached' when variations are ready; a hit plays one
    (playing) and the pad goes back by idle to cached as the cache refills: the LED messages are
    exactly the slot states pushed over OSC, in order."""
    name = "lgfbpre"
    d = start_daemon(tmp_path_factory.mktemp("feedback-pre"), tiny_model, midi_port=name, prerender=True,
                     mapping_text=MAPPING_TEMPLATE.format(RECORDER=f"{name}rec"))
    rec = None
    try:
        wait_for_port(f"{name}_out:midi_out")
        status = d.status.mark()
        rec = MidiRecorder(f"{name}rec")
        rec.wait(lambda ms: (0x90, 60, 40) in ms and (0xB4, 20, 40) in ms, timeout=120)  # a variation is ready
        mark = rec.mark()
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        proc = subprocess.run([sys.executable, "-c", NOTE_SENDER, f"{name}:midi_in", "60"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        rec.wait(lambda ms: (0x91, 60, 50) in ms and led(ms, "note", 60)[-1:] == [(0x90, 60, 40)] and
                 led(ms, "cc", 20)[-1:] == [(0xB4, 20, 40)], mark, timeout=120)
        time.sleep(0.5)  # anything after the last change
        got = rec.messages[mark:]
        pushed = changes([m.params[1] for m in d.status.since(status)
                          if m.address == "/livegen/slot" and m.params[0] == 0])
        states = pushed[pushed.index("cached") + 1:]  # after the state the recorder saw before the hit
        assert "playing" in states and states[-1] == "cached", pushed
        assert led(got, "note", 60) == expected(NOTE, 60, states), (got, pushed)
        assert led(got, "cc", 20) == expected(CC, 20, states), (got, pushed)
        # at shutdown every LED goes dark (the idle look) before the port closes
        mark = rec.mark()
        rc, _ = stop_daemon(d)
        assert rc == 0
        got = rec.wait(lambda ms: all(m in ms for m in IDLE_LOOKS), mark, timeout=5)
        assert led(got, "note", 60)[-1] == (0x90, 60, 0) and led(got, "cc", 20)[-1] == (0xB4, 20, 0), got
    finally:
        if rec is not None:
            rec.close()
        stop_daemon(d)
