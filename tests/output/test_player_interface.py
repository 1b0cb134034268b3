"""The Player interface shared by the Python reference player and the rtmixer player: ``at_frame``,
``slot_end_frame``, ``open_stream`` (StreamVoice) and the contract's stats keys (Python player,
driven by calling its callback)."""

import time

import numpy as np

from livegen.output.player import Player
from livegen.settings import AudioSettings, TempoSettings

STATS_KEYS = {"callbacks", "frames", "underflows", "last_underflow_time", "xruns", "slots_playing",
              "slot_levels", "slot_positions", "running", "stalled", "backend"}


def _player():
    return Player(AudioSettings(blocksize=256, voices=4, fade_ms=1.0), TempoSettings(bpm=120, beats_per_bar=4))


def _run(p, blocks, block=256):
    import sounddevice as sd

    out = np.zeros((block, p.channels), np.float32)
    res = []
    for _ in range(blocks):
        p.callback(out, block, None, sd.CallbackFlags())
        res.append(out.copy())
    return np.concatenate(res, axis=0)


def test_at_frame_overrides_launch_and_slot_end_frame_follows():
    p = _player()
    clip = np.full((2, 300), 0.25, np.float32)
    assert p.slot_end_frame(0) is None
    start = p.schedule(0, clip, launch="bar", at_frame=1000)
    assert start == 1000 and p.slot_end_frame(0) == 1300
    y = _run(p, 8)
    assert np.all(y[:1000] == 0) and np.allclose(y[1000:1300], 0.25) and np.all(y[1300:] == 0)
    assert p.slot_end_frame(0) is None  # ended


def test_slot_end_frame_of_a_loop_is_its_next_loop_end():
    p = _player()
    p.schedule(1, np.ones((2, 500), np.float32), loop=True, launch="now")
    assert p.slot_end_frame(1) == 500
    _run(p, 3)  # frame 768: inside the second pass
    assert p.slot_end_frame(1) == 1000
    p.stop_slot(1)
    assert p.slot_end_frame(1) is None


def test_stream_voice_plays_what_was_written_and_counts_misses():
    p = _player()
    v = p.open_stream(2, gain=0.5, capacity_frames=128)  # smaller than what is written: queued in Python
    data = (np.arange(1, 601, dtype=np.float32) / 1000)[None].repeat(2, 0)
    v.write(data[:, :400])
    v.write(data[:, 400:])
    assert v.buffered_frames == 600
    assert v.start("now") == 0
    out = []
    for _ in range(4):
        out.append(_run(p, 1))
        v.flush()  # what the feed thread does
    y = np.concatenate(out)
    assert v.misses > 0  # the 128-frame ring ran dry inside blocks: counted
    v.close()
    p2 = _player()
    v2 = p2.open_stream(2, gain=0.5, capacity_frames=4096)
    v2.write(data)
    v2.close()
    v2.start("now")
    assert p2.slot_end_frame(2) == 600
    y = _run(p2, 4)
    assert np.allclose(y[:600, 0], 0.5 * data[0]) and np.all(y[600:] == 0)
    assert v2.misses == 0 and v2.done
    p.close()
    p2.close()


def test_stream_voice_cancel_silences_and_feed_thread_moves_queued_chunks():
    p = _player()
    v = p.open_stream(0, capacity_frames=256)
    v.write(np.ones((2, 2000), np.float32))
    v.start("now")
    got = 0
    for _ in range(4):
        got += int(np.count_nonzero(_run(p, 1)[:, 0]))
        time.sleep(0.05)  # the feed thread refills the ring
    assert got == 1024  # four full blocks, no gap: the thread kept up
    v.cancel()
    _run(p, 1)  # the fade
    assert np.all(_run(p, 2) == 0)
    p.close()


def test_stats_has_the_contract_keys_and_levels():
    p = _player()
    p.schedule(3, np.full((2, 44100), 0.5, np.float32), loop=True, gain=0.5, launch="now")
    _run(p, 20)
    s = p.stats()
    assert STATS_KEYS <= set(s)
    assert s["backend"] == "python" and s["slots_playing"] == [3]
    assert abs(s["slot_levels"][3] - 0.25) < 1e-6
    assert s["slot_positions"][3] == [20 * 256, 44100]
    assert s["stalled"] is False and s["last_underflow_time"] is None
