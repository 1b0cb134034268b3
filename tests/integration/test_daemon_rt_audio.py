"""The rtmixer audio path in the real daemon, recorded on the JACK graph from this (another) process:
the ports' names, a cached pad's first frame, launches on the bar."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.realtime

PERIOD = 256  # CI's JACK dummy server: -p 256
LAND_TOLERANCE = 3  # frames: PortAudio stamps JACK blocks from jack_frame_time()'s estimate (docs/daemon.md)


class FrameRecorder:
    """Records the daemon's two ports with the JACK frame of every sample."""

    def __init__(self, ports: list[str], seconds: float) -> None:
        import jack

        self.client = jack.Client("lgrtrec", no_start_server=True)
        self.buf = np.zeros((2, int(seconds * self.client.samplerate)), np.float32)
        self.pos = 0
        self.first: int | None = None
        self.xruns = 0
        self.inports = [self.client.inports.register(f"in_{i}") for i in range(2)]
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(lambda delay: setattr(self, "xruns", self.xruns + 1))
        self.client.activate()
        for src, dst in zip(ports, self.inports, strict=True):
            self.client.connect(src, dst)

    def _process(self, frames: int) -> None:
        if self.first is None:
            self.first = self.client.last_frame_time
        n = min(frames, self.buf.shape[1] - self.pos)
        for i, port in enumerate(self.inports):
            self.buf[i, self.pos:self.pos + n] = port.get_array()[:n]
        self.pos += n

    def onsets(self, after: int = 0) -> np.ndarray:
        loud = np.flatnonzero(np.abs(self.buf[:, :self.pos]).max(axis=0) > 0)
        return loud[loud >= after]

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


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
def test_cached_pad_first_frame_within_two_periods(daemon, client):
    _make_pad(daemon, client, 7)
    time.sleep(0.3)  # its first play is over
    rec = FrameRecorder(daemon.ports, seconds=12.0)
    try:
        time.sleep(0.5)
        lat = []
        for _ in range(5):
            start = len(rec.onsets()) and int(rec.onsets()[-1]) + 1
            sent = rec.client.frame_time
            client.send(daemon.port, "/livegen/trigger", 7)
            deadline = time.monotonic() + 5
            while rec.onsets(start).size == 0:
                assert time.monotonic() < deadline, "the pad was not heard"
                time.sleep(0.01)
            lat.append(int(rec.first + rec.onsets(start)[0]) - sent)
            time.sleep(0.4)
        xruns = rec.xruns
    finally:
        rec.close()
    med = float(np.median(lat))
    print(f"cached pad -> first frame: {lat} frames, median {med / PERIOD:.2f} periods")
    assert xruns == 0
    assert med <= 2 * PERIOD, lat


@pytest.mark.flaky(reruns=2, reruns_delay=2)
def test_clips_launched_on_the_bar_land_a_whole_number_of_bars_apart(daemon, client):
    """Two pads launched on the bar in different bars: their first frames on the JACK graph are a
    whole number of bars apart (a bar of 240 bpm 4/4: 44100 frames), within LAND_TOLERANCE."""
    for address, value in (("/livegen/bpm", 240), ("/livegen/beats_per_bar", 4), ("/livegen/launch", "bar")):
        client.send(daemon.port, address, value)
    paths = {pad: _make_pad(daemon, client, pad) for pad in (8, 9)}  # their requests launch on the bar
    offsets = {pad: _clip_offset(p) for pad, p in paths.items()}
    time.sleep(1.2)
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
        xruns = rec.xruns
    finally:
        rec.close()
        for address, value in (("/livegen/launch", "now"), ("/livegen/bpm", 120)):
            client.send(daemon.port, address, value)
    bar = 44100
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    print(f"bar launches: starts {starts}, gaps {gaps} (bar {bar})")
    assert xruns == 0
    for g in gaps:
        k = round(g / bar)
        assert k >= 1 and abs(g - k * bar) <= LAND_TOLERANCE, gaps
