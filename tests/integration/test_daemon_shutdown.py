"""SIGTERM while a job runs: exit within 2 s, status 0, nothing partial in the DAW folder."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime


def test_sigterm_exits_quickly_and_leaves_only_complete_files(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False)
    client = OscClient()
    try:
        # one finished clip, then a long job that SIGTERM interrupts
        mark = client.mark()
        client.send(daemon.port, "/livegen/generate", "first", 1, 0.05)
        job = client.wait("/livegen/ack", mark, timeout=10).params[0]
        client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == job)
        mark = client.mark()
        client.send(daemon.port, "/livegen/steps", 200)
        client.send(daemon.port, "/livegen/generate", "interrupted", 2, 0.4)
        client.wait("/livegen/progress", mark, timeout=60)
        rc, seconds = stop_daemon(daemon)
    finally:
        client.close()
        if daemon.alive():
            daemon.proc.kill()
    log = daemon.log_text()
    assert rc == 0, log
    assert seconds < 2.0, log
    assert "stopped in" in log
    files = sorted(p.name for p in daemon.folder.iterdir())
    assert len([f for f in files if f.endswith(".wav")]) == 1, files
    assert all(f.endswith((".wav", ".json")) and not f.startswith(".") for f in files), files
    wav = next(daemon.folder.glob("*.wav"))
    out = subprocess.run(["soxi", "-s", str(wav)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "WARN" not in out.stderr and int(out.stdout) == round(0.05 * 44100)
    time.sleep(0.1)
