"""The audio server dies under a playing daemon and comes back: the death is reported at once over
OSC and in the status, playback resumes by itself (a new audio process, the looping slot launched
again, recorded on the new server), and SIGTERM with the server dead ends the daemon within 2 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

# A fixed name: a SIGKILLed server leaves its entry in JACK's server registry (8 at most on a
# machine); the next server started under the same name takes the stale entry over.
SERVER = "lg-rt-restart"


def _start_jackd() -> subprocess.Popen:
    proc = subprocess.Popen(["jackd", "-n", SERVER, "-d", "dummy", "-r", "44100", "-p", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, JACK_DEFAULT_SERVER=SERVER, JACK_NO_START_SERVER="1")
    deadline = time.monotonic() + 20
    while subprocess.run(["jack_lsp"], env=env, capture_output=True, timeout=15).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "the test's JACK server did not start"
        time.sleep(0.2)
    return proc


# The recorder runs in a child process: libjack keeps one set of process-wide globals (the server's
# shared memory, held while any client of the process is open: PortAudio's, once sounddevice is
# imported), so a client opened in the test process on this second server mixes the two servers'
# port tables. In CI that connected 'livegen:out_L' -> 'livegen:out_L' here, and later tests'
# PortAudio streams in the test process failed ("Invalid sample rate", underflows).
RECORD = r"""
import sys, time, numpy as np, jack
seconds = float(sys.argv[1]); path = sys.argv[2]; ports = sys.argv[3:]
c = jack.Client("lgrtrec", no_start_server=True)
buf = np.zeros((len(ports), int(seconds * c.samplerate) + 4096), np.float32)
pos = [0]
ins = [c.inports.register(f"in_{i}") for i in range(len(ports))]
def process(frames):
    n = min(frames, buf.shape[1] - pos[0])
    for i, port in enumerate(ins):
        buf[i, pos[0]:pos[0] + n] = port.get_array()[:n]
    pos[0] += n
c.set_process_callback(process)
c.activate()
for src, dst in zip(ports, ins):
    c.connect(src, dst)
time.sleep(seconds)
c.deactivate()
c.close()
np.save(path, buf[:, :pos[0]])
"""


def _record(ports: list[str], seconds: float, tmp: Path) -> np.ndarray:
    path = tmp / f"rec-{time.monotonic_ns()}.npy"
    env = dict(os.environ, JACK_DEFAULT_SERVER=SERVER, JACK_NO_START_SERVER="1")
    subprocess.run([sys.executable, "-c", RECORD, str(seconds), str(path), *ports], env=env, check=True,
                   timeout=seconds + 30)
    return np.load(path)


def test_jack_death_is_reported_playback_resumes_and_sigterm_exits_within_2_s(jack_server, tiny_model, tmp_path,
                                                                               monkeypatch):
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed")
    jackd = _start_jackd()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", SERVER)
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False)
    osc = daemon.status
    try:
        mark = osc.mark()
        osc.send(daemon.port, "/livegen/loop", 1)
        osc.send(daemon.port, "/test/pad/3")  # a looping slot plays when the server dies
        osc.wait("/livegen/done", mark, timeout=60)
        time.sleep(0.5)
        assert np.abs(_record(["livegen:out_L", "livegen:out_R"], 0.5, tmp_path)).max() > 0, "nothing played"
        mark = osc.mark()
        t0 = time.monotonic()
        jackd.kill()
        jackd.wait(5)
        try:
            err = osc.wait("/livegen/error", mark, timeout=5, where=lambda p: "audio" in str(p[-1]).lower())
        except AssertionError as exc:  # CI saw this once (2026-12-02): the daemon's log says what happened
            raise AssertionError(f"{exc}\n{daemon.log_text()[-4000:]}") from None
        detected = time.monotonic() - t0
        down = daemon.query_status(osc)
        mark = osc.mark()
        jackd = _start_jackd()
        t1 = time.monotonic()
        back = osc.wait("/livegen/ack", mark, timeout=20, where=lambda p: "back" in str(p[-1]).lower())
        resumed = time.monotonic() - t1
        time.sleep(0.3)
        after = _record(["livegen:out_L", "livegen:out_R"], 1.0, tmp_path)
        up = daemon.query_status(osc)
        jackd.terminate()  # gone again, for good (a clean stop frees its registry entry): SIGTERM must not wait on it
        jackd.wait(5)
        time.sleep(0.3)
        rc, seconds = stop_daemon(daemon)
    finally:
        if daemon.alive():
            daemon.proc.kill()
        if jackd.poll() is None:
            jackd.terminate()
            jackd.wait(5)
    print(f"JACK death reported after {detected * 1000:.0f} ms: {err.params[-1]!r}; audio back "
          f"{resumed:.2f} s after the server: {back.params[-1]!r}; exit status {rc} {seconds:.2f} s after SIGTERM")
    assert detected < 1.0  # the guard checks every 20 ms; PortAudio flags the stream inactive at once
    assert down["audio"]["stalled"] is True and down["audio"]["running"] is False
    assert down["audio"]["stream_errors"] >= 1
    assert np.count_nonzero(np.abs(after).max(axis=0)) > 0.9 * after.shape[1], "the loop did not resume"
    assert up["audio"]["running"] is True and up["audio"]["restarts"] == 1 and up["audio"]["slots_playing"] == [3]
    assert seconds < 2.0, daemon.log_text()
    assert rc == 0, daemon.log_text()
