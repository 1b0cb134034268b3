"""MIDI API choice, message conversion, clock tempo, and a real JACK MIDI round trip."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import mido
import pytest

from livegen.control.midi import MidiInput, MidiUnavailable, choose_api, split_messages, to_event
from livegen.mapping import MidiEvent

BOTH = ["LINUX_ALSA", "UNIX_JACK"]


def test_api_per_platform_with_jack_fallback_and_override():
    assert choose_api(platform="darwin", compiled=["MACOSX_CORE"]) == "MACOSX_CORE"
    assert choose_api(platform="win32", compiled=["WINDOWS_MM"]) == "WINDOWS_MM"
    assert choose_api(platform="linux", compiled=BOTH, alsa_seq=True, jack_running=True) == "LINUX_ALSA"
    assert choose_api(platform="linux", compiled=BOTH, alsa_seq=False, jack_running=True) == "UNIX_JACK"
    with pytest.raises(MidiUnavailable, match="ALSA sequencer .* missing and no JACK server"):
        choose_api(platform="linux", compiled=BOTH, alsa_seq=False, jack_running=False)
    assert choose_api("jack", platform="linux", compiled=BOTH, alsa_seq=True) == "UNIX_JACK"
    with pytest.raises(MidiUnavailable, match="not compiled"):
        choose_api("coremidi", platform="linux", compiled=BOTH)


def test_messages_become_mapper_events():
    ev = to_event(mido.Message("note_on", channel=0, note=60, velocity=100), MidiEvent, 1.5)
    assert ev == MidiEvent("note_on", 0, note=60, velocity=100, time=1.5)
    ev = to_event(mido.Message("control_change", channel=1, control=74, value=64), MidiEvent)
    assert (ev.type, ev.channel, ev.control, ev.value) == ("control_change", 1, 74, 64)
    ev = to_event(mido.Message("program_change", channel=0, program=5), MidiEvent)
    assert (ev.type, ev.program) == ("program_change", 5)
    assert to_event(mido.Message("clock"), MidiEvent, 2.0) == MidiEvent("clock", time=2.0)
    assert to_event(mido.Message("continue"), MidiEvent, 3.0) == MidiEvent("continue", time=3.0)
    assert to_event(mido.Message("songpos", pos=66), MidiEvent, 4.0) == MidiEvent("songpos", value=66, time=4.0)
    assert to_event(mido.Message("pitchwheel", pitch=100), MidiEvent) is None
    assert to_event(mido.Message("sysex", data=[1, 2]), MidiEvent) is None


SENDER = r"""
import sys, time, mido
be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
out = be.open_output(sys.argv[1])
out.send(mido.Message("note_on", channel=0, note=60, velocity=100))
out.send(mido.Message("control_change", channel=0, control=1, value=64))
out.send(mido.Message("program_change", channel=0, program=3))
t0 = time.perf_counter()
for i in range(1, 31):
    out.send(mido.Message("clock"))
    time.sleep(max(0.0, t0 + i * 60.0 / (150 * 24) - time.perf_counter()))
out.send(mido.Message("note_off", channel=0, note=60, velocity=0))
time.sleep(0.2)
out.close()
"""


@pytest.mark.realtime
def test_jack_midi_from_another_process(jack_server):
    async def main():
        loop = asyncio.get_running_loop()
        events: list = []
        clocks: list = []
        finished = asyncio.Event()

        def on_event(ev):
            if ev.type == "clock":
                clocks.append(ev.time)
                return
            events.append(ev)
            if ev.type == "note_off":
                finished.set()

        midi = MidiInput(loop, on_event, MidiEvent, port_name="lgunit", api="jack")
        assert midi.open() == ["lgunit:midi_in"]
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, "lgunit:midi_in", env=env,
                                                    stderr=subprocess.PIPE)
        try:
            await asyncio.wait_for(finished.wait(), 30)
        finally:
            _, err = await proc.communicate()
            midi.close()
        assert proc.returncode == 0, err.decode()
        # a note_off may arrive as note_on with velocity 0 on some APIs: the mapper treats both alike
        kinds = [e.type if e.velocity or e.type != "note_on" else "note_off" for e in events]
        assert kinds == ["note_on", "control_change", "program_change", "note_off"]
        assert events[1].value == 64 and events[2].program == 3
        # clock pulses arrive stamped: 30 pulses at 150 bpm span about 29 * 16.7 ms
        assert len(clocks) == 30
        bpm = 60.0 / ((clocks[-1] - clocks[0]) / 29 * 24)
        assert bpm == pytest.approx(150, rel=0.1)

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.realtime
def test_connects_to_named_ports_and_warns_about_missing_ones(jack_server):
    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        events: list = []

        def on_event(ev):
            events.append(ev)
            got.set()

        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
        source = backend.open_output("src", virtual=True, client_name="lgsource")
        midi = MidiInput(loop, on_event, MidiEvent, virtual=False, connect=["lgsource", "no-such-port"],
                         api="jack")
        try:
            names = midi.open()
            assert names == ["lgsource:src"]
            assert any("'no-such-port' not found" in w for w in midi.warnings)
            source.send(mido.Message("control_change", channel=2, control=7, value=99))
            await asyncio.wait_for(got.wait(), 10)
        finally:
            midi.close()
            source.close()
        assert events == [MidiEvent("control_change", 2, control=7, value=99, time=events[0].time)]

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------------------------------
# Broken input: unterminated SysEx, running status, stray and undefined bytes
# ---------------------------------------------------------------------------------------------
def test_an_unterminated_sysex_ends_at_the_next_status_byte():
    # the merged packet rtmidi's JACK input delivered after `F0 01 02` and note-ons
    merged = [0xF0, 1, 2] + [0x90, 60, 100] * 3 + [0xF0, 5, 0xF7]
    assert split_messages(merged) == [[0x90, 60, 100]] * 3 + [[0xF0, 5, 0xF7]]
    assert split_messages([0xF0, 1, 2]) == []  # never ended: dropped
    assert split_messages([0xF0, 1, 2, 0xF7]) == [[0xF0, 1, 2, 0xF7]]
    assert split_messages([0xF0, 1, 2, 0xF7, 0xF7]) == [[0xF0, 1, 2, 0xF7]]  # a lone F7 is nothing


def test_real_time_bytes_come_out_wherever_they_are():
    assert split_messages([0xF0, 1, 0xF8, 2, 0xF7]) == [[0xF8], [0xF0, 1, 2, 0xF7]]
    assert split_messages([0x90, 0xF8, 60, 0xFE, 100]) == [[0xF8], [0xFE], [0x90, 60, 100]]
    assert split_messages([0xF9, 0xFD, 0xFA, 0xFC]) == [[0xFA], [0xFC]]  # undefined ones dropped


def test_running_status_within_a_packet_and_malformed_bytes_dropped():
    assert split_messages([0x90, 60, 100, 61, 100, 62, 0]) == [[0x90, 60, 100], [0x90, 61, 100], [0x90, 62, 0]]
    assert split_messages([0xC0, 5, 6]) == [[0xC0, 5], [0xC0, 6]]
    assert split_messages([60, 100, 0x80]) == []  # stray data, then an incomplete note-off
    assert split_messages([0x90, 0x85, 0x40, 0x40]) == [[0x85, 0x40, 0x40]]  # status in a data slot
    assert split_messages([0xF4, 1, 0xF5, 2, 3]) == []  # undefined status: its data are stray
    assert split_messages([0xF2, 1, 2, 3]) == [[0xF2, 1, 2]]  # system common cancels running status
    assert split_messages([0xB0, 1, 2, 0xF0, 3, 4]) == [[0xB0, 1, 2]]  # SysEx cancels it too
    assert split_messages([0xF6, 0xF3, 7]) == [[0xF6], [0xF3, 7]]


SYSEX_THEN_NOTES = r"""
import sys, time, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="lgsysex")
names = out.get_ports()
out.open_port(names.index(sys.argv[1]))
time.sleep(0.2)
out.send_message([0xF0, 0x01, 0x02])  # never terminated
for i in range(100):
    out.send_message([0x90, i, 100])
    time.sleep(0.003)
time.sleep(0.3)
out.close_port()
"""


async def _collect_until(events: list, count: int, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(events) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


@pytest.mark.realtime
def test_an_unterminated_sysex_does_not_swallow_the_next_100_note_ons(jack_server):
    async def main():
        loop = asyncio.get_running_loop()
        events: list = []
        midi = MidiInput(loop, events.append, MidiEvent, port_name="lgdeaf", api="jack")
        assert midi.open() == ["lgdeaf:midi_in"]
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        t0 = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SYSEX_THEN_NOTES, "lgdeaf:midi_in",
                                                        env=env, stderr=subprocess.PIPE)
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            await _collect_until(events, 100, 5)
        finally:
            midi.close()
        notes = [e.note for e in events if e.type == "note_on"]
        assert notes == list(range(100))
        # stamped at arrival, in order, while they were sent (100 notes 3 ms apart)
        times = [e.time for e in events]
        assert times == sorted(times) and times[0] > t0 and times[-1] - times[0] < 1.0
        assert midi.received == 100

    asyncio.run(asyncio.wait_for(main(), 60))


SOURCE = r"""
import sys, time, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="lgsrc")
out.open_virtual_port("out")
print("open", flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    out.send_message([0xB0, 7, int(line)])
out.close_port()
"""


class Source:
    """A JACK MIDI source client `lgsrc:out` in its own process, sending one CC per value."""

    def __init__(self) -> None:
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen([sys.executable, "-c", SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        assert self.proc.stdout.readline() == "open\n"

    def send(self, value: int) -> None:
        self.proc.stdin.write(f"{value}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait(10)


@pytest.mark.realtime
@pytest.mark.parametrize("gap", [0.1, 1.5], ids=["restart-between-two-looks", "away-for-a-while"])
def test_a_named_source_that_restarts_is_connected_again(jack_server, gap):
    async def main():
        loop = asyncio.get_running_loop()
        values: list[int] = []
        changes: list[str] = []
        midi = MidiInput(loop, lambda e: values.append(e.value), MidiEvent, virtual=False, port_name="lgre",
                         connect=["lgsrc"], api="jack", on_change=changes.append)
        src = Source()
        try:
            assert midi.open() == ["lgsrc:out"]
            src.send(1)
            await _collect_until(values, 1, 5)
            src.close()
            await asyncio.sleep(gap)
            src = Source()
            await asyncio.sleep(0.2)
            for v in (2, 3, 4):  # sent before the reconnect: lost, as with any unplugged cable
                src.send(v)
            await asyncio.sleep(2.5)  # the connections are checked every second
            src.send(5)
            for _ in range(250):
                if 5 in values:
                    break
                await asyncio.sleep(0.02)
            names = list(midi.port_names)  # now: the source closes below and the next look drops it
        finally:
            src.close()
            midi.close()
        assert values[0] == 1 and values[-1] == 5
        assert changes[-1] == "MIDI port 'lgsrc:out' is connected again."
        gone = "MIDI port 'lgsrc:out' went away; livegen connects it again when it comes back."
        if gap > 1.0:  # seen gone: reported as gone first
            assert changes[0] == gone
        # a look while the old client was closing may add a connect and a loss before the last one
        assert set(changes) <= {gone, "MIDI port 'lgsrc:out' is connected again."}
        assert midi.reconnects == changes.count("MIDI port 'lgsrc:out' is connected again.") >= 1
        assert names == ["lgsrc:out"]

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.realtime
def test_a_named_source_that_appears_later_is_connected(jack_server):
    async def main():
        loop = asyncio.get_running_loop()
        values: list[int] = []
        changes: list[str] = []
        midi = MidiInput(loop, lambda e: values.append(e.value), MidiEvent, virtual=False, port_name="lglate",
                         connect=["lgsrc"], api="jack", on_change=changes.append)
        assert midi.open() == []
        assert any("'lgsrc' not found" in w and "connects it when it appears" in w for w in midi.warnings)
        src = Source()
        try:
            await asyncio.sleep(1.5)
            src.send(9)
            await _collect_until(values, 1, 5)
        finally:
            src.close()
            midi.close()
        assert values == [9]
        assert changes == ["MIDI port 'lgsrc:out' appeared and is connected."]

    asyncio.run(asyncio.wait_for(main(), 60))
