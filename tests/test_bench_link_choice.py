"""The analysis of bench/link_choice.py on synthetic peers (no Link peer runs here)."""

from __future__ import annotations

import pytest

from bench import link_choice as lc


def test_an_error_is_taken_modulo_one_bar():
    assert lc.wrap(0.0001, 2.0) == pytest.approx(0.0001)
    assert lc.wrap(2.0 - 0.0001, 2.0) == pytest.approx(-0.0001)  # the next bar line, just early
    assert lc.wrap(-2.0 + 0.0003, 2.0) == pytest.approx(0.0003)


def test_the_analysis_measures_offset_jitter_and_follow_time():
    ref = {"changes": [[10.0, 133.0]], "samples": []}
    cand = {"samples": [], "costs": [1e-5] * 4, "offsets": [(-1e-7, -0.262)] * 4}
    for i in range(600):  # 4 s at 120, then 133 from t = 10 s (seen by the candidate 25 ms later)
        now = 6.0 + i * 0.01
        tempo = 120.0 if now < 10.0 else 133.0
        b = 4 * 60 / tempo
        nxt = (now // b + 1) * b
        ref["samples"].append([now, nxt, tempo])
        seen = 120.0 if now < 10.025 else 133.0
        jitter = 3e-6 if i % 2 else -3e-6
        cand["samples"].append([now + 0.001, nxt + 5e-6 + jitter, seen, nxt // (4 * 60 / seen)])
    out = lc.analyse(ref, cand, "test")
    assert out["bar_error_us"]["median_abs"] == pytest.approx(5.0, abs=3.1)
    assert out["bar_error_us"]["max_abs"] == pytest.approx(8.0, abs=0.01)
    assert out["jitter_us"]["range_max"] == pytest.approx(6.0, abs=0.01)
    assert out["follow_ms"] == [pytest.approx(31.0, abs=0.5)]  # the first sample at the new tempo
    assert out["clock_offset_us"]["vs_time_monotonic"] == pytest.approx(-262000.0)


def test_it_refuses_to_run_outside_a_loopback_only_namespace(monkeypatch):
    monkeypatch.setattr(lc.os, "listdir", lambda path: ["eth0", "lo"])
    assert not lc.only_loopback()
    monkeypatch.setattr(lc.os, "listdir", lambda path: ["lo"])
    assert lc.only_loopback()
    monkeypatch.setattr(lc.os, "listdir", lambda path: ["eth0", "lo"])
    monkeypatch.setattr(lc.sys, "argv", ["link_choice"])
    assert lc.main() == 2
