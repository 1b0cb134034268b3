import gc
import time
import tracemalloc

import numpy as np
import pytest

from livegen import tempo
from livegen.output.player import Player, resample
from livegen.settings import AudioSettings, TempoSettings


def _flags(underflow=False):
    import sounddevice as sd

    f = sd.CallbackFlags()
    if underflow:
        f.output_underflow = True
    return f


def _player(**kw):
    settings = AudioSettings(blocksize=256, voices=4, fade_ms=1.0, **kw)
    return Player(settings, TempoSettings(bpm=120, beats_per_bar=4))


def _run(p, blocks, block=256):
    out = np.zeros((block, p.channels), np.float32)
    res = []
    for _ in range(blocks):
        p.callback(out, block, None, _flags())
        res.append(out.copy())
    return np.concatenate(res)


def test_callback_plays_a_clip_launched_now():
    p = _player()
    clip = np.full((2, 1000), 0.5, np.float32)
    start = p.schedule(0, clip, launch="now")
    assert start == 0  # the very next block
    y = _run(p, 8)
    assert np.allclose(y[:1000], 0.5) and np.all(y[1000:] == 0)
    s = p.stats()
    assert s["callbacks"] == 8 and s["frames"] == 2048 and s["underflows"] == 0


def test_launch_now_posted_during_a_callback_starts_whole_at_the_next_block():
    """The command was posted while the callback for frames [256, 512) was already running (so it
    missed it): the clip starts at 512 from its first frame, nothing is skipped."""
    p = _player()
    _run(p, 1)  # frame 256
    clip = np.arange(1, 601, dtype=np.float32)[None].repeat(2, 0) / 1000
    start = p.schedule(0, clip, launch="now")
    assert start == 256
    out = np.zeros((256, 2), np.float32)
    p.mixer.mix(out, 512)  # the block after the one the command missed
    assert np.allclose(out[:, 0], clip[0, :256])


def test_bar_launch_lands_on_the_bar_grid():
    p = _player()
    _run(p, 3)  # frame 768
    start = p.schedule(2, np.ones((1, 64), np.float32), launch="bar")
    bar = tempo.bars_to_samples(1, 120, 4, 44100)
    assert start == bar
    beat_start = p.schedule(3, np.ones((1, 64), np.float32), launch="beat")
    assert beat_start == tempo.bars_to_samples(0.25, 120, 4, 44100)


def test_set_bpm_pivots_the_grid_on_the_current_bar():
    p = _player()
    bar120 = tempo.bars_to_samples(1, 120, 4, 44100)
    blocks = bar120 // 256 + 2
    _run(p, blocks)
    p.set_bpm(60)
    now = p.frame
    start = p.launch_frame("bar")
    assert start == bar120 + tempo.bars_to_samples(1, 60, 4, 44100)
    assert start > now
    with pytest.raises(ValueError):
        p.set_bpm(1000)


def test_stop_slot_and_loop_through_callback():
    p = _player()
    p.schedule(1, np.ones((2, 100), np.float32), loop=True, launch="now")
    y = _run(p, 4)
    assert np.all(y[256:] == 1)
    assert p.stats()["slots_playing"] == [1]
    p.stop_slot(1)
    y = _run(p, 2)
    assert y[-1, 0] == 0 and p.stats()["voices_active"] == 0


def test_callback_allocates_nothing_in_steady_state():
    p = _player()
    for s in range(4):
        p.schedule(s, np.random.default_rng(s).standard_normal((2, 3000)).astype(np.float32), loop=True,
                   launch="now")
    out = np.zeros((1024, 2), np.float32)
    flags = _flags()
    p.callback(out, 1024, None, flags)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            p.callback(out, 1024, None, flags)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes // 4, peak
    assert p.stats()["voices_active"] == 4


def test_underflow_flags_are_counted():
    p = _player()
    out = np.zeros((256, 2), np.float32)
    p.callback(out, 256, None, _flags())
    p.callback(out, 256, None, _flags(underflow=True))
    s = p.stats()
    assert s["underflows"] == 1 and s["first_underflow_frame"] == 256


def test_streaming_voice_through_the_player():
    p = _player(ring_seconds=0.1)
    ring = p.stream(5, gain=1.0, launch="now")
    ring.write(np.full((2, 512), 0.25, np.float32))
    ring.close()
    y = _run(p, 4)
    assert np.allclose(y[:512], 0.25) and np.all(y[512:] == 0)


def test_resample_32k_to_44k1_keeps_a_tone():
    src = np.sin(2 * np.pi * 1000 * np.arange(32000) / 32000)[None].astype(np.float32)
    out = resample(np.concatenate([src, 0.5 * src]), 32000, 44100)
    want = np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100)
    assert out.shape == (2, 44100) and out.dtype == np.float32
    # soxr treats the clip as silent outside itself: compare away from the two ends
    inner = slice(64, -64)
    assert np.abs(out[0] - want)[inner].max() < 1e-3 and np.abs(out[1] - 0.5 * want)[inner].max() < 1e-3
    assert resample(src, 44100, 44100).shape == src.shape
    p = _player()
    p.schedule(0, src[:, :3200], launch="now", sample_rate=32000)
    y = _run(p, 20)
    assert np.count_nonzero(np.abs(y[:, 0]) > 1e-6) > 4300  # 0.1 s at 44.1 kHz = 4410 frames


@pytest.mark.realtime
@pytest.mark.flaky(reruns=2, reruns_delay=2)  # strict every run; see tests/integration/test_daemon_osc.py
def test_plays_through_jack(jack_server, jack_log):
    # The Python callback needs the GIL every period; a full collection of the test process's heap
    # (torch, MLX, every earlier test's objects) holds it for longer than a period. The daemon
    # freezes its heap after loading (livegen.gc_monitor); so does this test, for the same reason.
    gc.collect()
    gc.freeze()
    log_mark = jack_log.mark()
    try:
        p = _player()
        with p:
            t0 = time.monotonic()
            tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100)).astype(np.float32)
            p.schedule(0, np.stack([tone, tone]), loop=True, launch="now")
            while p.stats()["seconds"] < 0.25 and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            early = p.stats()
            time.sleep(1.0)
            late = p.stats()
            assert p.running
        assert late["callbacks"] > early["callbacks"] > 0
        assert late["frames"] - early["frames"] >= 0.5 * 44100  # the stream clock advanced
        # an underflow flag is every JACK xrun of the server: the log says whether this stream's
        # callback (PortAudio's client) overran, or the machine lost the cycle (tests/jack_log.py)
        new = late["underflows"] - early["underflows"]
        xruns = jack_log.since(log_mark, ("PortAudio",), new)
        print(xruns)
        assert xruns.daemon_xruns == 0, str(xruns)
        assert new <= (len(xruns.machine) if xruns.known else 0), str(xruns)
    finally:
        gc.unfreeze()
    assert late["voices_active"] == 1
