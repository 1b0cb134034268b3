"""Clip levels (livegen/output/loudness.py), checked with a meter of the test's own.

livegen measures with pyloudnorm, which derives its K-weighting filters for the clip's own rate
from the analogue prototype and oversamples true peaks with soxr. The test meter below shares
none of that: it resamples the clip to 48 kHz with scipy's polyphase resampler and applies the
two biquads whose 48 kHz coefficients are printed in ITU-R BS.1770-4 (Tables 1 and 2), then the
standard's gating; its true peak oversamples 8x with scipy (a Kaiser-windowed FIR, not soxr's
filter). A bug in either implementation's filter design, gating or peak measurement shows as a
disagreement. (ffmpeg's ebur128 would be a third meter, but it is not installed in CI and is a
large package to add for one test.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter, resample_poly

from livegen.output.loudness import Levels, loudness, normalize, true_peak

# ITU-R BS.1770-4, Table 1 (pre-filter, a high shelf) and Table 2 (RLB high-pass), at 48 kHz
SHELF_B = [1.53512485958697, -2.69169618940638, 1.19839281085285]
SHELF_A = [1.0, -1.69065929318241, 0.73248077421585]
RLB_B = [1.0, -2.0, 1.0]
RLB_A = [1.0, -1.99004745483398, 0.99007225036621]


def bs1770_lufs(audio: np.ndarray, sr: int) -> float:
    """Integrated loudness of [C, N] (channel weights 1: mono/stereo), from the standard's text."""
    g = math.gcd(48000, sr)
    x = resample_poly(audio.astype(np.float64), 48000 // g, sr // g, axis=1) if sr != 48000 else audio
    y = lfilter(RLB_B, RLB_A, lfilter(SHELF_B, SHELF_A, x, axis=1), axis=1)
    block, step = 19200, 4800  # 400 ms, 75 % overlap
    starts = range(0, y.shape[1] - block + 1, step)
    z = np.array([[np.mean(ch[s:s + block] ** 2) for s in starts] for ch in y])  # [C, J]
    power = z.sum(axis=0)
    with np.errstate(divide="ignore"):
        lj = -0.691 + 10 * np.log10(power)
    keep = lj > -70.0
    rel = -0.691 + 10 * math.log10(power[keep].mean()) - 10.0
    keep &= lj > rel
    return -0.691 + 10 * math.log10(power[keep].mean())


def true_peak_dbtp(audio: np.ndarray) -> float:
    up = resample_poly(audio.astype(np.float64), 8, 1, axis=1)
    return 20 * math.log10(max(np.abs(up).max(), np.abs(audio).max()))


def scaled_to(audio: np.ndarray, sr: int, lufs: float) -> np.ndarray:
    return (audio * 10 ** ((lufs - bs1770_lufs(audio, sr)) / 20)).astype(np.float32)


def tone(sr: int, seconds: float = 3.0, hz: float = 997.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([np.sin(2 * np.pi * hz * t), 0.5 * np.sin(2 * np.pi * hz * 1.5 * t)])


def noise(sr: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, int(sr * seconds)))


def test_the_test_meter_reads_the_standards_reference_tone():
    # BS.1770: a 0 dBFS-peak 997 Hz sine in one channel of stereo reads -3.01 LUFS
    sr = 48000
    x = np.zeros((2, sr * 3))
    x[0] = np.sin(2 * np.pi * 997 * np.arange(sr * 3) / sr)
    assert bs1770_lufs(x, sr) == pytest.approx(-3.01, abs=0.02)
    assert loudness(x, sr)[0] == pytest.approx(-3.01, abs=0.1)  # pyloudnorm reads -3.05 (its filter design)


@pytest.mark.parametrize("sr", [44100, 32000])
@pytest.mark.parametrize("kind", ["tone", "noise"])
@pytest.mark.parametrize("level", [-40.0, -3.0])
def test_very_different_clips_come_out_at_the_target_under_the_ceiling(sr, kind, level):
    raw = scaled_to(tone(sr) if kind == "tone" else noise(sr), sr, level)
    out, lv = normalize(raw, sr, target_lufs=-14.0, true_peak_dbtp=-1.0)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert bs1770_lufs(out, sr) == pytest.approx(-14.0, abs=0.5)
    assert true_peak_dbtp(out) <= -1.0
    assert lv.method == "bs1770" and lv.measured_lufs == pytest.approx(level, abs=0.5)
    assert lv.lufs == pytest.approx(-14.0, abs=0.1) and lv.true_peak_dbtp <= -1.0
    assert lv.gain_db == pytest.approx(-14.0 - level, abs=1.5)


def test_a_spiky_clip_is_limited_not_just_turned_down():
    # quiet noise with loud clicks: a plain gain to -1 dBTP would leave it far below the target
    sr = 44100
    x = 0.01 * noise(sr, 4.0, seed=3)
    x[:, ::sr // 4] = 0.9
    out, lv = normalize(x.astype(np.float32), sr, target_lufs=-20.0, true_peak_dbtp=-1.0, max_limit_db=40.0)
    assert bs1770_lufs(out, sr) == pytest.approx(-20.0, abs=0.5)
    assert true_peak_dbtp(out) <= -1.0
    assert lv.limited_db > 6.0


def test_a_loud_diverged_model_output_is_tamed_and_non_finite_samples_are_zeroed():
    sr = 44100
    x = 9600.0 * noise(sr, 2.0, seed=5)  # what random weights produced in the issue
    x[0, 100] = np.nan
    x[1, 200] = np.inf
    out, lv = normalize(x.astype(np.float32), sr)
    assert np.all(np.isfinite(out))
    assert lv.non_finite == 2
    assert bs1770_lufs(out, sr) == pytest.approx(-14.0, abs=0.5)
    assert true_peak_dbtp(out) <= -1.0


def test_silence_is_left_alone():
    out, lv = normalize(np.zeros((2, 44100), np.float32), 44100)
    assert not np.any(out)
    assert lv.method == "silent" and lv.gain_db == 0.0 and lv.measured_lufs is None


def test_the_noise_floor_is_not_boosted_beyond_the_cap():
    sr = 44100
    x = scaled_to(noise(sr), sr, -60.0)
    out, lv = normalize(x, sr, target_lufs=-14.0, max_gain_db=30.0)
    assert lv.gain_db == pytest.approx(30.0)
    assert bs1770_lufs(out, sr) == pytest.approx(-30.0, abs=0.5)


def test_a_clip_under_one_block_falls_back_to_its_mean_square():
    sr = 44100
    x = tone(sr, 0.2)  # 200 ms: no 400 ms block
    out, lv = normalize(x.astype(np.float32), sr, target_lufs=-14.0)
    assert lv.method == "rms"
    ms = float(np.sum(np.mean(out.astype(np.float64) ** 2, axis=1)))
    assert -0.691 + 10 * math.log10(ms) == pytest.approx(-14.0, abs=0.1)
    assert true_peak_dbtp(out) <= -1.0
    assert isinstance(lv, Levels) and set(lv.as_dict()) >= {"gain_db", "measured_lufs", "true_peak_dbtp"}


def test_true_peak_sees_between_the_samples():
    # a sine at fs/4 sampled 45 degrees off its peaks: samples at 0.707, true peak 1.0
    sr = 48000
    n = np.arange(4800)
    ramp = np.minimum(1.0, np.minimum(n, n[::-1]) / 480)  # no step at the ends (its ringing is real)
    x = (ramp * np.sin(2 * np.pi * n / 4 + np.pi / 4))[None]
    assert np.abs(x).max() == pytest.approx(0.7071, abs=1e-3)
    assert true_peak(x, sr) == pytest.approx(1.0, abs=0.01)


def test_a_random_weight_model_clip_through_the_worker_is_normalised_and_in_the_sidecar(tmp_path):
    """The real tiny Stable Audio pipeline (random weights) on the generation thread, then the
    folder writer: the clip is at the target and under the ceiling, and the sidecar says so."""
    import asyncio
    import json

    from livegen.engine.worker import DONE, FAILED, Worker, WorkerOptions
    from livegen.models.stable_audio import StableAudioPipeline
    from livegen.output.folder import FolderWriter
    from livegen.request import Request
    from livegen.settings import LevelsSettings
    from tests.models.stable_audio.random_converted import write_random_converted

    path = write_random_converted(tmp_path / "tiny", sample_size=22528)

    async def main():
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def notify(event):
            if event.kind in (DONE, FAILED) and not done.done():
                done.set_result(event)

        options = WorkerOptions(levels=LevelsSettings(target_lufs=-16.0, true_peak_dbtp=-2.0))
        worker = Worker({"sa": lambda: StableAudioPipeline.from_converted(path)}, options, notify, loop)
        worker.start()
        try:
            worker.submit(Request("warm pad", model="sa", seconds=0.5, steps=4, seed=7))
            return await asyncio.wait_for(done, 240)
        finally:
            await loop.run_in_executor(None, worker.close)

    event = asyncio.run(main())
    assert event.kind == DONE, event.reason
    clip = event.clip
    lv = clip.levels
    assert lv is not None and lv.method == "bs1770"
    assert bs1770_lufs(clip.audio, clip.sample_rate) == pytest.approx(-16.0, abs=0.5)
    assert true_peak_dbtp(clip.audio) <= -2.0
    meta = json.loads(FolderWriter(tmp_path / "out").write(clip).with_suffix(".json").read_text())
    assert meta["levels"]["target_lufs"] == -16.0
    assert meta["levels"]["gain_db"] == pytest.approx(lv.gain_db, abs=0.001)
    assert meta["levels"]["measured_lufs"] == pytest.approx(lv.measured_lufs, abs=0.001)
    assert meta["levels"]["true_peak_dbtp"] <= -2.0


PRELOAD_CHECK = r"""
import asyncio, sys
import numpy as np
from livegen.engine.worker import READY, Worker, WorkerOptions
from livegen.settings import LevelsSettings

class Engine:
    sample_rate = 44100
    def generate(self, prompt, seconds, **kw):
        return np.zeros((2, int(seconds * 44100)), np.float32)

async def main():
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    def notify(e):
        if e.kind == READY and not ready.done():
            ready.set_result(sorted(m for m in ("pyloudnorm", "scipy.ndimage", "soxr") if m in sys.modules))
    w = Worker({"e": Engine}, WorkerOptions(levels=LevelsSettings(normalize=sys.argv[1] == "on")), notify, loop)
    w.start()
    print(",".join(await asyncio.wait_for(ready, 120)))
    await loop.run_in_executor(None, w.close)

asyncio.run(main())
"""


def test_the_worker_imports_the_meters_before_it_is_ready():
    # Regression: the first clip's normalisation imported scipy and pyloudnorm on the generation
    # thread while the stream played; the imports held the GIL long enough for the daemon's stream
    # to lose 110-170 ms of cycles (tests/integration/test_daemon_clock.py saw the clip that late).
    import subprocess
    import sys

    def loaded(mode: str) -> str:
        proc = subprocess.run([sys.executable, "-c", PRELOAD_CHECK, mode], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

    assert loaded("on") == "pyloudnorm,scipy.ndimage,soxr"
    assert "pyloudnorm" not in loaded("off")
