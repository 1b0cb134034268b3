"""No garbage collection pauses the daemon's event loop for more than 5 ms under load (issue 11).

Real daemon on JACK with the rtmixer backend: clips generated back to back (streamed and played),
status queries and parameter sets arriving meanwhile. Every collection of the process is timed
through ``gc.callbacks`` (livegen.gc_monitor) and reported in the status JSON; the test reads the
longest pause and the count over 5 ms from there, and checks that the status query itself (which
reports the frozen count) does not walk the frozen heap (it did: 3 ms a query).
"""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import OscClient, start_daemon, stop_daemon

pytestmark = pytest.mark.realtime

LOAD_SECONDS = 12.0


def test_gc_pauses_stay_under_5_ms_under_load(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False, musicgen=True,
                          audio_lines=("backend: rtmixer",))
    client = OscClient()
    try:
        st = daemon.query_status(client)
        assert st["gc"]["frozen"] > 0 and st["gc"]["threshold"][0] >= 1000, st["gc"]
        end = time.monotonic() + LOAD_SECONDS
        sent = 0
        while time.monotonic() < end:
            mark = client.mark()
            client.send(daemon.port, "/livegen/model", "mg" if sent % 2 else "default")
            client.send(daemon.port, f"/test/pad/{sent % 4}")
            for i in range(20):
                client.send(daemon.port, "/livegen/steps", 1 + i % 3)
                client.send(daemon.port, "/livegen/status")
                time.sleep(0.01)
            sent += 1
            client.wait("/livegen/status", mark, timeout=10)
        time.sleep(1.0)
        st = daemon.query_status(client)
    finally:
        client.close()
        rc, seconds = stop_daemon(daemon)
    gcs = st["gc"]
    print(f"{sent} generate requests, worker {st['worker']}, gc {gcs}")
    assert st["worker"]["done"] >= 3, st["worker"]
    # (with the daemon's thresholds the collector may not run at all in these seconds: then the
    # bound holds trivially; the unit tests of livegen.gc_monitor check the timing itself)
    assert gcs["max_pause_ms"] < 5.0, gcs
    assert gcs["over_limit"] == 0, gcs
    assert rc == 0 and seconds < 2.0, (rc, seconds)
