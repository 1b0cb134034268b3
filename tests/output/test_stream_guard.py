"""The stream guard on rtmixer's callback driven offline: a stall, its end, a stopped stream reopened."""

import time

import numpy as np

from livegen.output.rt_player import RtPlayer
from livegen.output.rt_voices import OfflineMixer
from livegen.output.stream_guard import STALL_SECONDS, StreamGuard
from livegen.settings import AudioSettings, TempoSettings


def _player():
    m = OfflineMixer(2, 44100, 256)
    p = RtPlayer(AudioSettings(blocksize=256, fade_ms=1.0), TempoSettings(), mixer=m)
    p.start()
    return p, m


def test_a_callback_that_stops_answering_is_reported_and_its_return_too():
    p, m = _player()
    faults, recovered = [], []
    g = StreamGuard(p, faults.append, recovered.append)
    p.pump()  # posts a counters fetch
    m.render()
    p.pump()
    g._check()
    assert g.state == "ok" and not faults
    p.pump()  # the next fetch waits: no block is rendered from now on
    time.sleep(STALL_SECONDS + 0.05)
    g._check()
    assert g.state == "stalled" and p.stalled and p.stats()["stalled"] and len(faults) == 1
    assert "has not run" in faults[0]
    m.render()
    g._check()
    assert g.state == "ok" and not p.stalled and recovered == ["The audio stream runs again."]


def test_a_stopped_stream_is_reopened_and_plays_again():
    p, m = _player()
    for _ in range(10):
        p.pump()
        m.render()
    frame = p.frame
    faults, recovered = [], []
    g = StreamGuard(p, faults.append, recovered.append)
    fresh = OfflineMixer(2, 44100, 256)
    opened = []

    def reopen():  # what _open does with a device: a new running mixer
        opened.append(fresh)
        p._m = fresh
        fresh.start()

    p.reopen = reopen
    m.active = False  # PortAudio stopped the stream
    g._check()
    assert g.state == "dead" and faults and p.stalled and p._m is None
    g._check()
    assert opened and g.state == "ok" and not p.stalled and g.reopened == 1 and recovered
    p.schedule(0, np.ones((2, 100), np.float32), launch="now")
    p.pump()
    assert np.count_nonzero(fresh.render()) == 200 and frame > 0
