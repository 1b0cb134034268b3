"""Exact bar arithmetic, loop-safe fitting and launch quantisation.

All bar/beat positions are computed with :class:`fractions.Fraction` from the exact binary
value of the inputs and rounded once (half up), so a grid of bars never drifts by a sample.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

LAUNCHES = ("now", "beat", "bar")


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _beat_frames(bpm: float, sample_rate: int) -> Fraction:
    if not bpm > 0:
        raise ValueError(f"bpm must be positive, not {bpm!r}")
    return Fraction(60) * Fraction(sample_rate) / Fraction(bpm)


def bars_to_seconds(bars: float, bpm: float, beats_per_bar: int = 4) -> float:
    return float(Fraction(bars) * beats_per_bar * 60 / Fraction(bpm))


def bars_to_samples(bars: float, bpm: float, beats_per_bar: int, sample_rate: int) -> int:
    """``round(bars * beats_per_bar * 60 / bpm * sample_rate)``, computed exactly (half up)."""
    if bars < 0:
        raise ValueError(f"bars must not be negative, not {bars!r}")
    return _round_half_up(Fraction(bars) * beats_per_bar * _beat_frames(bpm, sample_rate))


def samples_to_bars(n_samples: int, bpm: float, beats_per_bar: int, sample_rate: int) -> float:
    return float(Fraction(n_samples) / (beats_per_bar * _beat_frames(bpm, sample_rate)))


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine rise of ``n`` samples from >0 to <1 (equal-gain: ramp + reversed == 1)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


def fit_to_length(audio: np.ndarray, n_samples: int, fade_samples: int, loop: bool = False,
                  fade_in_samples: int | None = None) -> np.ndarray:
    """Cut or zero-pad ``audio`` [C, N] to exactly ``n_samples`` frames without clicks.

    One-shot (``loop=False``): a short fade-in (``fade_in_samples``, default
    ``min(fade_samples, 32)`` so transients survive) and a ``fade_samples`` fade-out at the end
    of the material (at the cut, or where the audio ends when it is padded).

    Loop (``loop=True``): when the audio is at least ``n_samples + fade_samples`` long, the
    material just after the cut (its natural continuation) is crossfaded into the head, so the
    jump from the last frame back to the first is continuous; generate a little more than the
    loop length to get this. When it is shorter, the head is faded in and the end faded out, so
    the wrap passes through silence instead of a step.

    Returns a new float32 array; the input is not modified.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be [channels, frames], got shape {audio.shape}")
    if n_samples < 0:
        raise ValueError("n_samples must not be negative")
    c, n = audio.shape
    out = np.zeros((c, n_samples), dtype=np.float32)
    keep = min(n, n_samples)
    out[:, :keep] = audio[:, :keep]
    if n_samples == 0 or keep == 0:
        return out
    fade = max(0, min(int(fade_samples), keep // 2))
    if loop and fade > 0 and n >= n_samples + fade:
        up = _ramp(fade)
        tail = audio[:, n_samples:n_samples + fade].astype(np.float32)
        out[:, :fade] = out[:, :fade] * up + tail * up[::-1]
        return out
    fin = fade if loop else min(fade, 32 if fade_in_samples is None else max(0, int(fade_in_samples)))
    if fin > 0:
        out[:, :fin] *= _ramp(fin)
    if fade > 0:
        out[:, keep - fade:keep] *= _ramp(fade)[::-1]
    return out


def next_launch_frame(now_frame: int, launch: str, bpm: float, beats_per_bar: int, sample_rate: int,
                      origin_frame: int = 0) -> int:
    """First frame >= ``now_frame`` on the launch grid.

    ``"now"`` returns ``now_frame``; ``"beat"``/``"bar"`` return the next beat/bar boundary of
    the grid anchored at ``origin_frame`` (boundaries are ``origin + round(k * period)``).
    """
    if launch == "now":
        return int(now_frame)
    if launch not in LAUNCHES:
        raise ValueError(f"unknown launch {launch!r}; use one of {', '.join(LAUNCHES)}")
    period = _beat_frames(bpm, sample_rate) * (beats_per_bar if launch == "bar" else 1)
    rel = int(now_frame) - int(origin_frame)
    k = math.ceil(Fraction(rel) / period) - 1
    while origin_frame + _round_half_up(k * period) < now_frame:
        k += 1
    return int(origin_frame + _round_half_up(k * period))


def last_boundary_frame(now_frame: int, launch: str, bpm: float, beats_per_bar: int, sample_rate: int,
                        origin_frame: int = 0) -> int:
    """Last grid boundary <= ``now_frame`` (used to re-anchor the grid on a tempo change)."""
    if launch == "now":
        return int(now_frame)
    period = _beat_frames(bpm, sample_rate) * (beats_per_bar if launch == "bar" else 1)
    k = math.floor(Fraction(int(now_frame) - int(origin_frame)) / period) + 1
    while origin_frame + _round_half_up(k * period) > now_frame:
        k -= 1
    return int(origin_frame + _round_half_up(k * period))


def check_bpm(bpm: float) -> float:
    """``bpm`` as a float, or :class:`ValueError` when outside the players' 20-400 range."""
    if not 20.0 <= bpm <= 400.0:
        raise ValueError(f"bpm must be between 20 and 400, not {bpm!r}")
    return float(bpm)


def pivot_origin(now_frame: int, bpm: float, beats_per_bar: int, sample_rate: int, origin: int) -> int:
    """The grid origin a tempo change pivots on: the start of the bar playing at ``now_frame``, so
    launches after the change stay on the bars already heard."""
    return last_boundary_frame(now_frame, "bar", bpm, beats_per_bar, sample_rate, origin)
