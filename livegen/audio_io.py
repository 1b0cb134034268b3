"""Audio files: read/write WAV (and whatever libsndfile reads) with soundfile, plus resampling.

Arrays are channel-first float32 ``[channels, frames]``.
"""

from __future__ import annotations

import os
import tempfile
from math import gcd
from pathlib import Path

import numpy as np

from livegen.errors import LivegenError


class AudioFileError(LivegenError):
    """An audio file could not be read or written."""


def read_audio(
    path: str | Path, sample_rate: int | None = None, channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Read a file as float32 ``[channels, frames]``; optionally resample and up/down-mix.

    Returns ``(audio, rate)`` where rate is ``sample_rate`` when given, else the file's rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file {path} does not exist.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
        raise AudioFileError(f"could not read audio file {path}: {' '.join(str(exc).split())}") from None
    audio = np.ascontiguousarray(data.T)
    if channels is not None:
        audio = match_channels(audio, channels)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, int(rate)


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono -> copies; more channels -> their mean (as stable-audio-tools' ``prepare_audio``)."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True).astype(np.float32)
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if have > channels:
        return audio[:channels].copy()
    raise AudioFileError(f"cannot turn {have} channels into {channels}.")


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (windowed-sinc polyphase, Kaiser window) along the last axis."""
    if orig_rate == target_rate:
        return np.asarray(audio, dtype=np.float32)
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError("sample rates must be positive")
    g = gcd(int(orig_rate), int(target_rate))
    up, down = int(target_rate) // g, int(orig_rate) // g
    x = np.asarray(audio, dtype=np.float64)
    n_in = x.shape[-1]
    n_out = -(-n_in * up // down)
    # filter: cutoff at the lower Nyquist, in units of the upsampled rate
    cutoff = 1.0 / max(up, down)
    half = 16 * max(up, down)
    k = np.arange(-half, half + 1)
    h = cutoff * np.sinc(cutoff * k) * np.kaiser(2 * half + 1, 8.6) * up
    # output sample m sits at upsampled position m*down; input sample j sits at j*up
    taps = -(-(2 * half + 1) // up) + 1
    out = np.empty(x.shape[:-1] + (n_out,), dtype=np.float32)
    for start in range(0, n_out, 16384):
        m = np.arange(start, min(start + 16384, n_out))
        pos = m * down
        j0 = -(-(pos - half) // up)  # first input index whose position >= pos - half
        idx = j0[:, None] + np.arange(taps)[None, :]
        offs = pos[:, None] - idx * up + half
        valid = (offs >= 0) & (offs <= 2 * half) & (idx >= 0) & (idx < n_in)
        w = np.where(valid, h[np.clip(offs, 0, 2 * half)], 0.0)
        gathered = x[..., np.clip(idx, 0, n_in - 1)]
        out[..., start:start + len(m)] = np.einsum("...mt,mt->...m", gathered, w)
    return out


def fit_length(audio: np.ndarray, frames: int) -> np.ndarray:
    """Cut or zero-pad the last axis to ``frames``."""
    have = audio.shape[-1]
    if have >= frames:
        return np.ascontiguousarray(audio[..., :frames])
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, frames - have)]
    return np.pad(audio, pad)


def check_writable(path: str | Path) -> Path:
    """Raise AudioFileError unless a file can be created at ``path`` (checked without writing it)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AudioFileError(f"output path {path} is a directory.")
    if not parent.is_dir():
        raise AudioFileError(f"output directory {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise AudioFileError(f"output path {path} is not writable.")
    return path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> Path:
    """Write ``[channels, frames]`` audio as WAV (32-bit float by default), atomically."""
    import soundfile as sf

    path = check_writable(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        sf.write(tmp, np.ascontiguousarray(audio.T), int(sample_rate), subtype=subtype, format="WAV")
        os.replace(tmp, path)
    except Exception as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise AudioFileError(f"could not write {path}: {' '.join(str(exc).split())}") from None
    return path
