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
    assert p.frame_at(t0) == 768
    assert p.frame_at(t0 + 0.5) == 768 + 22050
    p._latency = 0.01  # the output latency: what is heard at t was rendered 10 ms before
    assert p.frame_at(t0 + 0.5) == 768 + 22050 - 441
