"""The real daemon's MIDI input under broken MIDI over JACK: an unterminated SysEx followed by
100 note-ons from another process (all arrive), and a reduced run of the MIDI fuzz."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.realtime

# notes the integration mapping does not act on (it maps 60-61 and CC 1)
NOTES = [n for n in range(102) if n not in (60, 61)]
assert len(NOTES) == 100

SYSEX_THEN_NOTES = r"""
import sys, time, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="lgfault")
names = out.get_ports()
out.open_port(names.index(sys.argv[1]))
time.sleep(0.2)
out.send_message([0xF0, 0x01, 0x02])  # never terminated
for note in map(int, sys.argv[2].split(",")):
    out.send_message([0x90, note, 100])
    time.sleep(0.003)
time.sleep(0.3)
out.close_port()
"""


def input_port(daemon, client) -> str:
    """The daemon's JACK input as it reports it (JACK renames a client whose name is taken)."""
    ports = daemon.query_status(client)["midi"]["ports"]
    assert ports and ports[0].endswith(":midi_in"), ports
    return ports[0]


def received(daemon, client) -> int:
    return daemon.query_status(client)["midi"]["received"]


def wait_received(daemon, client, target: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = received(daemon, client)
        if got >= target or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_an_unterminated_sysex_does_not_make_the_daemon_deaf(daemon, client):
    before = received(daemon, client)
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    proc = subprocess.run([sys.executable, "-c", SYSEX_THEN_NOTES, input_port(daemon, client),
                           ",".join(map(str, NOTES))], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert wait_received(daemon, client, before + 100) - before == 100
    assert daemon.alive()


def test_midi_fuzz_loses_nothing_and_the_daemon_keeps_running(daemon, client):
    env = dict(os.environ, JACK_NO_START_SERVER="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tests.soak.midi_fuzz", "--events", "1500", "--seed", "7",
                           "--port", input_port(daemon, client), "--osc", str(daemon.port), "--avoid", "1,60,61"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the daemon received" in proc.stdout
    assert daemon.alive()
    # still hears an ordinary note afterwards
    before = received(daemon, client)
    proc = subprocess.run([sys.executable, "-c", SYSEX_THEN_NOTES, input_port(daemon, client), "100"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert wait_received(daemon, client, before + 1) - before == 1


def test_midi_fuzz_to_livegens_input_counts_every_marker(jack_server):
    env = dict(os.environ, JACK_NO_START_SERVER="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tests.soak.midi_fuzz", "--events", "1500", "--seed", "11"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "received 500 markers" in proc.stdout
