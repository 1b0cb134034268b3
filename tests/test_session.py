"""The session in-process, against the capabilities of a real (tiny, random-weight) Stable Audio
model: one request builder for every input, refusals at intake, echoes, get, hot reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from livegen import preflight
from livegen.limits import Limits, ModelCaps
from livegen.mapping import Mapper, MidiEvent
from livegen.session import Answer, Echo, Query, Queue, Refuse, Session, StopSlot, TempoChanged
from livegen.settings import FolderSettings, ModelSettings, Settings

MAPPING = """\
params:
  prompt: base
  seconds: 0.25
  steps: 4
banks:
  - name: drums
    prompts: [kick, snare]
  - name: keys
    prompts: [rhodes, organ]
midi:
  - note: 36-37
    action: generate
    prompt: "{pad_prompt}"
  - note: 40
    action: generate
    prompt: "play only"
    outputs: [play]
  - cc: 1
    action: set
    param: cfg
    range: [1, 9]
  - cc: 2
    action: set
    param: bars
    range: [0.25, 8]
osc:
  - address: /my/gen
    args: [prompt, seed, seconds]
    action: generate
    prompt: "{prompt}"
    seed: "{seed}"
    seconds: "{seconds}"
"""


@pytest.fixture(scope="module")
def caps(tmp_path_factory) -> dict[str, ModelCaps]:
    from livegen.models.stable_audio import StableAudioPipeline
    from tests.models.stable_audio.random_converted import write_random_converted

    pipe = StableAudioPipeline.from_converted(write_random_converted(tmp_path_factory.mktemp("tiny"), sample_size=22528))
    return {"default": ModelCaps.from_engine("default", pipe, ModelSettings(seconds=0.25))}


def make(caps, text: str = MAPPING, folder: bool = True, **settings_changes) -> Session:
    settings = Settings(folder=FolderSettings(path=Path("/tmp") if folder else None),
                        models={"default": ModelSettings(seconds=0.25)}, **settings_changes)
    return Session(settings, Mapper.from_yaml(text, "test.yaml"), caps)


ORIGIN = "osc:127.0.0.1:5000"


def queued(outcomes) -> list:
    return [o.request for o in outcomes if isinstance(o, Queue)]


def refusal(outcomes) -> str:
    assert not queued(outcomes), outcomes
    (r,) = [o for o in outcomes if isinstance(o, Refuse)]
    return r.reason


def test_the_loaded_model_sets_the_limits(caps):
    c = caps["default"]
    assert c.max_seconds == pytest.approx(22528 / 44100)  # the tiny model's window
    assert c.samplers == ("pingpong", "euler", "rk4", "dpmpp")
    assert (c.default_sampler, c.default_steps, c.default_cfg) == ("pingpong", 8, 1.0)


def test_a_builtin_verb_and_a_mapping_rule_give_the_same_request(caps):
    s = make(caps)
    (a,) = queued(s.osc("/livegen/generate", ("warm pad", 5, 0.25), ORIGIN))
    (b,) = queued(s.osc("/my/gen", ("warm pad", 5, 0.25), ORIGIN))
    assert a == b
    # also split into words, as Max and Pd send an unquoted prompt
    (c,) = queued(s.osc("/my/gen", ("warm", "pad", 5, 0.25), ORIGIN))
    (d,) = queued(s.osc("/livegen/generate", ("warm", "pad", 5.0, 0.25), ORIGIN))
    assert c == d == a


def test_requests_are_complete_with_the_values_used(caps):
    s = make(caps)
    (r,) = queued(s.osc("/livegen/generate", ("x",), ORIGIN))
    assert (r.steps, r.cfg_scale, r.sampler, r.seconds, r.bars, r.model) == (4, 1.0, "pingpong", 0.25, None, "default")
    assert r.outputs == ("play", "folder") and r.origin == ORIGIN and r.bpm == 120.0
    s.osc("/livegen/steps", ("default",), ORIGIN)
    (r,) = queued(s.osc("/livegen/generate", ("x",), ORIGIN))
    assert r.steps == 8  # the model's default, written into the request
    (p,) = queued(s.midi(MidiEvent("note_on", 0, 40, 100)))
    assert p.outputs == ("play",)  # the rule asks for play only: no file
    assert make(caps, folder=False).build_request({"prompt": "x"}, None).outputs == ("play",)


@pytest.mark.parametrize("address,args,words", [
    ("/livegen/seconds", (2.0,), "renders at most 0.51 s"),
    ("/livegen/generate", ("x", 1, 3.0), "renders at most 0.51 s"),
    ("/livegen/generate", ("x", 1, 1e-30), "shorter than one audio frame"),
    ("/livegen/bars", (1e-9,), "bars must be between"),
    ("/livegen/bars", (1e300,), "bars must be between"),
    ("/livegen/bars", (2,), "renders at most 0.51 s"),  # 4 s at 120 bpm
    ("/livegen/sampler", ("foo",), "has no sampler 'foo'; use one of pingpong, euler, rk4, dpmpp"),
    ("/livegen/model", ("nosuch",), "no model 'nosuch'; this daemon has default"),
    ("/livegen/steps", (0,), "Steps must be a whole number from 1 to 250"),
    ("/livegen/steps", (5000,), "Steps must be a whole number from 1 to 250"),
    ("/livegen/cfg", (float("nan"),), "cfg must be a finite number"),
    ("/livegen/seed", (2**33,), "seed must be a whole number from 0"),
    ("/livegen/bank", ("nosuch",), "no bank 'nosuch'; the banks are drums, keys"),
    ("/livegen/bank", (5,), "Bank 5 does not exist"),
    ("/livegen/launch", (7,), "launch must be one of now, beat, bar"),
    ("/livegen/subscribe", (70000,), "port must be a whole number from 1 to 65535"),
    ("/livegen/[", (), "Unknown address /livegen/["),
])
def test_what_cannot_be_rendered_is_refused_at_intake(caps, address, args, words):
    s = make(caps)
    before = dict(s.state.params)
    reason = refusal(s.osc(address, args, ORIGIN))
    assert words.lower() in reason.lower(), reason
    assert reason.endswith("."), reason
    assert "Error" not in reason  # no Python class names
    assert s.state.params == before  # nothing changed


def test_every_accepted_set_is_echoed_with_the_value_in_force(caps):
    s = make(caps)
    assert s.osc("/livegen/cfg", (3,), ORIGIN) == [Echo("cfg", (3.0,))]
    assert s.osc("/livegen/set", ("sampler", "euler"), ORIGIN) == [Echo("sampler", ("euler",))]
    assert s.osc("/livegen/sampler", ("",), ORIGIN) == [Echo("sampler", ("pingpong",))]  # back to the default
    assert s.osc("/livegen/launch", (1.0,), ORIGIN) == [Echo("launch", ("beat",))]  # a CHOP's float
    assert s.osc("/livegen/bank", ("keys",), ORIGIN) == [Echo("bank", (1, "keys"))]
    assert s.osc("/livegen/seed", (-1,), ORIGIN) == [Echo("seed", (-1,))]
    out = s.osc("/livegen/bpm", (240,), ORIGIN)
    assert out == [Echo("bpm", (240.0,)), TempoChanged(240.0, 4)]
    # a duration clears the other one, and both are echoed
    assert s.osc("/livegen/bars", (0.25,), ORIGIN) == [Echo("bars", (0.25,)), Echo("seconds", (0.0,))]
    # a knob on the controller is echoed too (to subscribers)
    out = s.midi(MidiEvent("control_change", 0, control=1, value=127))
    assert out == [Echo("cfg", (9.0,))]


def test_get_answers_the_value_in_force(caps):
    s = make(caps)
    assert s.osc("/livegen/get", ("steps",), ORIGIN) == [Answer("steps", (4,))]
    s.osc("/livegen/steps", ("default",), ORIGIN)
    assert s.osc("/livegen/get", ("steps",), ORIGIN) == [Answer("steps", (8,))]
    assert s.osc("/livegen/get", ("bpm",), ORIGIN) == [Answer("bpm", (120.0,))]
    assert s.osc("/livegen/get", ("model",), ORIGIN) == [Answer("model", ("default",))]
    assert "no parameter 'nope'" in refusal(s.osc("/livegen/get", ("nope",), ORIGIN))
    assert s.osc("/livegen/status", (), ORIGIN)[0].__class__ is Query
    assert s.osc("/livegen/stop", (), ORIGIN) == [StopSlot(None)]


def test_reroll_uses_the_slot_request_with_a_new_seed(caps):
    s = make(caps)
    (r,) = queued(s.midi(MidiEvent("note_on", 0, 37, 100)))
    assert (r.prompt, r.slot) == ("snare", 1)
    (again,) = queued(s.osc("/livegen/reroll", (1,), ORIGIN))
    assert again.replace(origin=r.origin) == r.replace(seed=None) and again.seed is None
    assert "Slot 5 has no request" in refusal(s.osc("/livegen/reroll", (5,), ORIGIN))


def test_hot_reload_applies_the_file_except_what_a_performer_changed(caps):
    s = make(caps)
    s.osc("/livegen/cfg", (3,), ORIGIN)
    edited = MAPPING.replace("steps: 4", "steps: 6\n  cfg: 5").replace("prompt: base", "prompt: edited")
    s.reload(Mapper.from_yaml(edited, "test.yaml"))
    p = s.state.params
    assert (p["steps"], p["prompt"]) == (6, "edited")  # the edited params block takes effect
    assert p["cfg"] == 3.0  # the performer set cfg since the last load: it stays
    s.reload(Mapper.from_yaml(edited, "test.yaml"))  # the file did not change cfg again: 3 stays
    assert s.state.params["cfg"] == 3.0
    s.reload(Mapper.from_yaml(edited.replace("cfg: 5", "cfg: 7"), "test.yaml"))
    assert s.state.params["cfg"] == 7.0  # a later edit of the file wins


def test_start_up_checks_name_the_file_line_and_the_rule(caps):
    limits = Limits.from_settings(Settings(), caps)
    settings = Settings(models={"default": ModelSettings(sampler="foo", seconds=0.25)})
    (problem,) = preflight.check_settings(settings, limits)
    assert "models.default.sampler" in problem and "no sampler 'foo'" in problem
    found = preflight.check_mapping(Mapper.from_yaml(MAPPING, "test.yaml"), Settings(), limits)
    assert found.errors == []
    (warning,) = found.warnings
    assert warning.startswith("test.yaml:") and "CC 2" in warning and "bars up to 8" in warning
    bad = MAPPING.replace("seconds: 0.25", "seconds: 8").replace('prompt: "play only"', 'prompt: "x"\n    seconds: 3')
    found = preflight.check_mapping(Mapper.from_yaml(bad, "bad.yaml"), Settings(), limits)
    assert any(e.startswith("bad.yaml:3: parameter 'seconds'") for e in found.errors), found.errors
    assert any("note 40" in e and "renders at most" in e for e in found.errors), found.errors


def test_a_musicgen_model_ignores_the_state_steps_and_sampler(caps, transformers_ref, tmp_path):
    from livegen.models.musicgen import MusicGenPipeline
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    make_tiny_musicgen(tmp_path / "mg", "mono")
    pipe = MusicGenPipeline.from_pretrained(str(tmp_path / "mg"))
    mg = ModelCaps.from_engine("mg", pipe, ModelSettings(engine="musicgen", seconds=0.5))
    assert (mg.samplers, mg.default_steps, mg.max_seconds, mg.sample_rate) == ((), None, None, 32000)
    s = make(caps)
    s.set_caps({**caps, "mg": mg})
    assert s.osc("/livegen/model", ("mg",), ORIGIN) == [Echo("model", ("mg",))]
    (r,) = queued(s.osc("/livegen/generate", ("x", 1, 2.0), ORIGIN))  # past the trained window: allowed
    assert (r.model, r.steps, r.sampler, r.cfg_scale) == ("mg", None, None, 3.0)
