from fractions import Fraction

import numpy as np
import pytest

from livegen import tempo


def _exact(bars, bpm, bpb, sr):
    x = Fraction(bars) * bpb * 60 * sr / Fraction(bpm)
    return int(x + Fraction(1, 2)) if x >= 0 else None


@pytest.mark.parametrize("sr", [32000, 44100, 48000])
def test_bars_to_samples_grid(sr):
    for bpm in (60, 90, 97.5, 120, 128, 133.33, 140, 174, 200):
        for bars in (0.25, 0.5, 1, 2, 3, 4, 7, 8, 16):
            for bpb in (3, 4, 7):
                n = tempo.bars_to_samples(bars, bpm, bpb, sr)
                assert n == _exact(bars, bpm, bpb, sr)
                assert abs(n - bars * bpb * 60 / bpm * sr) <= 0.5 + 1e-6


def test_bars_are_additive_without_drift():
    # 1000 bars at 133 bpm: the whole length is the exact product, not 1000 rounded bars.
    one = tempo.bars_to_samples(1, 133, 4, 44100)
    many = tempo.bars_to_samples(1000, 133, 4, 44100)
    assert many == round(1000 * 4 * 60 / 133 * 44100)
    assert many != 1000 * one
    assert tempo.samples_to_bars(tempo.bars_to_samples(8, 120, 4, 48000), 120, 4, 48000) == 8.0


def _tone(n, sr=44100, f=220.0):
    t = np.arange(n) / sr
    return np.stack([np.sin(2 * np.pi * f * t), 0.5 * np.sin(2 * np.pi * f * 1.5 * t)]).astype(np.float32)


def test_fit_cut_and_pad_lengths():
    a = _tone(1000)
    assert tempo.fit_to_length(a, 600, 50).shape == (2, 600)
    b = tempo.fit_to_length(a, 1500, 50)
    assert b.shape == (2, 1500) and b.dtype == np.float32
    assert np.all(b[:, 1000:] == 0)
    assert np.allclose(b[:, 100:900], a[:, 100:900])
    assert tempo.fit_to_length(a, 0, 50).shape == (2, 0)


def test_one_shot_fades_end_to_zero():
    a = _tone(5000) * 0 + 1.0
    out = tempo.fit_to_length(a, 3000, 200)
    assert abs(out[0, -1]) < 1e-3 and abs(out[0, 0]) < 0.1
    assert out[0, 1500] == 1.0
    assert np.all(np.diff(out[0, -200:]) <= 0)


def test_loop_point_has_no_discontinuity():
    sr, f = 44100, 220.0
    n_loop = tempo.bars_to_samples(1, 137, 4, sr)  # not a whole number of periods of f
    a = _tone(n_loop + 2000, sr, f)
    out = tempo.fit_to_length(a, n_loop, 441, loop=True)
    # The largest step inside the material is the sine's own slope; the seam must not exceed it.
    inner = np.abs(np.diff(out[:, 500:-500], axis=1)).max()
    seam = np.abs(out[:, 0] - out[:, -1]).max()
    assert seam <= inner * 1.05
    # Without crossfade the naive cut jumps much more than that.
    naive = np.abs(a[:, 0] - a[:, n_loop - 1]).max()
    assert naive > 5 * inner
    # Looping the result twice stays smooth everywhere.
    twice = np.concatenate([out, out], axis=1)
    assert np.abs(np.diff(twice, axis=1)).max() <= inner * 1.05


def test_short_loop_passes_through_silence():
    a = _tone(800) + 0.5
    out = tempo.fit_to_length(a, 1000, 64, loop=True)
    assert np.abs(out[:, 0]).max() < 0.05 and np.abs(out[:, -1]).max() < 0.05
    assert np.abs(np.diff(np.concatenate([out, out], axis=1), axis=1)).max() < 0.1


@pytest.mark.parametrize("bpm", [90, 120, 137, 174])
@pytest.mark.parametrize("launch, beats", [("beat", 1), ("bar", 4)])
def test_launch_quantisation(bpm, launch, beats):
    sr = 44100
    grid = [round(Fraction(k * beats * 60 * sr) / Fraction(bpm)) for k in range(0, 40)]
    for now in [0, 1, 1000, 22050, grid[3] - 1, grid[3], grid[3] + 1, grid[17] + 5]:
        f = tempo.next_launch_frame(now, launch, bpm, 4, sr)
        assert f >= now
        assert f == min(g for g in grid if g >= now)
        lb = tempo.last_boundary_frame(now, launch, bpm, 4, sr)
        assert lb == max(g for g in grid if g <= now)
    assert tempo.next_launch_frame(12345, "now", 120, 4, sr) == 12345


def test_launch_grid_with_origin():
    assert tempo.next_launch_frame(100, "bar", 120, 4, 44100, origin_frame=50) == 50 + 88200
    assert tempo.next_launch_frame(51, "bar", 120, 4, 44100, origin_frame=50) == 50 + 88200
    assert tempo.next_launch_frame(50, "bar", 120, 4, 44100, origin_frame=50) == 50
    with pytest.raises(ValueError):
        tempo.next_launch_frame(0, "sometime", 120, 4, 44100)
