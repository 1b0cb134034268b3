"""The JACK server dies under a daemon with audio out, MIDI in and MIDI feedback out, and comes
back: the death is said at once over OSC, the daemon's MIDI ports (``lgmr:midi_in``, its SysEx
guard and the feedback output ``lgmr_out:midi_out``) are registered again on the new server beside
its audio ports (``livegen:out_L/R``, the audio process's) without a restart of the daemon, the
named source and the controller's LED input are connected again, notes arrive and play a pad,
every LED is sent again, and the daemon exits 0 after.

The JACK clients of a dead server cannot be revived, but new ones opened by the same process work
once a server answers (livegen.control.midi, "When the JACK server dies")."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import require_or_skip
from tests.integration.conftest import OscClient, start_daemon, stop_daemon
from tests.integration.test_daemon_feedback import (
    IDLE_LOOKS,
    MAPPING_TEMPLATE,
    MidiRecorder,
    jack_ports,
    wait_for_port,
)
from tests.integration.test_daemon_jack_restart import SERVER, _start_jackd
from tests.integration.test_midi_reconnect import Source, _notes_arrive, _sentence

pytestmark = pytest.mark.realtime

NAME = "lgmr"
SOURCE = "lgsrc"  # test_midi_reconnect's Source registers "lgsrc:out"
RECORDER = "lgmrrec"

MAPPING = MAPPING_TEMPLATE.format(RECORDER=RECORDER)  # the feedback test's pads and colours

OWN_PORTS = (f"{NAME}:midi_in", f"{NAME}_guard:sysex_reset", f"{NAME}_out:midi_out", "livegen:out_L", "livegen:out_R")


def _connected_and_lit(daemon, client: OscClient, mark: int, what: str) -> MidiRecorder:
    """A new source and a new LED recorder on the current server: both connected, notes arrive."""
    source = Source()
    said = _sentence(daemon, mark, f"'{SOURCE}:out'")
    assert "connected" in said, (what, said)
    _notes_arrive(daemon, client, source, list(range(70, 80)))
    rec = MidiRecorder(RECORDER)
    got = rec.wait(lambda ms: all(m in ms for m in IDLE_LOOKS), timeout=10)
    assert sorted(got[:4]) == sorted(IDLE_LOOKS), (what, got)
    mark = daemon.status.mark()
    source.notes([60])  # a mapped pad: it renders
    done = daemon.status.wait("/livegen/done", mark, timeout=60)
    assert done.params[-1] > 0, what
    source.close()
    return rec


def test_midi_ports_are_registered_again_when_the_jack_server_comes_back(jack_server, tiny_model, tmp_path,
                                                                          monkeypatch):
    for tool in ("jackd", "jack_midi_dump", "jack_lsp", "stdbuf"):
        if shutil.which(tool) is None:
            require_or_skip("LIVEGEN_REQUIRE_REALTIME", f"{tool} is not installed (jackd2, jack-tools, coreutils)")
    jackd = _start_jackd()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", SERVER)
    daemon = start_daemon(tmp_path, tiny_model, audio=True, folder=False, midi_port=NAME,
                          midi_connect=[SOURCE], mapping_text=MAPPING)
    client = OscClient()
    recorders: list[MidiRecorder] = []
    try:
        for port in OWN_PORTS:
            wait_for_port(port)
        recorders.append(_connected_and_lit(daemon, client, daemon.status.mark(), "before"))

        # the server dies (SIGKILL: no goodbye to its clients)
        mark = daemon.status.mark()
        jackd.kill()
        jackd.wait(5)
        gone = _sentence(daemon, mark, "The JACK server went away", timeout=5)
        down = daemon.query_status(client)["midi"]
        assert down["server_down"] is True and down["ports"] == [], down
        assert daemon.alive()
        recorders.pop().close()

        # a new server: the daemon's ports come back by themselves, under the same names
        mark = daemon.status.mark()
        jackd = _start_jackd()
        back = _sentence(daemon, mark, "The JACK server is back", timeout=10)
        assert back == f"The JACK server is back: MIDI input {NAME}:midi_in registered again.", back
        for port in OWN_PORTS:
            wait_for_port(port, timeout=10)
        ports = jack_ports()
        assert not [p for p in ports if p.startswith(f"{NAME}-0")], ports  # no renamed duplicates
        recorders.append(_connected_and_lit(daemon, client, mark, "after"))
        up = daemon.query_status(client)
        assert up["midi"]["server_down"] is False and up["midi"]["server_returns"] == 1, up["midi"]
        assert up["midi"]["ports"][0] == f"{NAME}:midi_in", up["midi"]
        assert up["feedback"]["server_returns"] == 1, up["feedback"]
        assert up["feedback"]["ports"] == [f"{NAME}_out:midi_out", f"{RECORDER}:input"], up["feedback"]
        print(f"said: {gone!r}; then {back!r}")
    finally:
        for rec in recorders:
            rec.close()
        client.close()
        rc, _ = stop_daemon(daemon)
        if jackd.poll() is None:
            jackd.terminate()  # a clean stop frees its registry entry
            jackd.wait(5)
    log = daemon.log_text()
    assert rc == 0, log
    assert "Traceback" not in log, log
    assert f"The JACK server is back: MIDI feedback {NAME}_out:midi_out registered again." in log, log
