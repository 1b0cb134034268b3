"""The daemon's streaming sink (livegen.output.stream_delivery) on the reference Player, whose callback
is driven here at the pace of a real device (no audio hardware): start planning from the measured
rate, misses counted, chunk-wise resampling equal to the one-shot resample, exact loop hand-over, stop."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from livegen.audio_io import resample
from livegen.output.player import Player
from livegen.output.stream_delivery import (
    MARGIN_SECONDS,
    SAFETY,
    StreamDelivery,
    StreamStats,
    launch_at_or_after,
    lead_seconds,
)
from livegen.settings import AudioSettings, TempoSettings

SR = 44100
BLOCK = 256


@dataclass
class Req:
    launch: str = "now"
    gain: float = 1.0
    loop: bool = False
    model: str = "m"


class Device:
    """Calls the player's callback every BLOCK frames at (about) real time and records the output."""

    def __init__(self, player: Player, seconds: float, speed: float = 1.0) -> None:
        self.player = player
        self.out = np.zeros((int(seconds * SR) + BLOCK, 2), dtype=np.float32)
        self.speed = speed
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        block = np.zeros((BLOCK, 2), dtype=np.float32)
        t0 = time.monotonic()
        pos = 0
        while not self._stop.is_set() and pos + BLOCK <= self.out.shape[0]:
            wait = t0 + pos / (SR * self.speed) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.player.callback(block, BLOCK, None, None)
            self.out[pos:pos + BLOCK] = block
            pos += BLOCK
        self.frames = pos

    def __enter__(self) -> Device:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(5)


def make_player() -> Player:
    return Player(AudioSettings(sample_rate=SR, blocksize=BLOCK, fade_ms=5.0), TempoSettings(bpm=120.0))


def noise(frames: int, seed: int = 0, rate: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.2 * rng.standard_normal((2, frames)), -0.9, 0.9).astype(np.float32)


def produce(sink: StreamDelivery, audio: np.ndarray, chunk: int, seconds_per_chunk: float, rate: int = SR,
            stall_after: int | None = None, stall: float = 0.0) -> None:
    sink.begin(rate, audio.shape[1])
    for i, s in enumerate(range(0, audio.shape[1], chunk)):
        time.sleep(seconds_per_chunk)
        if stall_after is not None and i == stall_after:
            time.sleep(stall)
        sink.write(audio[:, s:s + chunk])
    sink.end(True)


def test_lead_seconds():
    assert lead_seconds(2 * SR, SR, 2 * SR, SR) == 0.0  # faster than real time: at the launch point
    # half real time: the last of 1 s still to come arrives SAFETY * 2 s from now; the clip lasts 1.5 s
    assert lead_seconds(SR / 2, SR, int(1.5 * SR), SR) == pytest.approx(SAFETY * 2 - 1.5 + MARGIN_SECONDS)
    assert lead_seconds(SR, 0, SR, SR) == 0.0
    # a tiny first chunk (10 ms of a fast stream): it waits until MARGIN_SECONDS are buffered
    assert lead_seconds(10 * SR, SR - SR // 100, SR, SR) == pytest.approx(MARGIN_SECONDS - 0.01)


def test_launch_points_on_the_grid():
    p = make_player()
    beat = SR // 2  # 120 bpm
    assert launch_at_or_after(p, 1000, "beat") == beat
    assert launch_at_or_after(p, beat, "beat") == beat
    assert launch_at_or_after(p, beat + 1, "bar") == 4 * beat
    assert launch_at_or_after(p, 1000, "now") == 1000


def test_slow_stream_starts_late_enough_and_plays_exactly():
    """Production at ~0.5x real time: the start waits for the measured rate; no miss; the recorded
    output from the start frame is the clip, sample for sample."""
    p = make_player()
    stats = StreamStats()
    clip = noise(int(0.6 * SR))
    sink = StreamDelivery(p, 1, Req(), stats)
    chunk = 4410
    with Device(p, 2.6) as dev:
        first_write_frame = None
        sink.begin(SR, clip.shape[1])
        for s in range(0, clip.shape[1], chunk):
            time.sleep(chunk / SR * 2)  # half real time
            if first_write_frame is None:
                first_write_frame = p.frame
            sink.write(clip[:, s:s + chunk])
        sink.end(True)
        time.sleep(0.05)
        while p.frame < sink.start_frame + clip.shape[1] + 2 * BLOCK:
            time.sleep(0.02)
    start = sink.start_frame
    assert start is not None and start > first_write_frame
    assert stats.as_dict()["misses"] == 0 and stats.started == 1 and stats.finished == 1
    np.testing.assert_array_equal(dev.out[start:start + clip.shape[1]].T, clip)
    assert not dev.out[:start].any() and not dev.out[start + clip.shape[1]:p.frame].any()
    np.testing.assert_array_equal(sink.audio, clip)


def test_a_stall_beyond_the_estimate_is_a_counted_miss_not_a_glitch():
    p = make_player()
    stats = StreamStats()
    clip = noise(SR, 1)
    sink = StreamDelivery(p, 2, Req(), stats)
    with Device(p, 2.5):
        produce(sink, clip, 4410, 0.02, stall_after=5, stall=0.8)  # started after 4 fast chunks, then a stall
        assert stats.as_dict()["misses"] > 0


def test_chunkwise_resampling_equals_the_one_shot_resample():
    p = make_player()
    rate = 32000
    clip = noise(rate // 2, 2)
    sink = StreamDelivery(p, 3, Req(), StreamStats())
    sink.begin(rate, clip.shape[1])
    for s in range(0, clip.shape[1], 1234):
        sink.write(clip[:, s:s + 1234])
    sink.end(True)
    ref = resample(clip, rate, SR)
    assert sink.audio.shape == ref.shape
    assert np.abs(sink.audio - ref).max() <= 1e-5


def test_stop_silences_within_a_block_and_the_fade_and_drops_what_follows():
    p = make_player()
    stats = StreamStats()
    clip = (0.5 * np.ones((2, SR))).astype(np.float32)
    sink = StreamDelivery(p, 4, Req(), stats)
    with Device(p, 1.5) as dev:
        sink.begin(SR, clip.shape[1])
        sink.write(clip[:, :SR // 2])
        sink.write(clip[:, SR // 2:SR // 2 + 1000])
        sink.write(clip[:, SR // 2 + 1000:SR // 2 + 2000])
        sink.write(clip[:, SR // 2 + 2000:SR // 2 + 3000])  # measured (4 chunks): a fast producer, it starts
        while p.frame < sink.start_frame + SR // 4:
            time.sleep(0.005)
        at = p.frame
        sink.stop()
        sink.write(clip[:, SR // 2 + 3000:])  # ignored
        sink.end(True)
        time.sleep(0.2)
    fade = int(0.005 * SR)
    assert dev.out[at - BLOCK:at].any()
    assert not dev.out[at + BLOCK + fade:dev.frames].any()
    assert sink.ok is False and stats.stopped == 1


def test_loop_first_pass_streamed_then_the_buffer_seamlessly():
    p = make_player()
    clip = noise(int(0.3 * SR), 3)
    sink = StreamDelivery(p, 5, Req(loop=True), StreamStats())
    with Device(p, 1.6) as dev:
        produce(sink, clip, 4410, 0.005)
        while p.frame < sink.start_frame + 3 * clip.shape[1] + BLOCK:
            time.sleep(0.02)
        p.stop_slot(5)
    s, n = sink.start_frame, clip.shape[1]
    played = dev.out[s:s + 3 * n].T
    np.testing.assert_allclose(played, np.tile(clip, 3), atol=2e-6)  # the crossfade sums the same samples


def test_the_voice_closes_with_the_last_frame_not_at_end():
    """Regression: the generation thread measures the finished clip's levels between the last chunk
    and ``end()``; a voice closed only at ``end()`` ran dry meanwhile and counted a miss."""
    p = make_player()
    stats = StreamStats()
    clip = noise(int(0.2 * SR), 4)
    sink = StreamDelivery(p, 6, Req(), stats)
    with Device(p, 1.5):
        sink.begin(SR, clip.shape[1])
        for s in range(0, clip.shape[1], 4410):
            sink.write(clip[:, s:s + 4410])
        time.sleep(0.6)  # the clip has played out before end() comes
        sink.end(True)
        assert stats.as_dict()["misses"] == 0


# ---- the rtmixer player (rtmixer's compiled callback driven offline, as tests/output/test_rt_player.py)
def rt_player():
    from livegen.output.rt_player import RtPlayer
    from livegen.output.rt_voices import OfflineMixer

    m = OfflineMixer(2, SR, BLOCK)
    rt = RtPlayer(AudioSettings(sample_rate=SR, blocksize=BLOCK, fade_ms=5.0), TempoSettings(bpm=120.0), mixer=m)
    rt.start()
    return rt, m


def render(rt, m, blocks: int, out: list) -> None:
    for _ in range(blocks):
        rt.pump()
        out.append(m.render(BLOCK))


@pytest.mark.parametrize("loop", [False, True])
def test_rt_player_plays_the_stream_exactly_and_hands_a_loop_over_seamlessly(loop):
    rt, m = rt_player()
    clip = noise(int(0.3 * SR), 7)
    n = clip.shape[1]
    deferred: list = []
    sink = StreamDelivery(rt, 2, Req(loop=loop), StreamStats(), defer=lambda delay, fn: deferred.append((delay, fn)))
    out: list = []
    sink.begin(SR, n)
    for s in range(0, n, 2048):  # a chunk per block: faster than real time
        sink.write(clip[:, s:s + 2048])
        render(rt, m, 1, out)
    sink.end(True)
    assert len(deferred) == (1 if loop else 0)
    if loop:  # the hand-over runs later, as the daemon's defer does it (after a few feeder passes)
        delay, fn = deferred[0]
        assert delay >= 0.1
        render(rt, m, 8, out)
        fn()
    render(rt, m, int(3.5 * n / BLOCK), out)
    x = np.concatenate(out).T
    s0 = sink.start_frame
    assert s0 is not None and sink.ok and not x[:, :s0].any()
    if loop:
        np.testing.assert_allclose(x[:, s0:s0 + 3 * n], np.tile(clip, 3), atol=2e-6)
        assert rt.stats()["slots_playing"] == [2]
    else:
        np.testing.assert_array_equal(x[:, s0:s0 + n], clip)
        assert not x[:, s0 + n:].any()
    assert sink.stats.as_dict()["misses"] == 0


def test_a_pessimistic_remembered_rate_does_not_delay_a_fast_stream():
    """The remembered rate (1,000 frames/s) would put the start seconds ahead; that start is not
    committed, and the stream's own rate (fast) starts it after its 4th chunk."""
    p = make_player()
    stats = StreamStats()
    stats.rates["m"] = 1000.0
    clip = noise(SR, 5)
    sink = StreamDelivery(p, 7, Req(), stats)
    with Device(p, 2.0):
        sink.begin(SR, clip.shape[1])
        t0 = p.frame
        for s in range(0, clip.shape[1], 4410):
            time.sleep(0.01)
            sink.write(clip[:, s:s + 4410])
            if s == 0:
                assert not sink.started
        sink.end(True)
    assert sink.start_frame is not None and sink.start_frame - t0 < int(0.3 * SR)
    assert stats.rates["m"] > 2 * SR  # the mean moved towards what this stream did


def _play_out(p: Player, sink: StreamDelivery, clip: np.ndarray) -> None:
    while p.frame < sink.start_frame + clip.shape[1] + 2 * BLOCK:
        time.sleep(0.02)


def _assert_started_with_its_end(sink: StreamDelivery, stats: StreamStats, dev: Device, clip: np.ndarray,
                                 done_frame: int) -> None:
    """It started within a few blocks of its last chunk (not after it), played whole, no miss."""
    start = sink.start_frame
    assert start is not None and start <= done_frame + 3 * BLOCK, (start, done_frame)
    assert stats.as_dict()["misses"] == 0
    np.testing.assert_array_equal(dev.out[start:start + clip.shape[1]].T, clip)


def test_a_stream_far_slower_than_real_time_starts_with_its_last_chunk_not_after_it():
    """Regression: MusicGen small in the daemon on the 2-core machine made 0.05x real time (1,714
    frames/s of 32 kHz audio); its 3 s clips sounded 1.7 s *after* they were complete (buffered:
    0.013 s), because SAFETY put the committed start past the last chunk. Here 0.1 s of audio
    comes in 6 chunks, one every 0.5 s (0.033x real time): the start must come with the last chunk."""
    p = make_player()
    stats = StreamStats()
    clip = noise(4410, 3)
    sink = StreamDelivery(p, 5, Req(), stats)
    chunk = 735
    with Device(p, 4.5) as dev:
        sink.begin(SR, clip.shape[1])
        for s in range(0, clip.shape[1], chunk):
            time.sleep(0.5)
            sink.write(clip[:, s:s + chunk])
        sink.end(True)
        done_frame = p.frame
        _play_out(p, sink, clip)
    _assert_started_with_its_end(sink, stats, dev, clip, done_frame)


def test_a_slow_stream_whose_end_comes_at_once_does_not_start_after_it():
    """Regression: the third MusicGen stream of a daemon run committed its start 11.2 s ahead with
    19,298 frames to come at 1,703 frames/s (11.3 s), but the last 3,298 frames (EnCodec's flush)
    came at once: it sounded 1.8 s after its end. Here 8 chunks come every 0.5 s and the 9th, the
    tail, right after the 8th: the start must come with the tail."""
    p = make_player()
    stats = StreamStats()
    chunk = 1470
    clip = noise(9 * chunk, 4)
    sink = StreamDelivery(p, 6, Req(), stats)
    with Device(p, 5.5) as dev:
        sink.begin(SR, clip.shape[1])
        for i, s in enumerate(range(0, clip.shape[1], chunk)):
            if i < 8:
                time.sleep(0.5)
            sink.write(clip[:, s:s + chunk])
        sink.end(True)
        done_frame = p.frame
        _play_out(p, sink, clip)
    _assert_started_with_its_end(sink, stats, dev, clip, done_frame)
