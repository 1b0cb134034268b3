"""Pre-rendering: idle time fills the cache for fixed-prompt pads; a pad press is served at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

PRESS = r"""
import sys, time, mido
out = mido.Backend("mido.backends.rtmidi/UNIX_JACK").open_output(sys.argv[1])
out.send(mido.Message("note_on", channel=0, note=61, velocity=100))
time.sleep(0.2)
out.close()
"""


def test_idle_prerender_serves_a_pad_press(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=False, midi=True, folder=False, midi_port="lgpre",
                          prerender=True)
    client = OscClient()
    try:
        # both pads of the mapping (notes 60-61, fixed prompts) get one variation in idle time
        deadline = time.monotonic() + 120
        while True:
            status = daemon.query_status(client)
            if status["prerender"].get("memory_clips") == 2:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert status["prerender"]["targets"] == 2
        mark = daemon.status.mark()
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        out = subprocess.run([sys.executable, "-c", PRESS, "lgpre:midi_in"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        ack = daemon.status.wait("/livegen/ack", mark, timeout=20, where=lambda p: p[1] == "cached: midi pad 1")
        daemon.status.wait("/livegen/done", mark, timeout=10, where=lambda p: p[0] == ack.params[0])
        # no rendering was needed: no progress for that job
        assert not [m for m in daemon.status.since(mark)
                    if m.address == "/livegen/progress" and m.params[0] == ack.params[0]]
        assert daemon.query_status(client)["prerender"]["hits"] == 1
    finally:
        client.close()
        rc, _ = stop_daemon(daemon)
    assert rc == 0, daemon.log_text()
