"""The rtmixer audio path in the real daemon, recorded on the JACK graph from this (another) process:
the ports' names, a cached pad's first frame, launches on the bar."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from tests.integration.conftest import DAEMON_CLIENTS, Recorder, exact_clock

pytestmark = pytest.mark.realtime

PERIOD = 256  # CI's JACK dummy server: -p 256
# Launch precision on the JACK graph, in frames. With the exact clock (livegen/output/_rtclock.c:
# rtmixer's callback sees every block's time as its first frame / rate) the target: 0. Without
# it rtmixer starts actions at PortAudio times, which PortAudio's JACK host stamps with
# jack_frame_time(), an estimate of "now" taken when the callback runs (measured on the quiet 2-core
# VM: gaps 2-4 frames off a whole number of bars; up to 285 in CI with cycles lost): LAND_TOLERANCE.
# Cycles the machine loses in the window (the JACK log says so) may drop or repeat a period.
LAND_TOLERANCE = 8
LAND_TOLERANCE_STALLED = 2 * 256


def FrameRecorder(ports: list[str], seconds: float) -> Recorder:  # noqa: N802
    """Records the daemon's two ports from the start, with the JACK frame of the first sample."""
    return Recorder(ports, seconds, name="lgrtrec", recording=True)


def _clip_offset(path: str) -> int:
    """Index of the clip's first non-zero frame (in its WAV)."""
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return int(np.flatnonzero(np.abs(data).max(axis=1) > 0)[0])


def _make_pad(daemon, client, pad: int) -> str:
    mark = client.mark()
    client.send(daemon.port, f"/test/pad/{pad}")
    done = client.wait("/livegen/done", mark, timeout=120)
    return str(done.params[1])


def test_ports_are_named_after_the_daemon(daemon):
    names = sorted(daemon.ports)
    assert [n.split(":")[0] for n in names] == ["livegen", "livegen"], names
    assert [n.split(":")[1] for n in names] == ["out_L", "out_R"], names


@pytest.mark.flaky(reruns=2, reruns_delay=2)
def test_cached_pad_first_frame_within_two_periods(daemon, client, jack_log):
    _make_pad(daemon, client, 7)
    time.sleep(0.3)  # its first play is over
    log_mark = jack_log.mark()
    rec = FrameRecorder(daemon.ports, seconds=12.0)
    try:
        time.sleep(0.5)
        lat = []
        for _ in range(5):
            start = len(rec.onsets()) and int(rec.onsets()[-1]) + 1
            sent = rec.frame_time()
            client.send(daemon.port, "/livegen/trigger", 7)
            deadline = time.monotonic() + 5
            while rec.onsets(start).size == 0:
                assert time.monotonic() < deadline, "the pad was not heard"
                time.sleep(0.01)
            lat.append(int(rec.first + rec.onsets(start)[0]) - sent)
            time.sleep(0.4)
        xruns = jack_log.since(log_mark, DAEMON_CLIENTS, rec.xruns)
    finally:
        rec.close()
    med = float(np.median(lat))
    print(f"cached pad -> first frame: {lat} frames, median {med / PERIOD:.2f} periods; {xruns}")
    assert xruns.daemon_xruns == 0, xruns
    assert med <= 2 * PERIOD, lat


@pytest.mark.flaky(reruns=2, reruns_delay=2)
def test_clips_launched_on_the_bar_land_a_whole_number_of_bars_apart(daemon, client, jack_log):
    """Two pads launched on the bar in different bars: their first frames on the JACK graph are a
    whole number of bars apart (a bar of 240 bpm 4/4: 44100 frames), within LAND_TOLERANCE."""
    for address, value in (("/livegen/bpm", 240), ("/livegen/beats_per_bar", 4), ("/livegen/launch", "bar")):
        client.send(daemon.port, address, value)
    paths = {pad: _make_pad(daemon, client, pad) for pad in (8, 9)}  # their requests launch on the bar
    offsets = {pad: _clip_offset(p) for pad, p in paths.items()}
    time.sleep(1.2)
    log_mark = jack_log.mark()
    rec = FrameRecorder(daemon.ports, seconds=10.0)
    try:
        time.sleep(0.3)
        starts = []
        for pad in (8, 9, 8):
            begin = int(rec.pos)
            client.send(daemon.port, "/livegen/trigger", pad)
            deadline = time.monotonic() + 4
            while rec.onsets(begin).size == 0:
                assert time.monotonic() < deadline, "the pad was not heard"
                time.sleep(0.01)
            starts.append(int(rec.onsets(begin)[0]) - offsets[pad])
            time.sleep(1.3)  # past the next bar line
        xruns = jack_log.since(log_mark, DAEMON_CLIENTS, rec.xruns)
    finally:
        rec.close()
        for address, value in (("/livegen/launch", "now"), ("/livegen/bpm", 120)):
            client.send(daemon.port, address, value)
    bar = 44100
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    print(f"bar launches: starts {starts}, gaps {gaps} (bar {bar}); {xruns}")
    assert xruns.daemon_xruns == 0, xruns
    exact = exact_clock(daemon, client)
    tolerance = LAND_TOLERANCE_STALLED if xruns.machine else (0 if exact else LAND_TOLERANCE)
    for g in gaps:
        k = round(g / bar)
        assert k >= 1 and abs(g - k * bar) <= tolerance, (gaps, str(xruns))
