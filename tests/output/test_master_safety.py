"""The mixer's master safety: nothing beyond full scale leaves the mixer (livegen/output/mixer.py)."""

from __future__ import annotations

import numpy as np

from livegen.output.mixer import Mixer
from livegen.output.player import Player
from livegen.output.ringbuffer import RingBuffer
from livegen.settings import AudioSettings


def render(m: Mixer, frames: int, block: int = 256) -> np.ndarray:
    out = np.zeros((block, m.channels), np.float32)
    res = []
    for t in range(0, frames, block):
        m.mix(out, t)
        res.append(out.copy())
    return np.concatenate(res)


def test_overlapping_loud_voices_never_exceed_full_scale():
    m = Mixer(2, 16, fade_samples=64)
    rng = np.random.default_rng(1)
    for slot in range(8):  # eight voices each at 0.9 peak, overlapping: their sum reaches ~7
        clip = rng.uniform(-0.9, 0.9, (2, 20000)).astype(np.float32)
        clip[:, :2000] = 0.9
        m.schedule(slot, m.prepare(clip), start_frame=slot * 100, loop=slot % 2 == 0, gain=1.0)
    y = render(m, 48000)
    assert np.abs(y).max() <= 1.0
    assert np.abs(y).max() == 1.0  # it did clip: the sum went past full scale
    assert m.clipped_blocks > 0


def test_below_full_scale_the_mix_is_untouched():
    m = Mixer(1, 4, fade_samples=4)
    clip = np.linspace(-0.99, 0.99, 5000, dtype=np.float32)[None]
    m.schedule(0, m.prepare(clip), start_frame=0)
    y = render(m, 5120)[:, 0]
    assert np.array_equal(y[:5000], clip[0])
    assert m.clipped_blocks == 0


def test_nan_and_inf_never_reach_the_output():
    m = Mixer(2, 4, fade_samples=4)
    bad = np.full((2, 1000), np.nan, np.float32)
    bad[:, ::3] = np.inf
    m.schedule(0, m.prepare(bad), start_frame=0)  # prepare zeroes them
    ring = RingBuffer(2, 4096)
    chunk = np.full((2, 512), np.nan, np.float32)
    chunk[0, :10] = -np.inf
    ring.write_all(chunk)
    m.stream(1, ring, start_frame=0)  # a stream voice is not prepared: the output stage catches it
    y = render(m, 1024)
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0
    assert m.non_finite_blocks >= 1


def test_the_player_mixes_with_the_safety_on():
    p = Player(AudioSettings(blocksize=256))
    assert p.mixer.ceiling == 1.0
    p.mixer.schedule(0, p.mixer.prepare(np.full((2, 4096), 3.0, np.float32)), 0)
    p.mixer.schedule(1, p.mixer.prepare(np.full((2, 4096), -3.0, np.float32)), 600)
    out = np.zeros((256, 2), np.float32)
    peak = 0.0
    for _ in range(20):
        p.callback(out, 256, None, None)
        peak = max(peak, float(np.abs(out).max()))
    assert peak == 1.0
    assert p.stats()["clipped_blocks"] > 0
