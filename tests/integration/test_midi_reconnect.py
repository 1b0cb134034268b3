"""Named MIDI connections through the real daemon (``midi.connect: [lgsrc]``): a JACK MIDI source
process that appears after the daemon, goes away and comes back (slowly, and again within the
daemon's one-second look). Every time, notes sent after the (re)connect reach the daemon
(``midi.received`` in status, a mapped pad's ``/livegen/done``), and the daemon pushes the
change to subscribers as ``/livegen/ack 0 <sentence>``. Issue 10 found "0 messages after"."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

SOURCE = "lgsrc"
DAEMON_PORT = "lgrecon"  # the daemon's own client name (not the shared daemon's)

# A JACK MIDI output "lgsrc:out" that sends what stdin asks for: "notes 70,71" or "quit".
SOURCE_SCRIPT = r"""
import sys, time, rtmidi
out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=sys.argv[1])
out.open_virtual_port("out")
print("open", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "notes":
        for note in map(int, arg.split(",")):
            out.send_message([0x90, note, 100])
            time.sleep(0.003)
        print("sent", flush=True)
    elif cmd == "quit":
        break
out.close_port()
out.delete()
"""


class Source:
    def __init__(self) -> None:
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        self.proc = subprocess.Popen([sys.executable, "-c", SOURCE_SCRIPT, SOURCE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "open"

    def notes(self, notes: list[int]) -> None:
        self.proc.stdin.write("notes " + ",".join(map(str, notes)) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "sent"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _received(daemon, client: OscClient) -> int:
    return daemon.query_status(client)["midi"]["received"]


def _wait_received(daemon, client: OscClient, target: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = _received(daemon, client)
        if got >= target or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _sentence(daemon, mark: int, text: str, timeout: float = 10.0) -> str:
    msg = daemon.status.wait("/livegen/ack", mark, timeout=timeout,
                             where=lambda p: p[0] == 0 and text in str(p[-1]))
    return msg.params[-1]


def _notes_arrive(daemon, client: OscClient, source: Source, notes: list[int]) -> None:
    before = _received(daemon, client)
    source.notes(notes)
    assert _wait_received(daemon, client, before + len(notes)) - before == len(notes)


def test_a_named_source_that_restarts_is_connected_again(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=False, folder=False, midi_port=DAEMON_PORT,
                          midi_connect=[SOURCE])
    client = OscClient()
    sources: list[Source] = []
    try:
        assert f"MIDI port '{SOURCE}' not found" in daemon.log_text()
        notes = list(range(70, 80))  # the integration mapping acts on notes 60-61 only

        # 1. the source appears after the daemon started
        mark = daemon.status.mark()
        sources.append(Source())
        said = _sentence(daemon, mark, "appeared and is connected")
        assert said == f"MIDI port '{SOURCE}:out' appeared and is connected."
        _notes_arrive(daemon, client, sources[-1], notes)

        # 2. it goes away (seen by the daemon) and comes back
        mark = daemon.status.mark()
        sources.pop().close()
        assert "went away" in _sentence(daemon, mark, "went away")
        mark = daemon.status.mark()
        sources.append(Source())
        assert _sentence(daemon, mark, "is connected again") == f"MIDI port '{SOURCE}:out' is connected again."
        _notes_arrive(daemon, client, sources[-1], notes)
        # a mapped pad after the reconnect renders
        mark = daemon.status.mark()
        sources[-1].notes([60])
        done = daemon.status.wait("/livegen/done", mark, timeout=60)
        assert done.params[-1] > 0

        # 3. it restarts at once (often within the daemon's one-second look: same name, a new port)
        mark = daemon.status.mark()
        sources.pop().close()
        sources.append(Source())
        _sentence(daemon, mark, "is connected again")
        _notes_arrive(daemon, client, sources[-1], notes)
        st = daemon.query_status(client)
        assert st["midi"]["ports"][-1] == f"{SOURCE}:out", st["midi"]
        assert daemon.alive()
    finally:
        for s in sources:
            s.close()
        client.close()
        rc, _ = stop_daemon(daemon)
    assert rc == 0, daemon.log_text()
    log = daemon.log_text()
    assert "Traceback" not in log, log
