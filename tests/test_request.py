import pytest

from livegen.limits import Limits
from livegen.request import Clip, Request, RequestError
from livegen.settings import EngineSettings, Settings


def test_defaults_validate():
    Request("warm pad").validate()
    Request("warm pad", bars=4, bpm=128, steps=8, cfg_scale=1.0, slot=3, outputs=("play", "folder")).validate()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"prompt": "   "}, "empty"),
        ({"prompt": "x" * 501}, "501 characters"),
        ({"seconds": -1.0}, "positive"),
        ({"seconds": 48.0}, "at most 47"),
        ({"bars": 0}, "bars"),
        ({"bars": 100, "bpm": 120}, "200.00 s"),
        ({"seconds": 2.0, "bars": 1}, "not both"),
        ({"steps": 0}, "Steps"),
        ({"steps": 251}, "1 to 250"),
        ({"steps": 2.5}, "whole number"),
        ({"bpm": 10}, "20 and 400"),
        ({"bpm": 401}, "20 and 400"),
        ({"bpm": float("nan")}, "20 and 400"),
        ({"seed": -3}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"cfg_scale": -1.0}, "CFG"),
        ({"outputs": ("speaker",)}, "Unknown output"),
        ({"outputs": ()}, "no outputs"),
        ({"launch": "later"}, "launch"),
        ({"gain": 9.0}, "gain"),
        ({"slot": -1}, "slot"),
        ({"beats_per_bar": 0}, "Beats per bar"),
    ],
)
def test_absurd_values_are_refused_with_a_sentence(changes, words):
    with pytest.raises(RequestError) as info:
        Request("warm pad").replace(**changes).validate()
    msg = str(info.value)
    assert words in msg
    assert msg.endswith(".") and "\n" not in msg


def test_limits_come_from_engine_settings():
    lim = Limits.from_settings(Settings(engine=EngineSettings(max_steps=10, max_seconds=5.0, max_prompt_chars=8)))
    Request("short", seconds=5.0, steps=10).validate(lim)
    with pytest.raises(RequestError):
        Request("short", steps=11).validate(lim)
    with pytest.raises(RequestError):
        Request("short", seconds=5.5).validate(lim)
    with pytest.raises(RequestError):
        Request("too long prompt").validate(lim)


def test_duration_seconds_and_samples():
    assert Request("x", seconds=3.5).duration_seconds() == 3.5
    assert Request("x", bars=2, bpm=120).duration_seconds() == 4.0
    assert Request("x", bars=1, bpm=90, beats_per_bar=3).duration_seconds() == 2.0
    assert Request("x", bars=2).duration_seconds(default_bpm=60) == 8.0
    assert Request("x").duration_seconds(default_seconds=6) == 6.0
    with pytest.raises(RequestError):
        Request("x").duration_seconds()
    # Bars are rounded once on the whole length: 3 bars at 137 bpm, 44.1 kHz.
    assert Request("x", bars=3, bpm=137).duration_samples(44100) == round(3 * 4 * 60 / 137 * 44100)
    assert Request("x", seconds=1.5).duration_samples(32000) == 48000


def test_request_is_immutable_and_clip_properties():
    import dataclasses

    import numpy as np

    r = Request("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.prompt = "y"  # type: ignore[misc]
    c = Clip(r, np.zeros((2, 44100), np.float32), 44100, seed=1, model="m", job_id=7)
    assert (c.channels, c.frames, c.seconds) == (2, 44100, 1.0)
    assert r.to_dict()["outputs"] == ["play"]
