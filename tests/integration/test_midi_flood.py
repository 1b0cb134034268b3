"""A MIDI flood must not cost audio: 10,000 notes/s for 10 s into the daemon's JACK MIDI input
while it plays a loop, compared with the same 10 s without the flood.

The flood comes from another process through python-rtmidi's JACK output (its JACK process
callback is C++, so the sender itself adds no Python to JACK's real-time cycle). The notes are
on channel 16 and below the mapping's pads, so none of them starts a render; the daemon's
``midi.received`` counter must grow by exactly the number sent (nothing lost below the rate JACK
delivers). JACK xruns (counted by a recorder of the test) and the daemon's underflows during the
flood must not exceed those of the quiet window before it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import (
    DAEMON_CLIENTS,
    OscClient,
    Recorder,
    portaudio_ports,
    start_daemon,
    stop_daemon,
    wait_new_ports,
)
from tests.jack_log import JackLog

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

PORT = "lgflood"
RATE = 10_000  # note messages per second
SECONDS = 10.0

MAPPING = """\
name: flood
params:
  prompt: flood tone
  seconds: 0.3
  steps: 2
  launch: now
midi:
  - note: 100-101
    action: generate
    prompt: "flood pad {pad}"
osc:
  - address: /flood/loop
    action: generate
    prompt: "flood loop"
    slot: 0
    loop: true
"""

# Sends RATE note messages per second for SECONDS (note-on / note-off pairs, channel 16, notes
# 0-59) in 1 ms batches, paced by the monotonic clock; prints how many it sent.
SENDER = r"""
import sys, time, rtmidi
port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="lgflooder")
dropped = []  # rtmidi reports a message its JACK ring had no room for (JACK's cycles stopped)
out.set_error_callback(lambda kind, text, data: dropped.append(text))
names = out.get_ports()
out.open_port(names.index(port))
time.sleep(0.3)
sent = 0
total = int(rate * seconds)
t0 = time.monotonic()
while sent < total:
    due = min(total, int((time.monotonic() - t0) * rate) + 1)
    while sent < due:
        note = sent // 2 % 60
        out.send_message([0x9F if sent % 2 == 0 else 0x8F, note, 64])
        sent += 1
    time.sleep(0.001)
elapsed = time.monotonic() - t0
time.sleep(0.5)
out.close_port()
out.delete()
print(sent, f"{elapsed:.3f}", len(dropped))
if dropped:
    print(dropped[0], file=sys.stderr)
"""


def _window(daemon, client: OscClient, recorder: Recorder, jack_log: JackLog, seconds: float, flood: bool) -> dict:
    before = daemon.query_status(client)
    xruns0 = recorder.xruns
    log_mark = jack_log.mark()
    sent = dropped = 0
    if flood:
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        proc = subprocess.run([sys.executable, "-c", SENDER, f"{PORT}:midi_in", str(RATE), str(seconds)],
                              env=env, capture_output=True, text=True, timeout=seconds + 60)
        assert proc.returncode == 0, proc.stderr
        sent_s, elapsed_s, dropped_s = proc.stdout.split()
        sent, elapsed, dropped = int(sent_s), float(elapsed_s), int(dropped_s)
        assert elapsed < seconds * 1.2, f"the sender fell behind: {sent} messages in {elapsed:.1f} s"
    else:
        time.sleep(seconds + 0.8)
    time.sleep(0.5)  # the last messages reach the loop
    after = daemon.query_status(client)
    report = jack_log.since(log_mark, (*DAEMON_CLIENTS, PORT, f"{PORT}_guard", f"{PORT}_list"), recorder.xruns - xruns0)
    return {
        "sent": sent,
        "dropped_by_sender": dropped,
        "received": after["midi"]["received"] - before["midi"]["received"],
        "underflows": after["audio"]["underflows"] - before["audio"]["underflows"],
        "xruns": recorder.xruns - xruns0,
        "daemon_xruns": report.daemon_xruns,
        "report": str(report),
        "playing": after["audio"].get("slots_playing", []),
    }


@pytest.mark.flaky(reruns=2, reruns_delay=2)  # the existing policy for strict real-time tests
def test_a_midi_flood_costs_no_audio_and_loses_no_note(jack_server, tiny_model, tmp_path, jack_log):
    before_ports = portaudio_ports()
    daemon = start_daemon(tmp_path / "flood", tiny_model, midi_port=PORT, folder=False, mapping_text=MAPPING)
    client = OscClient()
    recorder = None
    try:
        ports = wait_new_ports(before_ports)
        mark = client.mark()
        client.send(daemon.port, "/flood/loop")
        job = client.wait("/livegen/ack", mark, timeout=20).params[0]
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
        time.sleep(0.5)
        recorder = Recorder(ports, seconds=1.0, name="lgfloodrec")  # counts xruns; records nothing
        time.sleep(0.5)  # a fresh connection may add an xrun; count after it
        recorder.recording = True
        quiet = _window(daemon, client, recorder, jack_log, SECONDS, flood=False)
        flood = _window(daemon, client, recorder, jack_log, SECONDS, flood=True)
        print(f"quiet: {quiet}\nflood: {flood}")
        assert 0 in quiet["playing"] and 0 in flood["playing"], "the loop was not playing throughout"
        assert flood["sent"] == int(RATE * SECONDS)
        # every message JACK carried reached the daemon; the sender's own ring (it reports an
        # overflow) can only fill while JACK's cycles stop
        # while JACK loses cycles (xruns) it loses their MIDI too; without any, nothing may be lost
        if flood["xruns"] == 0:
            assert flood["received"] == flood["sent"] - flood["dropped_by_sender"], (
                f"JACK carried {flood['sent'] - flood['dropped_by_sender']} MIDI messages, the daemon received "
                f"{flood['received']}")
            assert flood["dropped_by_sender"] == 0, flood
        # the flood costs no audio: no cycle lost by the daemon's own clients in either window (the
        # server's log says whose callback overran: tests/jack_log.py), and no more underflows than
        # cycles the machine lost (each is flagged to the daemon's stream too)
        assert quiet["daemon_xruns"] == 0 and flood["daemon_xruns"] == 0, (quiet, flood)
        for window in (quiet, flood):
            assert window["underflows"] <= (window["xruns"] if jack_log.known else 0), (quiet, flood)
        assert daemon.alive()
    finally:
        if recorder is not None:
            recorder.close()
        client.close()
        stop_daemon(daemon)
