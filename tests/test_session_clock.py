"""The session following a MIDI clock (tempo.source / a mapping's tempo rule), in-process."""

from __future__ import annotations

import numpy as np
import pytest

from livegen.mapping import Mapper, MidiEvent
from livegen.session import Answer, ClockNotice, Echo, Reanchor, Session, TempoChanged, TempoSource
from livegen.settings import ModelSettings, Settings, TempoSettings

PLAIN = "params:\n  prompt: base\n"
WITH_TEMPO_RULE = PLAIN + "midi:\n  - event: clock\n    action: tempo\n"


def make(text: str = PLAIN, source: str = "midi_clock") -> Session:
    settings = Settings(models={"default": ModelSettings(seconds=0.25)}, tempo=TempoSettings(source=source))
    return Session(settings, Mapper.from_yaml(text, "test.yaml"), {})


def clock(session: Session, bpm: float, beats: float, t0: float, jitter: float = 0.0, seed: int = 0) -> list:
    out = []
    rng = np.random.default_rng(seed)
    for i in range(int(beats * 24)):
        t = t0 + i * 60.0 / (24 * bpm) + rng.uniform(-jitter, jitter)
        out.extend(session.midi(MidiEvent("clock", time=t)))
    return out


def test_the_source_comes_from_the_settings_or_a_tempo_rule():
    assert make(source="internal").tempo_source is TempoSource.INTERNAL
    assert make(source="midi_clock").tempo_source is TempoSource.MIDI_CLOCK
    assert make(WITH_TEMPO_RULE, source="internal").tempo_source is TempoSource.MIDI_CLOCK
    assert make(source="internal").tempo_status()["source"] == "internal"


def test_an_internal_source_ignores_the_clock():
    s = make(source="internal")
    out = clock(s, 97.0, 16, 10.0)
    assert not [o for o in out if isinstance(o, (Echo, TempoChanged, Reanchor))]
    assert s.bpm == 120.0


def test_a_followed_clock_sets_the_tempo_echoes_it_and_get_answers_it():
    s = make()
    out = clock(s, 97.0, 24, 10.0, jitter=0.002)
    echoes = [o for o in out if isinstance(o, Echo) and o.param == "bpm"]
    changes = [o for o in out if isinstance(o, TempoChanged)]
    assert echoes and len(echoes) == len(changes) <= 4
    assert s.bpm == pytest.approx(97.0, abs=0.05)
    (answer,) = s.osc("/livegen/get", ("bpm",), "osc:127.0.0.1:5000")
    assert isinstance(answer, Answer) and answer.values == (s.bpm,)
    assert s.tempo_status()["clock"]["bpm"] == s.bpm


def test_start_and_song_position_re_anchor_the_grid():
    s = make()
    clock(s, 120.0, 4, 10.0)
    assert s.midi(MidiEvent("start", time=12.0)) == []
    out = clock(s, 120.0, 2, 12.1)
    anchors = [o for o in out if isinstance(o, Reanchor)]
    assert anchors[0].beats == 0.0 and anchors[0].time == pytest.approx(12.1, abs=1e-3)
    assert anchors[0].beats_per_bar == 4 and anchors[0].bpm == 120.0
    s.midi(MidiEvent("stop", time=13.2))
    s.midi(MidiEvent("songpos", value=32, time=13.3))  # bar 3
    s.midi(MidiEvent("continue", time=13.4))
    out = clock(s, 120.0, 1, 13.5)
    anchors = [o for o in out if isinstance(o, Reanchor)]
    assert anchors[0].beats == 8.0 and anchors[0].time == pytest.approx(13.5, abs=1e-3)


def test_a_lost_clock_is_noticed_once():
    s = make()
    clock(s, 120.0, 4, 10.0)
    assert s.clock_check(12.2) == []
    (notice,) = s.clock_check(13.0)
    assert isinstance(notice, ClockNotice) and notice.lost and "stopped arriving" in notice.sentence
    assert s.clock_check(14.0) == []
    back = s.midi(MidiEvent("clock", time=20.0))
    assert [o for o in back if isinstance(o, ClockNotice)] == [ClockNotice("The MIDI clock is back.", False)]
