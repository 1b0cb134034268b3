"""A 10-second request storm at 1,000 valid messages/s (tests/soak/storm.py) against a daemon of
its own (the storm sets parameters): the queue stays within engine.queue_size, every status probe
is answered, RSS grows less than 5 % after the warm-up, and a normal request completes and plays
right after. The 60-second and 10-minute runs are the soak script's (docs/reliability.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from livegen.engine.worker import RENDER_NICE
from tests.integration.conftest import OscClient, start_daemon, stop_daemon
from tests.soak.storm import run_storm

pytestmark = pytest.mark.realtime


def threads(pid: int) -> list[tuple[int, int, int]]:
    """(thread id, CPU ticks used, nice) of every thread of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(task.name), int(fields[11]) + int(fields[12]), int(fields[16])))
    return out


def test_a_request_storm_keeps_the_queue_bounded_and_the_daemon_working(jack_server, tiny_model, tmp_path):
    daemon = start_daemon(tmp_path, tiny_model, audio=True, midi=False, midi_port="lgstorm")
    try:
        report = run_storm(daemon.port, seconds=10.0, rate=1000.0, pid=daemon.proc.pid, warmup=4.0,
                           pad_address="/test/pad/{pad}")
        print(report.text())
        assert report.daemon_alive, report.text()
        # the queue was sampled throughout: a probe every 0.1 s from its own thread (84 of 100 on a
        # quiet machine: an answer slower than 0.1 s delays the next probe), at least 3 a second
        assert report.queue_size == 8 and report.queued_samples >= 30, report.text()
        assert report.queue_bounded, report.text()
        assert report.rate > 800, report.text()
        assert report.probes_answered == report.probes, report.text()
        assert report.by_kind["generate"] > 2000, report.text()
        # the queue was really flooded: most generates were dropped or coalesced, not rendered
        assert report.worker["cancelled"] + report.worker["replaced"] > 1000, report.text()
        assert report.rss_ok, report.text()
        assert report.after_done and report.after_played, report.text()
        client = OscClient()
        try:
            st = daemon.query_status(client)
        finally:
            client.close()
        assert st["worker"]["queued"] == 0
        if sys.platform.startswith("linux"):
            # the render ran below the loop's priority: the busiest thread (MLX's compute thread,
            # started by the generation thread) has the worker's nice value, the loop thread its own
            base = os.getpriority(os.PRIO_PROCESS, daemon.proc.pid)
            tasks = threads(daemon.proc.pid)
            busiest = max(tasks, key=lambda t: t[1])
            main = next(t for t in tasks if t[0] == daemon.proc.pid)
            assert busiest[0] != daemon.proc.pid and busiest[2] == min(19, base + RENDER_NICE), tasks
            assert main[2] == base, tasks
    finally:
        rc, _ = stop_daemon(daemon)
    log = daemon.log_text()
    assert rc == 0, log
    assert "Traceback" not in log, log
    assert "objects frozen" in log  # the loaded heap left the cyclic collector's view (freeze_heap)
