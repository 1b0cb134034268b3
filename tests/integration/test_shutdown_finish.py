"""SIGTERM while a clip renders, with ``engine.finish_running_on_shutdown`` on and off.

On: the daemon waits for the running clip, writes it (WAV and sidecar, complete, no ``.part``
left) and exits 0 (the review of issue 10 found "exit in 1.27 s, empty folder"). Off: it
cancels the clip and exits 0 within 2 s, leaving nothing in the folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

SECONDS = 0.2
STEPS = 20  # a render of several seconds on the tiny model (2 steps by default)


def _start_long_render(daemon, client: OscClient) -> tuple[int, float]:
    """Queue a long render and wait for its first steps; returns the job and the seconds per step."""
    mark = client.mark()
    client.send(daemon.port, "/livegen/steps", STEPS)
    client.wait("/livegen/get", mark, timeout=10, where=lambda p: p[0] == "steps" and p[1] == STEPS)
    client.send(daemon.port, "/livegen/generate", "finish me", 5, SECONDS)
    job = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[0] > 0).params[0]
    first = client.wait("/livegen/progress", mark, timeout=60, where=lambda p: p[0] == job and p[1] >= 1)
    t_first = time.monotonic()
    later = client.wait("/livegen/progress", mark, timeout=60,
                        where=lambda p: p[0] == job and p[1] >= first.params[1] + 2)
    per_step = (time.monotonic() - t_first) / (later.params[1] - first.params[1])
    return job, per_step


def _files(daemon) -> list[str]:
    return sorted(p.name for p in daemon.folder.iterdir())


def test_finish_running_on_shutdown_writes_the_running_clip(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False, finish_running_on_shutdown=True)
    client = OscClient()
    try:
        job, per_step = _start_long_render(daemon, client)
        mark = client.mark()
        t0 = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        rc = daemon.proc.wait(150)
        exited_after = time.monotonic() - t0
    finally:
        client.close()
        if daemon.alive():
            daemon.proc.kill()
        daemon.status.close()
    log = daemon.log_text()
    assert rc == 0, log
    assert f"job {job} done" in log, log
    assert "stopped in" in log
    files = _files(daemon)
    wavs = [f for f in files if f.endswith(".wav")]
    assert len(wavs) == 1 and len(files) == 2, files  # the WAV and its sidecar, nothing hidden or partial
    assert not [f for f in files if f.startswith(".") or f.endswith(".part")], files
    wav = daemon.folder / wavs[0]
    out = subprocess.run(["soxi", "-s", str(wav)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "WARN" not in out.stderr, out.stderr
    assert int(out.stdout) == round(SECONDS * 44100)
    sidecar = json.loads((daemon.folder / (wav.stem + ".json")).read_text())
    assert sidecar["prompt"] == "finish me" and sidecar["steps"] == STEPS, sidecar
    # it really waited: most of the render was still ahead when the signal came
    print(f"{per_step * 1000:.1f} ms per step; exited {exited_after:.2f} s after SIGTERM")
    assert exited_after > 0.5 * per_step * (STEPS - 10), (per_step, exited_after)
    # the OSC socket stays open until the last clip is delivered: its done reply names the file
    done = [m.params for m in client.since(mark) if m.address == "/livegen/done" and m.params[0] == job]
    assert done and done[0][1] == str(wav), client.since(mark)
    assert not [m for m in client.since(mark) if m.address == "/livegen/error" and m.params[0] == job]


def test_without_finish_sigterm_cancels_the_render_and_leaves_nothing(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False, finish_running_on_shutdown=False)
    client = OscClient()
    try:
        _start_long_render(daemon, client)
        rc, seconds = stop_daemon(daemon)
    finally:
        client.close()
        if daemon.alive():
            daemon.proc.kill()
    log = daemon.log_text()
    assert rc == 0, log
    assert seconds < 2.0, (seconds, log)
    assert "stopped in" in log
    assert _files(daemon) == [], _files(daemon)  # no clip, no partial file
