"""Re-anchoring the player's bar grid (livegen/output/player.py), with the callback driven by hand."""

from __future__ import annotations

import time

import numpy as np

from livegen.output.player import Player
from livegen.settings import AudioSettings, TempoSettings


def test_a_bar_launch_lands_on_the_re_anchored_bar():
    p = Player(AudioSettings(blocksize=256), TempoSettings(bpm=120.0))
    out = np.zeros((256, 2), np.float32)
    for _ in range(10):
        p.callback(out, 256, None, None)
    bar = 4 * 22050  # 120 bpm, 4/4, 44.1 kHz
    assert p.launch_frame("bar") == bar  # the free-running grid from frame 0
    p.anchor_bar(1000)  # the host's bar line was at frame 1000 (the stream is at 2560)
    assert p.launch_frame("bar") == 1000 + bar
    assert p.launch_frame("beat") == 1000 + 22050
    start = p.schedule(0, np.ones((2, 100), np.float32), launch="bar")
    assert start == 1000 + bar
    p.anchor_bar(5000)  # a bar line ahead of the stream: the grid extends backwards from it too
    assert p.launch_frame("bar") == 5000
    assert p.launch_frame("beat") == 5000  # (the beat before it, 5000 - 22050, is in the past)
    p.set_bpm(128.0)  # a tempo change pivots on the anchored grid's last bar line before now
    assert p.origin == 5000 - bar


def test_frame_at_maps_monotonic_time_to_the_frame_heard_then():
    p = Player(AudioSettings(blocksize=256))
    out = np.zeros((256, 2), np.float32)
    assert p.frame_at(time.monotonic()) == 0  # no callback yet: the current frame
    for _ in range(4):
        p.callback(out, 256, None, None)
    t0, f0 = p._clock
    assert f0 == 768
    assert abs(p.frame_at(t0) - 768) <= 256  # (the four callbacks ran at once: the envelope is the first)
    p._offset = t0 - 768 / 44100  # a stream whose frame 768 was rendered at t0
    assert p.frame_at(t0) == 768
    assert p.frame_at(t0 + 0.5) == 768 + 22050
    p._latency = 0.01  # the output latency: what is heard at t was rendered 10 ms before
    assert p.frame_at(t0 + 0.5) == 768 + 22050 - 441


def test_a_late_callback_does_not_move_the_stream_clock():
    p = Player(AudioSettings(blocksize=256))
    out = np.zeros((256, 2), np.float32)
    t = [100.0]
    import livegen.output.player as player_mod

    real = player_mod.time.monotonic
    player_mod.time.monotonic = lambda: t[0]
    try:
        for i in range(200):  # on time: block i at 100 + i * 256 / 44100
            t[0] = 100.0 + i * 256 / 44100
            p.callback(out, 256, None, None)
        t[0] = 100.0 + 200 * 256 / 44100 + 0.020  # the next callback runs 20 ms late
        p.callback(out, 256, None, None)
        assert p.frame_at(100.0 + 1.0) == 44100  # the on-time mapping, not one 20 ms off
        base = 100.0 + 201 * 256 / 44100
        for i in range(20):  # then cycles were lost (xruns): every callback from now on is 140 ms "late"
            t[0] = base + 0.140 + i * 256 / 44100
            p.callback(out, 256, None, None)
        assert p.frame_at(t[0]) == p.frame - 256  # (the last callback's frame) the step is followed once it lasts
    finally:
        player_mod.time.monotonic = real
