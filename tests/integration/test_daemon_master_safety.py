"""Nothing above full scale leaves the daemon (issue 12's master safety), on the default audio path:
a looping clip played at gain 4 (four times the level normalisation's -1 dBTP ceiling) reaches the
JACK graph clamped to full scale by the exact clock's C function, and the status counts it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.integration.conftest import Recorder, exact_clock, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime


def test_a_clip_four_times_too_loud_leaves_the_daemon_at_full_scale(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False)
    osc = daemon.status
    try:
        if not exact_clock(daemon, osc):
            pytest.skip("the exact clock (and with it the master safety of the C path) was not built")
        mark = osc.mark()
        osc.send(daemon.port, "/livegen/set", "gain", 4.0)
        osc.send(daemon.port, "/livegen/loop", 1)
        osc.send(daemon.port, "/test/pad/3")
        osc.wait("/livegen/done", mark, timeout=60)
        time.sleep(1.0)
        ports = daemon.query_status(osc)["audio"]["ports"]
        rec = Recorder(list(ports), 1.5, name="lgclamprec", recording=True)
        time.sleep(1.0)
        audio = rec.close()
        st = daemon.query_status(osc)["audio"]
        rc, _ = stop_daemon(daemon)
    finally:
        if daemon.alive():
            daemon.proc.kill()
    peak = float(np.abs(audio).max())
    print(f"peak on the JACK graph {peak:.6f}; clipped blocks {st['clipped_blocks']}, "
          f"non-finite {st['non_finite_blocks']}")
    assert audio.shape[1] > 0 and peak > 0.5, "nothing (loud) played"
    assert peak <= 1.0  # never beyond full scale
    assert np.count_nonzero(np.abs(audio) == 1.0) > 0  # it did reach the ceiling: clamped, not quiet
    assert st["master_safety"] is True and st["clipped_blocks"] > 0 and st["non_finite_blocks"] == 0
    assert rc == 0
