"""The melody chromagram of MusicGen Melody, in numpy.

Reproduces transformers' ``MusicgenMelodyFeatureExtractor`` (``feature_extraction_musicgen_melody.py``):
resampling to 32 kHz (torchaudio's windowed-sinc resampler, rolloff 0.945, 24 zero crossings),
mixing each clip's channels to mono, truncation to ``chunk_length`` seconds, a power spectrogram normalised by the window energy (torchaudio's
``Spectrogram(power=2, normalized=True, center=True)``, periodic Hann window), librosa's chroma
filter bank (transformers' ``chroma_filter_bank``), normalisation by the per-frame maximum, and the
arg-max turned one-hot. It runs once per request, so numpy (float64 inside) is fine.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 32_000
N_FFT = 16_384
HOP_LENGTH = 4_096
CHUNK_LENGTH_S = 30


def chroma_filter_bank(
    num_frequency_bins: int,
    num_chroma: int,
    sampling_rate: int,
    tuning: float = 0.0,
    power: float | None = 2.0,
    weighting_parameters: tuple[float, float] | None = (5.0, 2.0),
    start_at_c_chroma: bool = True,
) -> np.ndarray:
    """librosa's chroma filter bank as transformers builds it: ``[num_chroma, num_frequency_bins // 2 + 1]``.

    ``num_frequency_bins`` is the FFT size."""
    frequencies = np.linspace(0, sampling_rate, num_frequency_bins, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / num_chroma)
    freq_bins = num_chroma * np.log2(frequencies / (a440 / 16))
    # the 0 Hz bin: 1.5 octaves below bin 1
    freq_bins = np.concatenate(([freq_bins[0] - 1.5 * num_chroma], freq_bins))
    bins_width = np.concatenate((np.maximum(freq_bins[1:] - freq_bins[:-1], 1.0), [1]))
    filters = np.subtract.outer(freq_bins, np.arange(0, num_chroma, dtype="d")).T
    half = np.round(float(num_chroma) / 2)
    filters = np.remainder(filters + half + 10 * num_chroma, num_chroma) - half
    filters = np.exp(-0.5 * (2 * filters / np.tile(bins_width, (num_chroma, 1))) ** 2)
    if power is not None:
        filters = filters / np.sum(filters**power, axis=0, keepdims=True) ** (1.0 / power)
    if weighting_parameters is not None:
        center, half_width = weighting_parameters
        filters *= np.tile(
            np.exp(-0.5 * (((freq_bins / num_chroma - center) / half_width) ** 2)), (num_chroma, 1)
        )
    if start_at_c_chroma:
        filters = np.roll(filters, -3 * (num_chroma // 12), axis=0)
    return np.ascontiguousarray(filters[:, : int(1 + num_frequency_bins / 2)])


def resample(
    audio: np.ndarray, orig_freq: int, new_freq: int, lowpass_filter_width: int = 24, rolloff: float = 0.945
) -> np.ndarray:
    """torchaudio's ``functional.resample`` (``sinc_interp_hann``) along the last axis, float32 out.

    The defaults are the ones the MusicGen Melody feature extractor uses."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError("sample rates must be positive")
    if orig_freq == new_freq:
        return audio
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    # the kernel is built in float32, step by step as torchaudio builds it for float32 audio (a float64
    # kernel is more exact but differs from the reference by ~1e-5)
    f32 = np.float32
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=f32)[None, :] / f32(orig)
    t = np.arange(0, -new, -1, dtype=f32)[:, None] / f32(new) + idx
    t = np.clip(t * f32(base), -lowpass_filter_width, lowpass_filter_width).astype(f32)
    window = np.cos(t * f32(math.pi) / f32(lowpass_filter_width) / f32(2)) ** 2
    t = t * f32(math.pi)
    safe = np.where(t == 0, f32(1), t)
    kernels = np.where(t == 0, f32(1), np.sin(safe) / safe) * (
        window * f32(base / orig)
    )  # [new, 2 width + orig]

    shape = audio.shape
    flat = audio.reshape(-1, shape[-1]).astype(np.float64)
    length = shape[-1]
    padded = np.pad(flat, [(0, 0), (width, width + orig)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1], axis=-1)[:, ::orig]
    out = (frames @ kernels.T.astype(np.float64)).reshape(flat.shape[0], -1)
    target = math.ceil(new * length / orig)
    return out[:, :target].reshape(shape[:-1] + (-1,)).astype(np.float32)


def power_spectrogram(wav: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """torchaudio ``Spectrogram(n_fft, hop_length, power=2, normalized=True, center=True)``: ``[B, F, T]``."""
    window = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    half = n_fft // 2
    padded = np.pad(wav.astype(np.float64), [(0, 0), (half, half)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[:, ::hop_length]
    spec = np.fft.rfft(frames * window, axis=-1)  # [B, T, F]
    power = (spec.real**2 + spec.imag**2) / np.sum(window**2)
    return power.transpose(0, 2, 1)


def chromagram(
    wav: np.ndarray,
    *,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_chroma: int = 12,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Mono clips ``[B, N]`` at ``sample_rate`` -> chroma normalised to a per-frame maximum of 1,
    ``[B, T, n_chroma]`` (T = 1 + N // hop_length, after the reference's padding to ``n_fft``)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.shape[-1] < n_fft:
        pad = n_fft - wav.shape[-1]
        wav = np.pad(wav, [(0, 0), (pad // 2, pad // 2 + pad % 2)])
    filters = chroma_filter_bank(n_fft, n_chroma, sample_rate, tuning=0)
    raw = np.einsum("cf,bft->bct", filters, power_spectrogram(wav, n_fft, hop_length))
    norm = raw / np.maximum(np.max(np.abs(raw), axis=1, keepdims=True), 1e-6)
    return norm.transpose(0, 2, 1)


def chroma_features(
    audio: np.ndarray,
    sample_rate: int,
    *,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_chroma: int = 12,
    chunk_length: int = CHUNK_LENGTH_S,
    max_length: int | None = None,
    target_sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """MusicGen Melody's melody conditioning: one-hot chroma ``[B, T, n_chroma]`` (float32).

    ``audio``: ``[N]`` one mono clip, ``[C, N]`` one clip with C channels (channels-first; mixed
    to mono by their mean, as the reference does for a stereo clip), or ``[B, C, N]`` a batch.
    Note the reference itself reads a 2-D array as a batch of mono clips: pass ``[B, 1, N]`` for that.
    ``sample_rate`` other than ``target_sample_rate`` is resampled like the reference does. Clips are
    cut to ``max_length`` samples (default ``chunk_length`` seconds) after resampling.
    T = 1 + max(length, n_fft) // hop_length.
    """
    x = np.asarray(audio)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"audio must be floating point, got {x.dtype}")
    if x.ndim == 1:
        x = x[None, None]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"audio must be [N], [C, N] or [B, C, N], got shape {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError("audio is empty")
    if x.shape[1] > x.shape[2]:
        raise ValueError(
            f"audio has more channels than samples ({x.shape[1]} x {x.shape[2]}): pass it channels-first"
        )
    x = x.astype(np.float32)
    if sample_rate != target_sample_rate:
        x = resample(x, sample_rate, target_sample_rate)
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    limit = max_length if max_length else chunk_length * target_sample_rate
    mono = mono[:, :limit]
    chroma = chromagram(
        mono, n_fft=n_fft, hop_length=hop_length, n_chroma=n_chroma, sample_rate=target_sample_rate
    )
    one_hot = np.zeros(chroma.shape, dtype=np.float32)
    np.put_along_axis(one_hot, np.argmax(chroma, axis=-1)[..., None], 1.0, axis=-1)
    return one_hot
