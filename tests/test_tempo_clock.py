"""The MIDI clock follower (livegen/tempo_clock.py) with synthetic tick times."""

from __future__ import annotations

import numpy as np
import pytest

from livegen.tempo_clock import Anchor, ClockBack, ClockLost, MidiClock, TempoUpdate


def tick_times(bpm: float, beats: float, t0: float = 100.0, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    """Arrival times of a clock at ``bpm``: exact tick times plus uniform jitter of +-``jitter`` s
    (a JACK period is 5.8 ms at 256 frames: up to +-2.9 ms)."""
    n = int(round(beats * 24))
    exact = t0 + np.arange(n) * 60.0 / (24 * bpm)
    return exact + np.random.default_rng(seed).uniform(-jitter, jitter, n)


def feed(clock: MidiClock, times) -> list[tuple[float, object]]:
    out = []
    for t in times:
        out.extend((float(t), e) for e in clock.tick(float(t)))
    return out


def tempos(events) -> list[tuple[float, float]]:
    return [(t, e.bpm) for t, e in events if isinstance(e, TempoUpdate)]


@pytest.mark.parametrize("seed", range(5))
def test_a_steady_clock_with_jitter_gives_a_steady_tempo(seed):
    clock = MidiClock()
    times = tick_times(120.0, 64, jitter=0.0029, seed=seed)
    events = feed(clock, times)
    settled = times[0] + 10 * 0.5  # after the window (8 beats) filled once
    late = [bpm for t, bpm in tempos(events) if t > settled]
    assert late == []  # not one change once settled
    assert clock.bpm == pytest.approx(120.0, abs=0.05)
    assert len(tempos(events)) <= 4  # the first beat's value, a refinement or two


def test_the_old_rule_flipped_by_a_tenth_and_this_one_does_not():
    # the regression input of the old tempo rule (one beat's span, rounded to 0.1): with 3 ms of
    # jitter every other beat gave 119.9/120.1; here, after settling, one value
    times = tick_times(120.0, 40, jitter=0.003, seed=11)
    spans = [times[i + 24] - times[i] for i in range(0, len(times) - 24, 24)]
    old = {round(60.0 / s, 1) for s in spans}
    assert len(old) > 1
    clock = MidiClock()
    events = feed(clock, times)
    assert len({bpm for t, bpm in tempos(events) if t > times[0] + 5.0}) <= 1


def test_a_change_from_120_to_128_is_followed_within_a_few_beats():
    clock = MidiClock()
    a = tick_times(120.0, 32, jitter=0.002, seed=1)
    start_b = a[-1] + 60.0 / (24 * 128)
    b = tick_times(128.0, 32, t0=start_b, jitter=0.002, seed=2)
    feed(clock, a)
    assert clock.bpm == pytest.approx(120.0, abs=0.05)
    events = feed(clock, b)
    beat = 60.0 / 128
    first_close = next(t for t, bpm in tempos(events) if abs(bpm - 128.0) < 0.5)
    assert first_close - start_b <= 4 * beat
    assert clock.bpm == pytest.approx(128.0, abs=0.05)
    assert [bpm for t, bpm in tempos(events) if t > start_b + 10 * beat] == []


def test_start_anchors_the_downbeat_on_the_first_tick_after_it():
    clock = MidiClock()
    feed(clock, tick_times(120.0, 4))  # clock running, transport stopped: no anchors
    assert clock.position == 0
    clock.start()
    times = tick_times(120.0, 8, t0=200.0)
    events = feed(clock, times)
    anchors = [e for _, e in events if isinstance(e, Anchor)]
    assert anchors[0] == Anchor(pytest.approx(200.0, abs=1e-6), 0.0, True)
    assert [a.beats for a in anchors] == [float(i) for i in range(8)]  # and each beat after it
    assert not any(a.restart for a in anchors[1:])
    assert clock.position == 8 * 24


def test_song_position_and_continue_restart_from_the_pointer():
    clock = MidiClock()
    clock.start()
    feed(clock, tick_times(120.0, 6))
    clock.stop()
    feed(clock, tick_times(120.0, 2, t0=110.0))  # ticks while stopped do not move the position
    assert clock.position == 6 * 24
    clock.song_position(4 * 16 + 2)  # bar 5 (4/4), third sixteenth: 32.5 beats... 64+2 sixteenths
    assert clock.position == 66 * 6
    clock.continue_()
    events = feed(clock, tick_times(120.0, 2, t0=120.0))
    anchors = [e for _, e in events if isinstance(e, Anchor)]
    assert anchors[0].restart and anchors[0].beats == pytest.approx(66 / 4)
    assert anchors[0].time == pytest.approx(120.0, abs=1e-6)
    assert anchors[1].beats == 17.0 and not anchors[1].restart  # the next whole beat


def test_anchors_use_the_fitted_line_not_the_jittered_tick():
    clock = MidiClock()
    clock.start()
    times = tick_times(120.0, 16, jitter=0.003, seed=4)
    exact = tick_times(120.0, 16)
    events = feed(clock, times)
    late = [(t, e) for t, e in events if isinstance(e, Anchor) and e.beats >= 8]
    errors = [abs(e.time - exact[int(e.beats * 24)]) for _, e in late]
    assert max(errors) < 0.0015  # within half the jitter; the raw ticks are off by up to 3 ms


def test_loss_is_reported_once_and_the_return_too():
    clock = MidiClock(timeout=0.5)
    clock.start()
    times = tick_times(120.0, 4)
    feed(clock, times)
    last = times[-1]
    assert clock.check(last + 0.3) == []
    lost = clock.check(last + 0.6)
    assert len(lost) == 1 and isinstance(lost[0], ClockLost)
    assert "stopped arriving" in lost[0].sentence and "120.00 bpm" in lost[0].sentence
    assert clock.check(last + 1.0) == []  # once
    assert clock.lost and not clock.running
    back = clock.tick(last + 2.0)
    assert any(isinstance(e, ClockBack) for e in back)
    assert not clock.lost


def test_a_stop_then_silence_is_not_a_loss():
    clock = MidiClock(timeout=0.5)
    clock.start()
    times = tick_times(120.0, 4)
    feed(clock, times)
    clock.stop()
    assert clock.check(times[-1] + 5.0) == []


def test_slow_tempi_are_not_lost_between_ticks():
    clock = MidiClock(timeout=0.05)
    times = tick_times(30.0, 4)  # ticks 83 ms apart
    feed(clock, times)
    assert clock.check(times[-1] + 0.09) == []
    assert clock.bpm == pytest.approx(30.0, abs=0.05)
