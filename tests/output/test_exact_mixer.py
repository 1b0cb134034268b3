"""The exact clock and master safety around rtmixer's callback (livegen/output/_rtclock.c), driven
offline through the same compiled callbacks as the device path: launches land on their frame
whatever time PortAudio gives the block, and the master safety gives the Python mixer's samples
and counts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from livegen.output import exact_mixer
from livegen.output.exact_mixer import OfflineExactMixer
from livegen.output.player import Player
from livegen.output.rt_player import RtPlayer
from livegen.settings import AudioSettings, TempoSettings
from tests.output.test_rt_player import _run  # the same block-by-block comparison

SR = 44100
BLOCK = 256

pytestmark = pytest.mark.skipif(not exact_mixer.available(),
                                reason=f"the exact clock was not built: {exact_mixer.unavailable_reason()}")


def _players(channels: int = 2):
    st = AudioSettings(blocksize=BLOCK, voices=16, fade_ms=2.0, channels=channels)
    tp = TempoSettings(bpm=120, beats_per_bar=4)
    m = OfflineExactMixer(channels, SR, BLOCK)
    rt = RtPlayer(st, tp, mixer=m)
    rt.start()
    return rt, m, Player(st, tp)


def test_the_library_matches_its_declaration():
    ffi, lib = exact_mixer._load()
    assert int(lib.lg_clock_size()) == ffi.sizeof("struct lg_clock")


def test_a_launch_lands_on_its_frame_whatever_time_portaudio_stamps():
    rt, m, _ = _players()
    click = np.zeros((2, 64), np.float32)
    click[:, 0] = 0.5
    for _ in range(3):
        m.render(BLOCK)
    targets = [rt.frame + 1000, rt.frame + 5 * BLOCK + 17, rt.frame + 9 * BLOCK]  # mid-block, odd, on a boundary
    for slot, at in enumerate(targets):
        rt.schedule(slot, click, at_frame=at, launch="now")
    start = m.frames
    out = np.concatenate([m.render(BLOCK) for _ in range(12)])
    onsets = np.flatnonzero(np.abs(out[:, 0]) > 0.25) + start
    assert onsets.tolist() == targets
    assert m.counters()["callbacks"] == 15


def test_loud_overlaps_are_clamped_like_the_python_mixer():
    rt, m, py = _players()
    rng = np.random.default_rng(4)
    a = rng.uniform(-0.9, 0.9, (2, 9000)).astype(np.float32)
    b = rng.uniform(-0.9, 0.9, (2, 7000)).astype(np.float32)
    script = {
        1: lambda p: p.schedule(0, a, loop=True, gain=1.0, launch="now"),
        3: lambda p: p.schedule(1, b, loop=True, gain=1.0, at_frame=p.frame + 100, launch="now"),
        60: lambda p: p.stop_slot(1, launch="beat"),
    }
    out_rt, out_py = _run(rt, m, py, 120, script)
    assert np.abs(out_py).max() == pytest.approx(1.0)  # the sum went past full scale and was clamped
    np.testing.assert_allclose(out_rt, out_py, atol=1e-6, rtol=0)
    assert np.abs(out_rt).max() <= 1.0
    counts = m.counters()
    assert counts["clipped_blocks"] == py.mixer.clipped_blocks > 0
    assert counts["non_finite_blocks"] == 0
    assert rt.stats()["clock"] == "exact" and rt.stats()["master_safety"] is True


def test_non_finite_samples_from_a_stream_are_silenced_and_counted():
    rt, m, py = _players()
    bad = np.full((2, 4 * BLOCK), 0.25, np.float32)
    bad[0, 10] = np.nan
    bad[1, 20] = np.inf
    bad[0, 300] = -np.inf
    sv_rt = rt.open_stream(0, gain=1.0)
    sv_py = py.open_stream(0, gain=1.0)
    for sv in (sv_rt, sv_py):
        sv.write(bad)
        sv.close()
    sv_rt.start("now", at_frame=rt.frame + BLOCK)
    sv_py.start("now", at_frame=py.frame + BLOCK)
    out_rt, out_py = _run(rt, m, py, 40)
    assert np.isfinite(out_rt).all()
    np.testing.assert_allclose(out_rt, out_py, atol=1e-6, rtol=0)
    assert m.counters()["non_finite_blocks"] == py.mixer.non_finite_blocks >= 1


def test_the_block_clock_is_the_monotonic_clock():
    _, m, _ = _players()
    t0 = time.monotonic()
    m.render(BLOCK)
    frame, mono, latency = m.block_clock()
    assert frame == m.frames - BLOCK
    assert t0 <= mono <= time.monotonic()
    assert latency == pytest.approx(0.01)  # render() gives PortAudio's dac - current as 10 ms
