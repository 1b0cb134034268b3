"""MusicGen Melody chromagram vs transformers' MusicgenMelodyFeatureExtractor.

The extractor needs torchaudio for two functions (``transforms.Spectrogram`` and
``functional.resample``). torchaudio is not installable next to the pinned CPU torch, so the
reference is given a stand-in holding torch transcriptions of exactly those two torchaudio
functions (torch.stft based); everything else (filter bank, padding, stereo handling,
normalisation, arg-max) is transformers' own code.
"""

from __future__ import annotations

import importlib
import math
import types

import numpy as np
import pytest

from livegen.models.musicgen import chroma

SR = 32_000


def _torchaudio_standin(torch):
    """torch transcriptions of torchaudio's Spectrogram (power, window-normalised) and resample."""

    class Spectrogram(torch.nn.Module):
        def __init__(self, n_fft, win_length, hop_length, power, center, pad, normalized):
            super().__init__()
            assert center and pad == 0 and normalized is True
            self.n_fft, self.win_length, self.hop_length, self.power = n_fft, win_length, hop_length, power
            self.window = torch.hann_window(win_length)

        def forward(self, waveform):
            shape = waveform.size()
            spec = torch.stft(
                waveform.reshape(-1, shape[-1]),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window,
                center=True,
                pad_mode="reflect",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            spec = spec.reshape(shape[:-1] + spec.shape[-2:])
            spec = spec / self.window.pow(2.0).sum().sqrt()
            return spec.abs().pow(self.power)

    def resample(waveform, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99):
        if orig_freq == new_freq:
            return waveform
        gcd = math.gcd(int(orig_freq), int(new_freq))
        orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
        dtype = waveform.dtype
        base_freq = min(orig, new) * rolloff
        width = math.ceil(lowpass_filter_width * orig / base_freq)
        idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
        t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
        t *= base_freq
        t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t *= math.pi
        kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
        kernels *= window * (base_freq / orig)
        shape = waveform.size()
        wav = waveform.reshape(-1, shape[-1])
        length = wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (width, width + orig))
        out = torch.nn.functional.conv1d(wav[:, None], kernels, stride=orig)
        out = out.transpose(1, 2).reshape(wav.shape[0], -1)
        out = out[..., : math.ceil(new * length / orig)]
        return out.reshape(shape[:-1] + out.shape[-1:])

    return types.SimpleNamespace(
        transforms=types.SimpleNamespace(Spectrogram=Spectrogram),
        functional=types.SimpleNamespace(resample=resample),
    )


@pytest.fixture(scope="module")
def extractor_cls(transformers_ref, torch_ref):
    # the module itself (the package's lazy attribute would refuse it without torchaudio)
    fe = importlib.import_module("transformers.models.musicgen_melody.feature_extraction_musicgen_melody")
    patch = pytest.MonkeyPatch()
    patch.setattr(fe, "torchaudio", _torchaudio_standin(torch_ref), raising=False)
    yield fe.MusicgenMelodyFeatureExtractor
    patch.undo()


def _melody(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    """A sequence of notes (fundamental + a weaker fifth and octave) with a little noise: [C, N]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    notes = rng.integers(48, 72, size=8)
    seg = n // len(notes)
    out = np.zeros((channels, n))
    for c in range(channels):
        for i, note in enumerate(notes):
            f = 440.0 * 2 ** ((note - 69) / 12)
            sl = slice(i * seg, n if i == len(notes) - 1 else (i + 1) * seg)
            gain = 0.5 + 0.2 * c
            out[c, sl] = gain * (
                np.sin(2 * np.pi * f * t[sl])
                + 0.3 * np.sin(3 * np.pi * f * t[sl])
                + 0.2 * np.sin(4 * np.pi * f * t[sl])
            )
        out[c] += 0.01 * rng.standard_normal(n)
    return out.astype(np.float32)


@pytest.mark.parity
def test_filter_bank_matches_transformers(transformers_ref):
    from transformers.audio_utils import chroma_filter_bank

    for n_fft, n_chroma, sr in [(16384, 12, 32000), (2048, 12, 32000), (1000, 24, 22050)]:
        ref = chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sr, tuning=0)
        ours = chroma.chroma_filter_bank(n_fft, n_chroma, sr, tuning=0)
        assert ours.shape == ref.shape == (n_chroma, n_fft // 2 + 1)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parity
def test_resample_matches_torchaudio_algorithm(torch_ref):
    resample = _torchaudio_standin(torch_ref).functional.resample
    x = _melody(0.3, 44100, seed=1, channels=2)
    for orig, new in [(44100, 32000), (48000, 32000), (16000, 32000), (32000, 32000)]:
        ref = resample(torch_ref.from_numpy(x), orig, new, rolloff=0.945, lowpass_filter_width=24).numpy()
        ours = chroma.resample(x, orig, new)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        assert np.abs(ours - ref).max() / np.abs(ref).max() < 2e-6


@pytest.mark.parity
def test_normalised_chroma_matches_reference_internals(extractor_cls, torch_ref):
    fe = extractor_cls(n_fft=2048, hop_length=512)
    wav = _melody(0.5, SR, seed=2)  # [1, N]
    spec = fe.spectrogram(torch_ref.from_numpy(wav))
    raw = torch_ref.einsum("cf, ...ft->...ct", fe.chroma_filters, spec)
    ref = torch_ref.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2).numpy()
    ours = chroma.chromagram(wav, n_fft=2048, hop_length=512)
    assert ours.shape == ref.shape == (1, 1 + wav.shape[1] // 512, 12)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parity
def test_one_hot_chroma_mono_and_batch(extractor_cls):
    fe = extractor_cls()
    mono = _melody(2.0, SR, seed=3)[0]
    ref = fe(mono, sampling_rate=SR, return_tensors="np")["input_features"]
    ours = chroma.chroma_features(mono, SR)
    assert ours.shape == ref.shape == (1, 1 + mono.shape[0] // 4096, 12)
    assert ours.dtype == np.float32 and np.all(ours.sum(-1) == 1)
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ours.argmax(-1))) > 2  # the melody really moves between pitch classes

    batch = np.stack([_melody(1.5, SR, seed=4)[0], _melody(1.5, SR, seed=5)[0]])  # the reference: [B, N]
    ref = fe(batch, sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(chroma.chroma_features(batch[:, None], SR), ref)


@pytest.mark.parity
def test_one_hot_chroma_stereo_resampled_short_and_truncated(extractor_cls, torch_ref):
    fe = extractor_cls()
    stereo = _melody(1.5, SR, seed=6, channels=2)
    ref = fe(torch_ref.from_numpy(stereo[None]), sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(chroma.chroma_features(stereo, SR), ref)

    # 44.1 kHz stereo: resampled to 32 kHz, then mixed to mono (the reference resamples tensors only)
    hi = _melody(1.2, 44100, seed=7, channels=2)
    ref = fe(torch_ref.from_numpy(hi[None]), sampling_rate=44100, return_tensors="np")["input_features"]
    ours = chroma.chroma_features(hi, 44100)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)

    short = _melody(0.2, SR, seed=8)[0]  # shorter than n_fft: zero-padded on both sides first
    ref = fe(short, sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(chroma.chroma_features(short, SR), ref)

    long = _melody(2.0, SR, seed=9)[0]
    ref = fe(long, sampling_rate=SR, max_length=SR, return_tensors="np")["input_features"]
    ours = chroma.chroma_features(long, SR, max_length=SR)
    assert ours.shape == ref.shape == (1, 1 + SR // 4096, 12)
    np.testing.assert_array_equal(ours, ref)


def test_chroma_features_rejects_bad_input():
    with pytest.raises(ValueError):
        chroma.chroma_features(np.zeros((1, 1, 1, 8), dtype=np.float32), SR)
    with pytest.raises(TypeError):
        chroma.chroma_features(np.zeros(8, dtype=np.int16), SR)
    with pytest.raises(ValueError):
        chroma.chroma_features(np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="channels-first"):
        chroma.chroma_features(np.zeros((4000, 2), dtype=np.float32), SR)  # soundfile's [N, C]
