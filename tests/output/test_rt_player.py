"""The rtmixer path against the Python reference mixer, sample by sample.

rtmixer's own compiled callback is driven offline (:class:`OfflineMixer`): the same commands go
to an :class:`RtPlayer` on it and to the reference :class:`Player` (whose callback is called
directly), block by block, and the two outputs must agree within 1e-6 (exactly, except for the
order in which three or more voices are summed). The feeder's pass (``pump``) runs before every
block, as its thread would."""

import numpy as np
import pytest
import sounddevice as sd

from livegen.output import exact_mixer
from livegen.output.exact_mixer import OfflineExactMixer
from livegen.output.feeder import LEAD_SECONDS
from livegen.output.player import Player
from livegen.output.rt_player import RtPlayer
from livegen.output.rt_voices import OfflineMixer, enqueue_chain, is_done
from livegen.settings import AudioSettings, TempoSettings

SR = 44100
BLOCK = 256


MIXERS = {"rtmixer": OfflineMixer, "exact": OfflineExactMixer}  # rtmixer's callback alone, and through lg_callback
_kind = ["rtmixer"]


@pytest.fixture(autouse=True, params=sorted(MIXERS))
def mixer_kind(request):
    """Every comparison runs on both callbacks: rtmixer's alone and inside the exact clock."""
    if request.param == "exact" and not exact_mixer.available():
        pytest.skip(f"the exact clock was not built: {exact_mixer.unavailable_reason()}")
    _kind[0] = request.param
    yield request.param
    _kind[0] = "rtmixer"


def _pair(channels=2, fade_ms=2.0):
    st = AudioSettings(blocksize=BLOCK, voices=16, fade_ms=fade_ms, channels=channels)
    tp = TempoSettings(bpm=120, beats_per_bar=4)
    m = MIXERS[_kind[0]](channels, SR, BLOCK)
    rt = RtPlayer(st, tp, mixer=m)
    rt.start()
    return rt, m, Player(st, tp)


def _run(rt, m, py, blocks, script=None, pump=True):
    """Render ``blocks`` blocks on both; ``script[i]`` (a callable of a player) runs before block i."""
    out_rt, out_py = [], []
    blk = np.zeros((BLOCK, py.channels), np.float32)
    for i in range(blocks):
        for p in (rt, py):
            if script and i in script:
                script[i](p)
        if pump:
            rt.pump()
        out_rt.append(m.render(BLOCK))
        py.callback(blk, BLOCK, None, sd.CallbackFlags())
        out_py.append(blk.copy())
    return np.concatenate(out_rt), np.concatenate(out_py)


def _noise(seed, frames, channels=2, amp=0.3):
    return np.random.default_rng(seed).uniform(-amp, amp, (channels, frames)).astype(np.float32)


def test_one_shots_loops_and_crossfades_match_the_reference():
    rt, m, py = _pair()
    a, b, c = _noise(1, 5000), _noise(2, 3000), _noise(3, 777)
    script = {
        1: lambda p: p.schedule(0, a, loop=True, gain=0.7, launch="now"),
        5: lambda p: p.schedule(1, b, gain=0.5, launch="beat"),
        12: lambda p: p.schedule(0, c, loop=True, gain=0.9, at_frame=p.frame + 300),  # a crossfade in slot 0
        40: lambda p: p.stop_slot(1, launch="beat"),
        50: lambda p: p.schedule(2, b, gain=1.0, launch="bar"),
    }
    x, y = _run(rt, m, py, 200, script)
    assert np.abs(y).sum() > 1000  # something was played
    assert np.max(np.abs(x - y)) <= 1e-6
    # a wrong gain is seen: the comparison can fail
    rt2, m2, py2 = _pair()
    x2, y2 = _run(rt2, m2, py2, 40, {1: lambda p: p.schedule(0, a, gain=0.7 if p is rt2 else 0.6999, launch="now")})
    assert np.max(np.abs(x2 - y2)) > 1e-5


def test_long_clips_fed_through_the_ring_match_the_reference():
    """Clips longer than a voice's ring (3 s) and than the feeder's lead: the feeder keeps them going."""
    rt, m, py = _pair()
    long_loop = _noise(4, int(3.7 * SR))
    long_shot = _noise(5, int(4.2 * SR), channels=1)  # mono, spread to both channels
    script = {
        0: lambda p: p.schedule(3, long_loop, loop=True, gain=0.8, launch="now"),
        10: lambda p: p.schedule(4, long_shot, gain=0.6, launch="bar"),
    }
    blocks = int(9.5 * SR / BLOCK)
    x, y = _run(rt, m, py, blocks, script)
    assert np.max(np.abs(x - y)) <= 1e-6
    assert np.count_nonzero(x[:, 0]) > 9 * SR  # the loop never stopped
    assert rt.misses == 0


def test_chokes_and_stops_fade_like_the_reference_and_never_click():
    rt, m, py = _pair(fade_ms=5.0)
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)[None].repeat(2, 0)
    other = (0.4 * np.sin(2 * np.pi * 330 * np.arange(SR) / SR)).astype(np.float32)[None].repeat(2, 0)
    script = {
        0: lambda p: p.schedule(0, tone, loop=True, launch="now"),
        30: lambda p: p.schedule(0, other, loop=True, launch="beat"),  # choke at the beat: crossfade
        40: lambda p: p.schedule(5, tone, launch="bar"),
        41: lambda p: p.schedule(5, other, launch="bar"),  # replaces a clip that never started
        150: lambda p: p.stop_slot(0, launch="beat"),
        220: lambda p: p.stop_slot(None, launch="beat"),
    }
    x, y = _run(rt, m, py, 300, script)
    assert np.max(np.abs(x - y)) <= 1e-6
    step = np.max(np.abs(np.diff(x[:, 0])))
    assert step < 0.05  # a 220-330 Hz sine moves at most ~0.02 per sample; a click would jump
    assert np.all(x[-2 * BLOCK:] == 0)


def test_many_voices_sum_within_1e6():
    rt, m, py = _pair()
    script = {i: (lambda p, i=i: p.schedule(i, _noise(10 + i, 4000 + 100 * i, amp=0.05), loop=i % 2 == 0,
                                            gain=0.5 + 0.05 * i, launch="now")) for i in range(8)}
    x, y = _run(rt, m, py, 120, script)
    assert np.max(np.abs(x - y)) <= 1e-6


def test_gain_change_splices_with_a_ramp():
    rt, m, _ = _pair(fade_ms=2.0)
    ones = np.ones((2, SR), np.float32)
    rt.schedule(0, ones, loop=True, gain=0.5, launch="now")
    out = [m.render() for _ in range(4) if rt.pump() is None]
    rt.set_gain(0, 0.25)
    splice = rt.frame + BLOCK
    for _ in range(10):
        rt.pump()
        out.append(m.render())
    x = np.concatenate(out)[:, 0]
    assert np.allclose(x[:splice], 0.5) and np.allclose(x[splice + rt.fade:], 0.25)
    ramp = x[splice:splice + rt.fade]
    assert np.all(np.diff(ramp) <= 0) and ramp[0] <= 0.5 and ramp[-1] >= 0.25


def test_slot_end_frame_and_at_frame_continue_a_clip_seamlessly():
    rt, m, py = _pair()
    a, b = _noise(20, 3000), _noise(21, 2000)
    rt.schedule(0, a, launch="now")
    py.schedule(0, a, launch="now")
    assert rt.slot_end_frame(0) == py.slot_end_frame(0) == 3000

    def extend(p):
        p.schedule(1, b, at_frame=p.slot_end_frame(0))

    x, y = _run(rt, m, py, 40, {2: extend})
    assert np.max(np.abs(x - y)) <= 1e-6
    assert np.array_equal(x[3000:5000], b.T) and rt.slot_end_frame(0) is None


def test_stream_voice_chunks_in_time_play_seamlessly():
    rt, m, _ = _pair(fade_ms=1.0)
    data = _noise(31, 12000, amp=0.5)
    sv = rt.open_stream(2, gain=0.5)
    sv.write(data[:, :3000])
    assert sv.start("bar", at_frame=1000) == 1000
    out = []
    for i in range(60):
        if i in (5, 12, 20):  # each chunk comes before the previous one has played out
            k = {5: 3000, 12: 6000, 20: 9000}[i]
            sv.write(data[:, k:k + 3000])
        if i == 20:
            sv.close()
        rt.pump()
        out.append(m.render())
    x = np.concatenate(out)
    assert np.array_equal(x[1000:13000], (0.5 * data.T).astype(np.float32))
    assert np.all(x[:1000] == 0) and np.all(x[13000:] == 0)
    assert sv.misses == 0 and rt.misses == 0
    assert rt.slot_end_frame(2) is None and rt.stats()["slots_playing"] == []


def test_stream_voice_waits_silently_for_a_late_chunk_and_counts_a_miss():
    rt, m, _ = _pair(fade_ms=1.0)
    data = _noise(30, 8000, amp=0.5)
    sv = rt.open_stream(2, gain=0.5)
    sv.write(data[:, :6000])
    assert sv.start("now") == 0
    out = []
    for _ in range(40):  # 10240 frames: the producer is late after 6000
        rt.pump()
        out.append(m.render())
    x = np.concatenate(out)
    assert np.allclose(x[:6000], 0.5 * data[:, :6000].T, atol=1e-7) and np.all(x[6000:] == 0)
    assert rt.misses == 0 and rt.stats()["slots_playing"] == [2]  # the ring never ran empty: silence follows
    sv.write(data[:, 6000:])
    sv.close()
    for _ in range(60):
        rt.pump()
        out.append(m.render())
    x = np.concatenate(out)[:, 0]
    assert sv.misses == 1 and sv.padded > 0
    late = x[10240:]
    nz = np.flatnonzero(late)
    assert nz.size == 2000 and nz[-1] - nz[0] == 1999  # the late chunk whole, in one piece
    assert nz[0] <= rt._margin + BLOCK  # right ahead of where the callback read
    assert np.allclose(late[nz[0] + rt.fade:nz[0] + 2000], 0.5 * data[0, 6000 + rt.fade:], atol=1e-7)
    assert rt.slot_end_frame(2) is None and rt.stats()["slots_playing"] == []


def test_stream_voice_cancel_fades_out():
    rt, m, _ = _pair(fade_ms=2.0)
    sv = rt.open_stream(1)
    sv.write(np.full((2, 20000), 0.5, np.float32))
    sv.start("now")
    out = [m.render() for _ in range(4) if rt.pump() is None]
    sv.cancel()
    cut = rt._slots.get(1) is None
    out += [m.render() for _ in range(6) if rt.pump() is None]
    x = np.concatenate(out)[:, 0]
    assert cut and np.all(x[-3 * BLOCK:] == 0)
    assert np.max(np.abs(np.diff(x))) < 0.5 / rt.fade * 4  # a ramp, not a step


def test_a_ring_that_runs_dry_is_restarted_and_counted():
    """A feeder stall longer than its lead empties a ring (rtmixer then ends the action silently):
    the next pass sees it, counts a miss and restarts the voice where it should be."""
    rt, m, _ = _pair()
    loop = _noise(40, int(4 * SR))
    rt.schedule(0, loop, loop=True, launch="now")
    for _ in range(int((LEAD_SECONDS + 0.5) * SR / BLOCK)):  # no pump: the feeder stalls
        m.render()
    assert rt.misses == 0
    rt.pump()
    assert rt.misses == 1
    for _ in range(4):
        rt.pump()
        x = m.render()
    assert np.count_nonzero(x) > 0 and rt.stats()["slots_playing"] == [0]


def test_buffers_are_retired_only_after_the_callback_is_done_with_them():
    rt, m, _ = _pair()
    rt.schedule(0, _noise(50, 1000), launch="now")
    v = rt._slots[0]
    assert not is_done(m, v.action)
    for _ in range(8):
        rt.pump()
        m.render()
    assert is_done(m, v.action) and v not in rt._voices and not m._actions.get(v.action)


def test_the_action_queue_takes_chains_whole_and_reports_a_full_queue():
    from livegen.output.rt_voices import buffer_action

    m = OfflineMixer(2, SR, BLOCK, qsize=8)
    bufs = [np.full((10, 2), 0.1 * (i + 1), np.float32) for i in range(3)]
    enqueue_chain(m, [buffer_action(b, 0.0) for b in bufs])  # one queue entry: three actions
    enqueue_chain(m, [buffer_action(bufs[0], 0.0)])
    assert m._action_q.read_available == 2 and len(m._actions) == 4
    x = m.render()
    assert np.isclose(x[0, 0], 0.1 + 0.2 + 0.3 + 0.1) and np.all(x[10:] == 0)
    assert not m.actions  # all four came back on the result queue and were dropped
    full = OfflineMixer(2, SR, BLOCK, qsize=2)
    enqueue_chain(full, [buffer_action(bufs[0], 0.0)])
    enqueue_chain(full, [buffer_action(bufs[1], 0.0)])
    with pytest.raises(RuntimeError):
        enqueue_chain(full, [buffer_action(bufs[2], 0.0)])
    assert len(full._actions) == 2  # the refused one is not kept


def test_stats_counts_blocks_and_underflows():
    rt, m, _ = _pair()
    for i in range(6):
        m.underflow_next = i == 3
        rt.pump()
        m.render()
    rt.pump()
    m.render()
    rt.pump()
    s = rt.stats()
    assert s["backend"] == "rtmixer" and s["underflows"] == 1 and s["callbacks"] >= 6
    assert s["last_underflow_time"] is not None
