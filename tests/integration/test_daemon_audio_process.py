"""The daemon's audio process (the rtmixer player in a child, livegen/output/audio_host.py) dies or
hangs while the JACK server stays up: the daemon says so over OSC and in the status within a second,
starts a new audio process, and the looping slot plays again on the same server.

Regression: CI (2026-12-02) saw a JACK death under a playing daemon reported by nothing within 5 s.
A child that ends without a word (a crash inside libjack as the server goes) was only logged by the
parent, never sent to the performer; a child that stops publishing was not noticed at all."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from tests.integration.conftest import Recorder, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime


def _audio_error(p: tuple) -> bool:
    return "audio" in str(p[-1]).lower()


def _loop_and_kill(tmp_path, tiny_model, sig: int) -> tuple[float, str, dict, float, np.ndarray, dict, int]:
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False)
    osc = daemon.status
    try:
        mark = osc.mark()
        osc.send(daemon.port, "/livegen/loop", 1)
        osc.send(daemon.port, "/test/pad/3")
        osc.wait("/livegen/done", mark, timeout=60)
        time.sleep(0.5)
        before = daemon.query_status(osc)
        pid = before["audio"]["pid"]
        assert isinstance(pid, int) and pid != daemon.proc.pid, before["audio"]
        mark = osc.mark()
        t0 = time.monotonic()
        os.kill(pid, sig)
        try:
            err = osc.wait("/livegen/error", mark, timeout=5, where=_audio_error)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.log_text()[-4000:]}") from None
        detected = time.monotonic() - t0
        down = daemon.query_status(osc)
        back = osc.wait("/livegen/ack", mark, timeout=20, where=lambda p: "back" in str(p[-1]).lower())
        resumed = time.monotonic() - t0
        time.sleep(0.5)
        up = daemon.query_status(osc)
        rec = Recorder(list(up["audio"]["ports"]), 1.5, name="lgaprec", recording=True)
        time.sleep(1.0)
        after = rec.close()
        rc, _ = stop_daemon(daemon)
    finally:
        if daemon.alive():
            daemon.proc.kill()
        try:
            os.kill(pid, signal.SIGKILL)  # a stopped child the daemon did not reap (a failed run)
        except (OSError, UnboundLocalError):
            pass
    print(f"signal {sig}: reported after {detected * 1000:.0f} ms: {err.params[-1]!r}; back after "
          f"{resumed:.2f} s: {back.params[-1]!r}")
    return detected, str(err.params[-1]), down, resumed, after, up, rc


def _assert_resumed(down: dict, after: np.ndarray, up: dict, rc: int) -> None:
    assert down["audio"]["running"] is False and down["audio"]["stalled"] is True
    assert down["audio"]["stream_errors"] >= 1
    assert after.shape[1] > 0 and np.count_nonzero(np.abs(after).max(axis=0)) > 0.9 * after.shape[1], \
        "the loop did not resume"
    assert up["audio"]["running"] is True and up["audio"]["restarts"] == 1 and up["audio"]["slots_playing"] == [3]
    assert rc == 0


def test_a_killed_audio_process_is_reported_at_once_and_replaced(jack_server, tiny_model, tmp_path):
    detected, text, down, resumed, after, up, rc = _loop_and_kill(tmp_path, tiny_model, signal.SIGKILL)
    assert detected < 1.0, text
    assert "audio process ended" in text
    _assert_resumed(down, after, up, rc)


def test_a_hung_audio_process_is_reported_then_replaced(jack_server, tiny_model, tmp_path):
    detected, text, down, resumed, after, up, rc = _loop_and_kill(tmp_path, tiny_model, signal.SIGSTOP)
    # silent for SILENT_FAULT (0.5 s): reported; for SILENT_LOST (3 s): killed and a new one started
    assert 0.4 < detected < 1.5, text
    assert "has not answered" in text
    assert resumed < 3.0 + 1.0 + 10.0
    _assert_resumed(down, after, up, rc)
