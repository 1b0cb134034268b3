"""The real daemon following a MIDI clock sent over JACK MIDI by another process.

The sender plays a host's transport on a fixed schedule (monotonic times, which both processes
share): 2 beats of clock at 120 bpm with the transport stopped, Start, 14 beats at 120, then
Stop, a Song Position Pointer to beat 16.5 and Continue, 16 beats at 128, and then the clock just
ends (a cable pulled). The daemon must report a steady tempo on each steady stretch, follow the
change, count the song position from the ticks, and report the loss. Two clips launched on
"bar", one after the Start and one after the Song Position jump (to beat 16.5, half a beat after
a bar line), are recorded on the JACK graph: each starts on a bar line of the host's grid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.integration.conftest import (
    OscClient,
    Recorder,
    portaudio_ports,
    start_daemon,
    stop_daemon,
    wait_new_ports,
)

pytestmark = pytest.mark.realtime

PORT = "lgclock"
MAPPING = """\
name: clock
params:
  prompt: test tone
  seconds: 0.1
  steps: 2
midi:
  - event: clock
    action: tempo
"""

SENDER = r"""
import sys, time, mido
t0 = float(sys.argv[2])
be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
out = be.open_output(sys.argv[1])
t = t0
def wait_until(at):
    while True:
        left = at - time.monotonic()
        if left <= 0:
            return
        time.sleep(left - 0.0015 if left > 0.002 else 0)
def ticks(bpm, beats):
    global t
    for _ in range(int(beats * 24)):
        wait_until(t)
        out.send(mido.Message("clock"))
        t += 60.0 / (24 * bpm)
ticks(120.0, 2)
out.send(mido.Message("start"))
ticks(120.0, 14)
out.send(mido.Message("stop"))
out.send(mido.Message("songpos", pos=66))
out.send(mido.Message("continue"))
ticks(128.0, 16)
print(repr(t))
out.close()
"""

T_120 = 16 * 0.5  # seconds of 120 bpm (2 + 14 beats)
T_128 = 16 * 60 / 128
# s: a MIDI tick arrives up to a JACK period late and frame_at is good to about a block; measured 0.7-4.4 ms
# on a quiet machine, up to ~25 ms with dozens of xruns from other processes (a free-running grid would be
# off by up to a bar, and the Song Position here shifts the bar lines by half a beat: 234 ms)
BAR_TOLERANCE = 0.030


def StampedRecorder(ports: list[str], seconds: float) -> Recorder:  # noqa: N802
    """The conftest recorder (it notes the monotonic time of each cycle it records)."""
    return Recorder(ports, seconds, name="lgclkrec")


def stream_clock(d, client: OscClient) -> tuple[float, int]:
    return time.monotonic(), int(d.query_status(client)["audio"]["frames"])


def lost_seconds(clock: list[tuple[float, int]]) -> float:
    """Seconds of frames the daemon's stream did not render between two looks at its clock (the
    JACK dummy driver runs 0.16 % slower than nominal; the status round trip adds ~10 ms)."""
    (t1, f1), (t2, f2) = clock
    return max(0.0, (t2 - t1) * (1 - 0.0016) - (f2 - f1) / 44100 - 0.010)


def onsets(audio: np.ndarray) -> list[int]:
    """First frames of the sounds in a recording that is exactly 0 between them."""
    loud = np.flatnonzero(np.abs(audio).max(axis=0) > 0)
    if not len(loud):
        return []
    starts = [int(loud[0])]
    starts += [int(b) for a, b in zip(loud[:-1], loud[1:], strict=True) if b - a > 4410]
    return starts


@pytest.fixture(scope="module")
def clock_daemon(jack_server, tiny_model, tmp_path_factory):
    before = portaudio_ports()
    d = start_daemon(tmp_path_factory.mktemp("clock"), tiny_model, mapping_text=MAPPING, midi_port=PORT,
                     folder=False)
    d.ports = wait_new_ports(before)
    yield d
    stop_daemon(d)


# Rerun on failure, as the bar-launch test: in CI (2026-12-02, 13 JACK xruns in the run) a machine
# stall bunched the JACK MIDI ticks after Continue, the estimator took it for a tempo change
# (131.9 bpm for two beats), restarted its window and refined 127.93 -> 127.99 inside the sampled
# stretch (0.06 > 0.05). Not fixed in livegen/tempo_clock.py yet: see issue 12's note.
@pytest.mark.flaky(reruns=2, reruns_delay=2)
def test_the_daemon_follows_a_host_clock(clock_daemon):
    d = clock_daemon
    status = d.status
    client = OscClient()
    try:
        first = d.query_status(client)
        assert first["tempo"]["source"] == "midi_clock"
        latency = float(first["audio"]["latency"])
        rec = StampedRecorder(d.ports, 22.0)
        rec.recording = True
        assert "tempo source: midi_clock" in d.log_text()
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        t0 = time.monotonic() + 1.5
        sender = subprocess.Popen([sys.executable, "-c", SENDER, f"{PORT}:midi_in", repr(t0)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            samples: dict[str, list[float]] = {"120": [], "128": []}
            windows = {"120": (t0 + 5.5, t0 + T_120 - 0.3), "128": (t0 + T_120 + 5.5, t0 + T_120 + T_128 - 0.3)}
            launches = {"120": t0 + 3.0, "128": t0 + T_120 + 2.5}
            marks: list[tuple[float, int]] = []
            stream: dict[str, list[tuple[float, int]]] = {}
            for name, (a, b) in windows.items():
                while time.monotonic() < launches[name]:
                    time.sleep(0.01)
                stream[name] = [stream_clock(d, client)]
                client.send(d.port, "/livegen/generate", "test tone", 3, 0.1)  # launch: bar (the mapping's)
                for k in range(4):
                    at = a + k * (b - a) / 3
                    while time.monotonic() < at:
                        time.sleep(0.01)
                    marks.append((time.monotonic(), status.mark()))
                    st = d.query_status(client)
                    samples[name].append(st["tempo"]["bpm"])
                    if k == 0:  # after the onset: how far the stream fell behind the wall clock since the launch
                        stream[name].append((time.monotonic(), int(st["audio"]["frames"])))
            out, err = sender.communicate(timeout=60)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait(10)
        assert sender.returncode == 0, err
        last_tick = float(out.strip())
        audio = rec.close()
        xruns = rec.xruns  # not asserted here: a shared machine can cost cycles (time_of is per cycle)
        # each clip starts on a bar line of the host's grid, the frame heard = recorded + latency
        heard = [rec.time_of(f) + latency for f in onsets(audio)]
        assert len(heard) == 2, heard
        start_tick = t0 + 1.0  # the first tick after Start: bar 1, beat 1
        cont_tick = t0 + T_120  # the first tick after Continue: beat 16.5 (half a beat after a bar line)
        bars_120 = [start_tick + 2.0 * k for k in range(8)]
        bar_128 = 4 * 60 / 128
        bars_128 = [cont_tick + 3.5 * 60 / 128 + bar_128 * k for k in range(5)]
        off_120 = min(abs(heard[0] - b) for b in bars_120)
        off_128 = min(abs(heard[1] - b) for b in bars_128)
        # xruns on a loaded machine between the re-anchor a launch used (a beat before) and its onset
        # A start frame is fixed when the clip is scheduled; cycles the daemon's stream loses after that
        # (xruns on a loaded machine: its frames fall behind the wall clock) delay the sound by as much.
        lost = {name: lost_seconds(v) for name, v in stream.items()}
        print(f"launches heard {[round(h - t0, 4) for h in heard]} s after the first tick; off the bar by "
              f"{off_120 * 1000:.1f} ms (120) and {off_128 * 1000:.1f} ms (128); latency {latency * 1000:.1f} ms; "
              f"{xruns} xruns; the stream lost {lost['120'] * 1000:.0f} and {lost['128'] * 1000:.0f} ms meanwhile")
        assert off_120 <= BAR_TOLERANCE + lost["120"]
        assert off_128 <= BAR_TOLERANCE + lost["128"]
        echoes = [m.params[1] for m in status.since(marks[0][1] - 200) if m.address == "/livegen/get"
                  and m.params[0] == "bpm"]
        print(f"status bpm samples {samples}; bpm echoes {echoes}")  # shown with pytest -s
        # steady within 0.05 bpm on each steady stretch, at the host's tempo
        for name, values in samples.items():
            assert max(values) - min(values) <= 0.05, (name, values)
            assert abs(values[0] - float(name)) <= 0.05, (name, values)
        # the echoes pushed while the 120 stretch was steady: none, or at 120
        steady = [m.params[1] for m in status.since(marks[0][1])[: marks[3][1] - marks[0][1]]
                  if m.address == "/livegen/get" and m.params[0] == "bpm"]
        assert all(abs(v - 120.0) <= 0.05 for v in steady), steady
        # the loss of the clock is pushed (an error sentence) and the position came from the ticks
        lost = status.wait("/livegen/error", marks[-1][1], timeout=5,
                           where=lambda p: "MIDI clock stopped arriving" in str(p[-1]))
        assert lost is not None
        assert time.monotonic() - last_tick < 5
        st = d.query_status(client)["tempo"]
        assert st["bpm"] == pytest.approx(128.0, abs=0.05)
        assert st["clock"]["position_beats"] == 32.5  # SPP 66 sixteenths = beat 16.5, then 16 beats of ticks
        assert st["clock"]["restarts"] == 2 and st["clock"]["losses"] == 1
        assert "The MIDI clock stopped arriving" in d.log_text()
        # /livegen/get bpm answers the tempo in force
        mark = client.mark()
        client.send(d.port, "/livegen/get", "bpm")
        answer = client.wait("/livegen/get", mark, timeout=5, where=lambda p: p[0] == "bpm")
        assert answer.params[1] == pytest.approx(st["bpm"], abs=1e-3)  # an OSC float32
    finally:
        client.close()
