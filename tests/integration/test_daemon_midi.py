"""The real daemon driven over JACK MIDI: mido from another process, and jack_midiseq."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import MIDI_PORT

pytestmark = pytest.mark.realtime

SENDER = r"""
import sys, time, mido
be = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
out = be.open_output(sys.argv[1])
out.send(mido.Message("control_change", channel=0, control=1, value=127))  # steps -> 8
time.sleep(0.1)
out.send(mido.Message("note_on", channel=0, note=61, velocity=100))        # pad 1
out.send(mido.Message("note_off", channel=0, note=61, velocity=0))
time.sleep(0.2)
out.close()
"""


def test_notes_and_cc_from_another_process(daemon, client):
    status = daemon.status
    mark = status.mark()
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    proc = subprocess.run([sys.executable, "-c", SENDER, f"{MIDI_PORT}:midi_in"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ack = status.wait("/livegen/ack", mark, timeout=20, where=lambda p: p[1] == "queued: midi pad 1")
    job = ack.params[0]
    status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
    # the CC set steps to 8 before the note: 8 progress steps were pushed
    steps = [m.params for m in status.since(mark) if m.address == "/livegen/progress" and m.params[0] == job]
    assert steps[-1] == [job, 8, 8]
    assert daemon.query_status(client)["midi"]["received"] >= 3


def test_jack_midiseq_notes(daemon):
    status = daemon.status
    mark = status.mark()
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    # note 60 (pad 0) every 22050 frames, 11025 frames long
    seq = subprocess.Popen(["jack_midiseq", "lgseq", "22050", "0", "60", "11025"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(["jack_connect", "lgseq:out", f"{MIDI_PORT}:midi_in"], env=env,
                               capture_output=True, timeout=10)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.2)
        ack = status.wait("/livegen/ack", mark, timeout=20, where=lambda p: p[1] == "queued: midi pad 0")
    finally:
        seq.send_signal(signal.SIGTERM)
        seq.wait(10)
    status.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
