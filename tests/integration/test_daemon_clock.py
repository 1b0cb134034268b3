"""The real daemon following a MIDI clock sent over JACK MIDI by another process.

The sender plays a host's transport on a fixed schedule (monotonic times, which both processes
share): 2 beats of clock at 120 bpm with the transport stopped, Start, 14 beats at 120, then
Stop, a Song Position Pointer to beat 16 and Continue, 16 beats at 128, and then the clock just
ends (a cable pulled). The daemon must report a steady tempo on each steady stretch, follow the
change, count the song position from the ticks, and report the loss.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

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
out.send(mido.Message("songpos", pos=64))
out.send(mido.Message("continue"))
ticks(128.0, 16)
print(repr(t))
out.close()
"""

T_120 = 16 * 0.5  # seconds of 120 bpm (2 + 14 beats)
T_128 = 16 * 60 / 128


@pytest.fixture(scope="module")
def clock_daemon(jack_server, tiny_model, tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("clock"), tiny_model, mapping_text=MAPPING, midi_port=PORT,
                     folder=False)
    yield d
    stop_daemon(d)


def test_the_daemon_follows_a_host_clock(clock_daemon):
    d = clock_daemon
    status = d.status
    client = OscClient()
    try:
        first = d.query_status(client)
        assert first["tempo"]["source"] == "midi_clock"
        assert "tempo source: midi_clock" in d.log_text()
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        t0 = time.monotonic() + 1.5
        sender = subprocess.Popen([sys.executable, "-c", SENDER, f"{PORT}:midi_in", repr(t0)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            samples: dict[str, list[float]] = {"120": [], "128": []}
            windows = {"120": (t0 + 5.5, t0 + T_120 - 0.3), "128": (t0 + T_120 + 5.5, t0 + T_120 + T_128 - 0.3)}
            marks: list[tuple[float, int]] = []
            for name, (a, b) in windows.items():
                for k in range(4):
                    at = a + k * (b - a) / 3
                    while time.monotonic() < at:
                        time.sleep(0.01)
                    marks.append((time.monotonic(), status.mark()))
                    samples[name].append(d.query_status(client)["tempo"]["bpm"])
            out, err = sender.communicate(timeout=60)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait(10)
        assert sender.returncode == 0, err
        last_tick = float(out.strip())
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
        assert st["clock"]["position_beats"] == 32.0  # SPP 64 sixteenths = beat 16, then 16 beats of ticks
        assert st["clock"]["restarts"] == 2 and st["clock"]["losses"] == 1
        assert "The MIDI clock stopped arriving" in d.log_text()
        # /livegen/get bpm answers the tempo in force
        mark = client.mark()
        client.send(d.port, "/livegen/get", "bpm")
        answer = client.wait("/livegen/get", mark, timeout=5, where=lambda p: p[0] == "bpm")
        assert answer.params[1] == pytest.approx(st["bpm"], abs=1e-3)  # an OSC float32
    finally:
        client.close()
