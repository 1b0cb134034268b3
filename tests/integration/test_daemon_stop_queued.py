"""`/livegen/stop` also stops a clip that is on its way to the player or queued in it (issue 11).

Real daemon on JACK, recorded by a JACK client. Launch on the bar at 120 BPM (a bar is 2 s), audio
streaming off (the buffered path every cached pad and re-trigger takes):

- control: a clip that nobody stops is heard (the recording sees the daemon);
- a MusicGen clip (32 kHz, resampled on the play pool for the 44.1 kHz stream) stopped the moment
  its ``done`` arrives (no DAW folder: ``done`` comes before the play pool has run): never heard;
- a re-trigger of a slot for the next bar, stopped right after its ack: never heard.
"""

from __future__ import annotations

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

BAR_SECONDS = 2.0  # 120 BPM, 4/4
SILENT = 1e-4


def _peak(rec: Recorder, start: int) -> float:
    end = rec.pos
    seg = np.abs(rec.buf[:, start:end]).max(axis=0) if end > start else np.zeros(1)
    loud = np.flatnonzero(seg > SILENT)
    if loud.size:
        print(f"sound from {loud[0] / rec.rate:.3f} s to {loud[-1] / rec.rate:.3f} s after the mark ({loud.size} frames)")
    return float(seg.max())


def _set(client: OscClient, daemon, name: str, value) -> None:
    mark = client.mark()
    client.send(daemon.port, f"/livegen/{name}", value)
    client.wait("/livegen/get", mark, timeout=10, where=lambda p: p[0] == name)


def _generate(client: OscClient, daemon, slot: int) -> tuple[int, int]:
    """The test mapping's ``/test/pad/{pad}`` generates for the pad's slot."""
    mark = client.mark()
    client.send(daemon.port, f"/test/pad/{slot}")
    job = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[0] > 0).params[0]
    return job, mark


@pytest.mark.parametrize("backend", ["python", "rtmixer"])
def test_stop_silences_clips_on_their_way_and_queued_for_the_bar(jack_server, tiny_model, tmp_path, backend):
    before = portaudio_ports()
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False, folder=False, musicgen=True,
                          audio_lines=(f"backend: {backend}", "stream: false"))
    client = OscClient()
    rec = None
    try:
        rec = Recorder(wait_new_ports(before), seconds=60.0)
        _set(client, daemon, "bpm", 120.0)
        _set(client, daemon, "launch", "bar")
        rec.recording = True

        # control: not stopped, heard on the next bar
        job, mark = _generate(client, daemon, 1)
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
        start = rec.pos
        time.sleep(BAR_SECONDS + 0.5)
        assert _peak(rec, start) > 10 * SILENT, "the control clip was not heard: the recorder sees nothing"

        # a MusicGen clip stopped as soon as it is done (still being resampled, or queued for the bar)
        _set(client, daemon, "model", "mg")
        job, mark = _generate(client, daemon, 2)
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
        client.send(daemon.port, "/livegen/stop", 2)
        start = rec.pos
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: "stopped slot 2" in str(p[-1]))
        time.sleep(BAR_SECONDS + 0.6)
        assert _peak(rec, start) < SILENT, f"the stopped clip was heard: peak {_peak(rec, start):.4f}"

        # a re-trigger of slot 1 for the next bar, stopped before the bar
        mark = client.mark()
        client.send(daemon.port, "/livegen/trigger", 1)
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: "triggered slot 1" in str(p[-1]))
        client.send(daemon.port, "/livegen/stop", 1)
        start = rec.pos
        client.wait("/livegen/ack", mark, timeout=10, where=lambda p: "stopped slot 1" in str(p[-1]))
        time.sleep(BAR_SECONDS + 0.6)
        assert _peak(rec, start) < SILENT, f"the stopped re-trigger was heard: peak {_peak(rec, start):.4f}"
        assert daemon.alive(), daemon.log_text()
    finally:
        if rec is not None:
            rec.close()
        client.close()
        rc, seconds = stop_daemon(daemon)
    assert rc == 0 and seconds < 2.0, (rc, seconds, daemon.log_text())
