# Values beyond full scale keep the sample arithmetic readable: those mixers run without the master
# safety (ceiling=None); tests/output/test_master_safety.py tests the safety itself.
import tracemalloc

import numpy as np
import pytest

from livegen.output.mixer import Mixer
from livegen.output.ringbuffer import RingBuffer


def run(m, frames, block=16, start=0):
    out = np.zeros((block, m.channels), np.float32)
    res = []
    for t in range(start, start + frames, block):
        m.mix(out, t)
        res.append(out.copy())
    return np.concatenate(res)


def test_one_shot_starts_at_its_frame_and_ends():
    m = Mixer(2, 4, fade_samples=4, ceiling=None)
    clip = np.stack([np.arange(1, 21), -np.arange(1, 21)]).astype(np.float32)
    m.schedule(0, m.prepare(clip), start_frame=10, gain=0.5)
    y = run(m, 64)
    assert np.all(y[:10] == 0)
    assert np.allclose(y[10:30, 0], 0.5 * np.arange(1, 21))
    assert np.allclose(y[10:30, 1], -0.5 * np.arange(1, 21))
    assert np.all(y[30:] == 0)
    assert m.voices_active == 0


def test_loop_wraps_exactly():
    m = Mixer(1, 2, fade_samples=2, ceiling=None)
    clip = np.arange(1, 8, dtype=np.float32)[None]
    m.schedule(3, m.prepare(clip), start_frame=5, loop=True)
    y = run(m, 80)[:, 0]
    assert np.all(y[:5] == 0)
    expect = np.tile(np.arange(1, 8), 20)[:75]
    assert np.array_equal(y[5:], expect)
    assert m.slots_playing() == [3]


def test_stop_fades_out_smoothly_and_frees_the_voice():
    m = Mixer(1, 2, fade_samples=8)
    m.schedule(0, m.prepare(np.ones((1, 1000), np.float32)), 0)
    run(m, 32)
    m.stop(0, at_frame=40)
    y = run(m, 64, start=32)[:, 0]
    assert np.all(y[:8] == 1)
    fade = y[8:16]
    assert np.all(np.diff(fade) < 0) and fade[0] < 1 and fade[-1] > 0
    assert np.all(y[16:] == 0)
    assert m.voices_active == 0


def test_choke_crossfades_old_and_new_in_the_same_slot():
    m = Mixer(1, 4, fade_samples=8, ceiling=None)
    m.schedule(1, m.prepare(np.ones((1, 1000), np.float32)), 0, loop=True)
    run(m, 32)
    m.schedule(1, m.prepare(np.full((1, 1000), 2.0, np.float32)), start_frame=48)
    y = run(m, 64, start=32)[:, 0]
    assert np.all(y[:16] == 1)
    xf = y[16:24]
    assert np.all(np.diff(xf) > 0) and np.all((xf > 1) & (xf < 2))  # 1 -> 2 without a gap
    assert np.all(y[24:] == 2)
    assert m.voices_active == 1
    # Another slot is independent.
    m.schedule(2, m.prepare(np.ones((1, 1000), np.float32)), 96)
    y = run(m, 16, start=96)[:, 0]
    assert np.all(y == 3)


def test_late_start_plays_from_the_beginning_and_pending_clip_is_replaced():
    m = Mixer(1, 4, fade_samples=4, ceiling=None)
    run(m, 64)
    m.schedule(0, m.prepare(np.arange(1, 5, dtype=np.float32)[None]), start_frame=10)  # in the past
    y = run(m, 16, start=64)[:, 0]
    assert np.array_equal(y[:4], [1, 2, 3, 4])
    m.schedule(0, m.prepare(np.ones((1, 4), np.float32)), start_frame=200)
    m.schedule(0, m.prepare(np.full((1, 4), 5.0, np.float32)), start_frame=200)
    y = run(m, 16, start=192)[:, 0]
    assert np.array_equal(y[8:12], [5, 5, 5, 5])  # the pending first clip never sounds


def test_stop_all_and_voice_stealing():
    m = Mixer(1, 2, fade_samples=2, ceiling=None)
    for s in range(3):
        m.schedule(s, m.prepare(np.ones((1, 100), np.float32)), 0, loop=True)
    y = run(m, 16)
    assert m.stolen == 1 and np.all(y == 2)
    m.stop()
    run(m, 16, start=16)
    assert m.voices_active == 0


def test_channel_adaptation():
    m = Mixer(2, 2)
    mono = np.arange(4, dtype=np.float32)[None]
    assert np.array_equal(m.prepare(mono), np.stack([np.arange(4)] * 2, 1))
    m1 = Mixer(1, 2)
    st = np.stack([np.ones(4), 3 * np.ones(4)]).astype(np.float32)
    assert np.array_equal(m1.prepare(st)[:, 0], 2 * np.ones(4))
    with pytest.raises(ValueError):
        m.schedule(0, np.ones((4, 3), np.float32), 0)


def test_streaming_voice_reads_a_ring():
    m = Mixer(2, 2, fade_samples=2, ceiling=None)
    ring = RingBuffer(2, 64)
    m.stream(4, ring, start_frame=0, gain=2.0)
    ring.write(np.ones((2, 20), np.float32))
    y = run(m, 32)
    assert np.all(y[:20] == 2) and np.all(y[20:] == 0)
    assert ring.underflows == 1
    ring.close()
    run(m, 16, start=32)
    assert m.voices_active == 0


def test_mix_allocates_nothing_in_steady_state():
    block = 1024
    m = Mixer(2, 8, fade_samples=64, max_block=block)
    rng = np.random.default_rng(0)
    for s in range(6):
        clip = rng.standard_normal((2, 5000)).astype(np.float32)
        m.schedule(s, m.prepare(clip), start_frame=s * 300, loop=s % 2 == 0)
    m.stop(5, at_frame=20000)
    out = np.zeros((block, 2), np.float32)
    ident = id(out)
    m.mix(out, 0)  # apply the commands
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(1, 200):
            m.mix(out, i * block)
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert id(out) == ident
    assert peak - base < out.nbytes // 4, (peak - base)  # a temporary block would be 8 KiB
    assert cur - base < 1024
    assert m.voices_active == 3  # the three loops (slots 0, 2, 4); one-shots and the stopped one ended
