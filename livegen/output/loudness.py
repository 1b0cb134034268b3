"""Clip levels: loudness normalisation (ITU-R BS.1770) under a true-peak ceiling.

Runs on the generation thread (:mod:`livegen.engine.worker`), on the raw render, before the clip
is cut and faded to its length; never on the event loop or the audio callback. numpy, scipy and
``pyloudnorm`` only (no MLX).

What :func:`normalize` does with a clip ``[channels, frames]``:

1. Non-finite samples (NaN, inf: a diverged model) become 0 and are counted.
2. The integrated loudness is measured with ``pyloudnorm`` (BS.1770-4: K-weighting, 400 ms
   blocks with 75 % overlap, absolute gate at -70 LUFS, relative gate at -10 LU). A clip shorter
   than one 400 ms block cannot be measured that way; its loudness is estimated from its
   unweighted mean square (``-0.691 + 10 log10(sum of the channels' mean squares)``, the BS.1770
   formula without K-weighting or gating; ``method: "rms"``).
3. Silence (every block under the absolute gate, or an all-zero clip) is left as it is
   (``method: "silent"``, gain 0 dB): there is nothing to normalise and no noise floor is raised.
   Otherwise the gain is ``target - measured``, but never more than ``max_gain_db`` of boost,
   so a near-silent clip's noise floor is not pulled up to the target.
4. The true peak (the peak of the signal oversampled 4x with soxr, as BS.1770-4 Annex 2
   describes) must stay under ``true_peak_dbtp``. When the gained clip would exceed it, a
   look-ahead peak limiter reduces only the peaks (a gain curve that reaches each peak's
   reduction 5 ms before it and holds it 5 ms after, at most ``max_limit_db`` deep) and the
   clip gain is raised again to make up the loudness the limiter took; what still exceeds the
   ceiling is taken off the clip gain. The ceiling is aimed at :data:`MARGIN_DB` below the
   setting, so a meter with a different oversampling filter reads it under the ceiling too.

The values applied come back as :class:`Levels` (they go into the clip and its sidecar).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BLOCK_SECONDS = 0.4  # BS.1770 gating block
ABSOLUTE_GATE_LUFS = -70.0
OVERSAMPLE = 4
MARGIN_DB = 0.1  # the ceiling is aimed this far below the setting (other meters' filters differ)
LOOKAHEAD_SECONDS = 0.005  # the limiter's attack (and hold) time
ITERATIONS = 6


@dataclass(frozen=True)
class Levels:
    """What normalisation measured and applied to one clip."""

    method: str  # "bs1770" | "rms" (shorter than a 400 ms block) | "silent"
    measured_lufs: float | None  # loudness of the raw render (None: silent)
    target_lufs: float
    gain_db: float  # the clip gain applied
    limited_db: float  # the deepest peak reduction of the limiter (0: the limiter did nothing)
    true_peak_before_dbtp: float | None
    true_peak_dbtp: float | None  # after (None: silent)
    lufs: float | None  # loudness after, measured the same way as before
    non_finite: int = 0  # NaN/inf samples replaced by 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: floats rounded to 0.001, non-finite ones as None."""
        return {k: ((round(v, 3) if math.isfinite(v) else None) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def preload() -> None:
    """Import what :func:`normalize` uses and run it once on a short test signal. Called by the
    generation thread while the models load: the first import of scipy and pyloudnorm takes a
    few hundred milliseconds under the GIL, which would starve the audio callback if it happened
    with the first clip while the stream plays."""
    import pyloudnorm  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import soxr  # noqa: F401

    t = np.arange(22050) / 44100.0
    normalize(np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32), 44100)


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def _lin(db: float) -> float:
    return 10.0 ** (db / 20.0)


def true_peak(audio: np.ndarray, sample_rate: int) -> float:
    """The true peak (linear) of ``audio`` [C, N]: the largest magnitude of the signal
    oversampled 4x (soxr, very high quality), or of the samples themselves if larger."""
    import soxr

    if audio.size == 0:
        return 0.0
    sample_peak = float(np.max(np.abs(audio)))
    if audio.shape[1] < 4:
        return sample_peak
    up = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float64), sample_rate,
                       sample_rate * OVERSAMPLE, quality="VHQ")
    return max(sample_peak, float(np.max(np.abs(up))) if up.size else 0.0)


def _peak_per_sample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """For each sample n, the largest magnitude of the oversampled signal between n and n+1."""
    import soxr

    c, n = audio.shape
    up = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float64), sample_rate,
                       sample_rate * OVERSAMPLE, quality="VHQ")
    env = np.abs(up).max(axis=1)
    full = np.zeros(n * OVERSAMPLE)
    m = min(len(env), len(full))
    full[:m] = env[:m]
    per = full.reshape(n, OVERSAMPLE).max(axis=1)
    per[1:] = np.maximum(per[1:], per[:-1])  # the stretch before each sample too
    return np.maximum(per, np.abs(audio).max(axis=0))


def loudness(audio: np.ndarray, sample_rate: int) -> tuple[float, str]:
    """``(LUFS, method)`` of ``audio`` [C, N]; ``-inf`` for silence (see the module docstring)."""
    c, n = audio.shape
    if n == 0 or not np.any(audio):
        return -math.inf, "silent"
    if n <= int(BLOCK_SECONDS * sample_rate) or c > 5:
        ms = float(np.sum(np.mean(np.square(audio, dtype=np.float64), axis=1)))
        return (-0.691 + 10.0 * math.log10(ms) if ms > 0 else -math.inf), "rms"
    import pyloudnorm

    value = float(pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T.astype(np.float64)))
    return value, "bs1770"


def _limit_curve(audio: np.ndarray, sample_rate: int, ceiling: float, floor: float) -> tuple[np.ndarray, float]:
    """A smooth gain curve (<= 1, >= ``floor``) that keeps each sample's oversampled peak under
    ``ceiling``; returns it and its deepest reduction in dB (positive)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    peaks = _peak_per_sample(audio, sample_rate)
    need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    if float(need.min()) >= 1.0:
        return np.ones(audio.shape[1]), 0.0
    half = max(1, int(LOOKAHEAD_SECONDS * sample_rate))
    held = minimum_filter1d(need, size=4 * half + 1, mode="nearest")  # every need within 2*half
    curve = uniform_filter1d(held, size=2 * half + 1, mode="nearest")  # a mean of values <= need[n]
    curve = np.clip(np.minimum(curve, held), floor, 1.0)
    return curve, -_db(float(curve.min()))


def normalize(audio: np.ndarray, sample_rate: int, target_lufs: float = -14.0, true_peak_dbtp: float = -1.0,
              max_gain_db: float = 30.0, max_limit_db: float = 6.0) -> tuple[np.ndarray, Levels]:
    """``audio`` [C, N] normalised to ``target_lufs`` under ``true_peak_dbtp``; returns a new
    float32 array and the :class:`Levels` applied (see the module docstring)."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be [channels, frames], got shape {audio.shape}")
    x = np.array(audio, dtype=np.float64)
    bad = ~np.isfinite(x)
    non_finite = int(bad.sum())
    if non_finite:
        x[bad] = 0.0
    measured, method = loudness(x, sample_rate)
    tp_before = true_peak(x, sample_rate)
    if not math.isfinite(measured) or measured < ABSOLUTE_GATE_LUFS:
        tp = _db(tp_before)
        return x.astype(np.float32), Levels("silent", None, float(target_lufs), 0.0, 0.0,
                                            tp if math.isfinite(tp) else None, tp if math.isfinite(tp) else None,
                                            None, non_finite)
    ceiling = _lin(true_peak_dbtp - MARGIN_DB)
    floor = _lin(-max(0.0, max_limit_db))
    gain_db = min(target_lufs - measured, max_gain_db)
    limited_db = 0.0
    out = x * _lin(gain_db)
    after, _ = loudness(out, sample_rate)
    for _ in range(ITERATIONS):
        y = x * _lin(gain_db)
        curve, limited_db = _limit_curve(y, sample_rate, ceiling, floor) if max_limit_db > 0 else (None, 0.0)
        if curve is not None:
            y *= curve[None, :]
        tp = true_peak(y, sample_rate)
        if tp > ceiling:  # deeper than the limiter may go: take the rest off the clip gain
            gain_db += _db(ceiling / tp) - 0.01
            continue
        out = y
        after, _ = loudness(out, sample_rate)
        short = target_lufs - after
        room = max_gain_db - gain_db
        if abs(short) <= 0.05 or (short > 0 and room <= 0.01) or (short > 0 and limited_db >= max_limit_db - 0.01):
            break
        gain_db += min(short, room)
    tp = true_peak(out, sample_rate)
    if tp > ceiling:  # the last resort: a plain gain, which keeps the ceiling by construction
        out *= ceiling / tp
        gain_db += _db(ceiling / tp)
        tp = true_peak(out, sample_rate)
        after, _ = loudness(out, sample_rate)
    return out.astype(np.float32), Levels(method, measured, float(target_lufs), gain_db, limited_db,
                                          _db(tp_before), _db(tp), after, non_finite)
