"""The WAV files FolderWriter writes: real headers that SoX reads without a warning, exact samples."""

import shutil
import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf

from livegen.output.folder import SUBTYPES, FolderWriter
from livegen.request import Clip, Request

pytestmark = pytest.mark.skipif(shutil.which("soxi") is None, reason="sox (soxi) is not installed")


def _clip(audio, rate=44100):
    return Clip(Request("format test", bars=1, bpm=120, slot=0), audio, rate, seed=3, model="m", job_id=1)


def _soxi(*args):
    r = subprocess.run(["soxi", *map(str, args)], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def _chunks(path):
    """[(id, size)] of the RIFF chunks up to and including ``data``."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    pos, out = 12, []
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        out.append((cid, size, raw[pos + 8:pos + 8 + min(size, 64)]))
        if cid == b"data":
            break
        pos += 8 + size + (size & 1)
    return out


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("subtype", SUBTYPES)
def test_soxi_reads_every_subtype_without_a_warning(tmp_path, subtype, channels):
    frames = 12345  # odd: pcm24 mono data has an odd byte count and needs a pad byte
    rate = 48000
    audio = np.random.default_rng(channels).uniform(-0.99, 0.99, (channels, frames)).astype(np.float32)
    path = FolderWriter(tmp_path, subtype=subtype, chunk_frames=1000).write(_clip(audio, rate))

    rc, out, err = _soxi(path)
    assert rc == 0 and err == "", err  # "soxi WARN wav: ..." would be on stderr
    assert _soxi("-r", path)[1:] == (str(rate), "")
    assert _soxi("-c", path)[1:] == (str(channels), "")
    assert _soxi("-s", path)[1:] == (str(frames), "")
    bits = {"float": "32", "pcm24": "24", "pcm16": "16"}[subtype]
    assert _soxi("-b", path)[1:] == (bits, "")
    encoding = _soxi("-e", path)[1]
    assert encoding == ("Floating Point PCM" if subtype == "float" else "Signed Integer PCM")

    data, r = sf.read(path, dtype="float32", always_2d=True)
    assert r == rate and data.shape == (frames, channels)
    if subtype == "float":
        assert np.array_equal(data.T, audio)
    else:
        lsb = 2.0 ** -(int(bits) - 1)
        assert np.abs(data.T - audio).max() <= lsb / 2 + 1e-9  # rounded to the nearest code
    info = sf.info(path)
    assert info.subtype == {"float": "FLOAT", "pcm24": "PCM_24", "pcm16": "PCM_16"}[subtype]


@pytest.mark.parametrize("channels", [1, 2])
def test_float_fmt_chunk_has_cbsize_and_fact(tmp_path, channels):
    audio = np.zeros((channels, 1001), np.float32)
    path = FolderWriter(tmp_path, subtype="float").write(_clip(audio))
    chunks = _chunks(path)
    cid, size, body = chunks[0]
    assert cid == b"fmt " and size == 18
    tag, ch, _rate, _bps, block, bits, cbsize = struct.unpack_from("<HHIIHHH", body)
    assert (tag, ch, block, bits, cbsize) == (3, channels, 4 * channels, 32, 0)
    assert [c[0] for c in chunks][-1] == b"data" and b"fact" in [c[0] for c in chunks]
    fact = next(c for c in chunks if c[0] == b"fact")
    assert struct.unpack_from("<I", fact[2])[0] == 1001


@pytest.mark.parametrize("subtype", ["pcm16", "pcm24"])
def test_pcm_two_channels_is_plain_pcm_and_more_is_extensible(tmp_path, subtype):
    w = FolderWriter(tmp_path, subtype=subtype)
    stereo = w.write(_clip(np.zeros((2, 100), np.float32)))
    six = w.write(_clip(np.zeros((6, 100), np.float32)))
    assert struct.unpack_from("<H", _chunks(stereo)[0][2])[0] == 1  # WAVE_FORMAT_PCM
    assert struct.unpack_from("<H", _chunks(six)[0][2])[0] == 0xFFFE  # WAVE_FORMAT_EXTENSIBLE


@pytest.mark.parametrize("subtype, full", [("pcm16", 32768), ("pcm24", 8388608)])
def test_pcm_quantisation_is_exact_and_saturates(tmp_path, subtype, full):
    values = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, np.nan, np.inf, -np.inf, 1 / full, -3 / full],
                      np.float32)
    expected = np.array([0, full // 2, -full // 2, full - 1, -full, full - 1, -full, 0, full - 1, -full, 1, -3])
    path = FolderWriter(tmp_path, subtype=subtype).write(_clip(np.stack([values, -values])))
    data, _ = sf.read(path, dtype="int32", always_2d=True)  # libsndfile scales every code to 32 bits
    assert np.array_equal(data[:, 0], expected * (2**32 // (2 * full)))


def test_float_keeps_overs_and_replaces_nan(tmp_path):
    values = np.array([1.5, -2.0, np.nan, np.inf, -np.inf, 1e-30], np.float32)
    path = FolderWriter(tmp_path, subtype="float").write(_clip(np.stack([values, values])))
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    assert np.array_equal(data[:, 0], np.array([1.5, -2.0, 0.0, 1.0, -1.0, 1e-30], np.float32))
