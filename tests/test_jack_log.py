"""The xrun attribution of the real-time tests (tests/jack_log.py), on lines jackd 1.9.21 wrote
on the CI VM (dummy driver; the daemon's clients livegen, lgtest, lgtest_guard)."""

from __future__ import annotations

import io

import pytest

from tests.jack_log import JackLog, classify, stamp

DAEMON = ("livegen", "lgtest", "lgtest_guard")
END = "JackAudioDriver::ProcessGraphAsyncMaster: Process error"


def test_a_cycle_only_a_daemon_callback_overran_is_the_daemons():
    lines = ["JackEngine::XRun: client = livegen was not finished, state = Running", END,
             "JackEngine::XRun: client lgtest_guard finished after current callback", END,
             "JackEngine::XRun: client = livegen-01 was not finished, state = Running", END]
    ours, machine = classify(lines, DAEMON)
    assert ours == [lines[0], lines[2], lines[4]] and machine == []


def test_signs_of_a_stall_of_the_machine_are_not_charged():
    lines = [
        # never woken: the machine did not schedule the threads
        "JackEngine::XRun: client = livegen was not finished, state = Triggered",
        "JackEngine::XRun: client = lgtest was not finished, state = Triggered", END,
        # two callbacks (two processes) overrunning the same cycle
        "JackEngine::XRun: client = lgtest was not finished, state = Running",
        "JackEngine::XRun: client lgflood finished after current callback", END,
        # the driver's timer woke late
        "JackTimedDriver::Process XRun = 42 usec",
        # another process's client overran alone
        "JackEngine::XRun: client = jackrec was not finished, state = Running", END,
        # a name that only begins like the daemon's
        "JackEngine::XRun: client = livegenx was not finished, state = Running", END,
    ]
    ours, machine = classify(lines, DAEMON)
    assert ours == [] and machine == [line for line in lines if line != END]


def test_an_overrun_inside_a_burst_of_stalls_is_the_machines():
    stamped = [
        "100.000000 JackEngine::XRun: client = lgtest was not finished, state = Triggered",
        f"100.000050 {END}",
        "100.137000 JackEngine::XRun: client = livegen was not finished, state = Running",  # 137 ms later
        f"100.137050 {END}",
        "101.000000 JackEngine::XRun: client = livegen was not finished, state = Running",  # alone: the daemon's
        f"101.000050 {END}",
        "102.000000 JackTimedDriver::Process XRun = 16025 usec",
        "102.200000 JackEngine::XRun: client livegen finished after current callback",  # after the driver's stall
        f"102.200050 {END}",
    ]
    ours, machine = classify(stamped, DAEMON)
    assert ours == [stamped[4]]
    assert machine == [stamped[0], stamped[2], stamped[6], stamped[7]]


def test_report_from_a_log_window(tmp_path):
    log = tmp_path / "jackd.log"
    log.write_text(f"JackEngine::XRun: client = livegen was not finished, state = Running\n{END}\n")
    jl = JackLog(log)
    mark = jl.mark()
    with open(log, "a") as f:
        f.write(f"JackEngine::XRun: client = lgtest was not finished, state = Triggered\n{END}\n")
    r = jl.since(mark, DAEMON, counted=1)
    assert r.known and r.daemon_xruns == 0 and len(r.machine) == 1 and r.counted == 1
    with open(log, "a") as f:
        f.write(f"JackEngine::XRun: client = livegen was not finished, state = Running\n{END}\n")
    assert jl.since(mark, DAEMON, counted=2).daemon_xruns == 1


def test_without_a_log_every_counted_xrun_is_charged(monkeypatch, tmp_path):
    monkeypatch.delenv("LIVEGEN_JACK_LOG", raising=False)
    r = JackLog().since(JackLog().mark(), DAEMON, counted=3)
    assert not r.known and r.daemon_xruns == 3
    with pytest.raises(AssertionError, match="no such file"):
        JackLog(tmp_path / "absent.log")


def test_stamp_prefixes_monotonic_times():
    out = io.StringIO()
    stamp(io.StringIO("a\nb\n"), out)
    rows = [line.split(" ", 1) for line in out.getvalue().splitlines()]
    assert [r[1] for r in rows] == ["a", "b"] and float(rows[0][0]) <= float(rows[1][0])
