"""Musical actions in-process: the key and scale parameters, {bpm}/{key}/{scale} in prompts, the
extend and vary verbs and mapping actions (refusals included), what the engine gets from the
slot's clip, and where an extension starts on the (real, Python) player."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livegen import musical
from livegen.audio_io import resample
from livegen.engine.worker import generate_kwargs
from livegen.limits import EngineKind, ModelCaps
from livegen.mapping import Extend, Mapper, MappingError, MidiEvent, Vary
from livegen.musical import SlotSource
from livegen.output.player import Player
from livegen.request import Request, RequestError
from livegen.session import Answer, Echo, Queue, Refuse, Session
from livegen.settings import AudioSettings, FolderSettings, ModelSettings, Settings

ORIGIN = "osc:127.0.0.1:5000"
SA = ModelCaps("default", EngineKind.STABLE_AUDIO, 44100, 0.51, samplers=("pingpong", "euler"),
               default_sampler="pingpong", default_steps=8, default_cfg=1.0, default_seconds=0.25, loaded=True)
MG = ModelCaps("mg", EngineKind.MUSICGEN, 32000, None, default_cfg=3.0, default_seconds=0.25, loaded=True)

MAPPING = """\
params:
  prompt: base
  seconds: 0.25
banks:
  - name: drums
    prompts: [kick, snare]
midi:
  - note: 36-37
    action: generate
    prompt: "{pad_prompt}, {bpm} bpm, in {key} {scale}"
  - note: 48-49
    action: extend
  - note: 50
    action: vary
    slot: 1
    strength: 0.3
  - cc: 7
    action: set
    param: scale
    choices: [major, minor, dorian]
osc:
  - address: /ext/{pad}
    args: [seconds]
    action: extend
    seconds: "{seconds}"
"""


def make(caps: dict[str, ModelCaps], text: str = MAPPING) -> Session:
    models = {name: ModelSettings(engine=c.engine.value, seconds=0.25) for name, c in caps.items()}
    settings = Settings(folder=FolderSettings(path=None), models=models)
    return Session(settings, Mapper.from_yaml(text, "test.yaml"), caps)


def source(model: ModelCaps, seconds: float = 0.2, slot: int = 1, loop: bool = False, seed: int = 7) -> SlotSource:
    n = int(round(seconds * model.sample_rate))
    audio = (np.random.default_rng(seed).standard_normal((2, n)) * 0.1).astype(np.float32)
    request = Request("warm pad", model=model.name, seconds=seconds, slot=slot, loop=loop, launch="bar")
    return SlotSource(audio, model.sample_rate, request, model.name, seed, 10 + slot)


def queued(outcomes) -> list[Request]:
    return [o.request for o in outcomes if isinstance(o, Queue)]


def refusal(outcomes) -> str:
    assert not queued(outcomes), outcomes
    (r,) = [o for o in outcomes if isinstance(o, Refuse)]
    assert r.reason.endswith("."), r.reason
    return r.reason


# ---- key and scale ------------------------------------------------------------------------------
@pytest.mark.parametrize("given,key", [("C", "C"), ("f#", "F#"), ("Bb", "Bb"), ("bb", "Bb"), (" e flat ", "Eb"),
                                       ("G sharp", "G#"), ("A\u266d", "Ab")])
def test_key_names_are_read_and_written_as_in_prompts(given, key):
    assert musical.parse_key(given) == key


@pytest.mark.parametrize("given", ["H", "C##", "", "Cmaj", "do", 3])
def test_a_key_that_is_not_a_note_name_is_refused(given):
    with pytest.raises(RequestError, match="note name A to G"):
        musical.parse_key(given)


def test_scales_are_read_in_any_spelling():
    assert musical.parse_scale("Dorian") == "dorian"
    assert musical.parse_scale("harmonic_minor") == "harmonic minor"
    assert musical.parse_scale("MINOR-pentatonic") == "minor pentatonic"
    assert musical.parse_scale("aeolian") == "minor"
    with pytest.raises(RequestError, match="Unknown scale 'bebop'; use one of major, minor, dorian"):
        musical.parse_scale("bebop")


def test_key_and_scale_are_set_echoed_and_gettable_like_bpm():
    s = make({"default": SA})
    assert s.osc("/livegen/get", ("key",), ORIGIN) == [Answer("key", ("C",))]
    assert s.osc("/livegen/get", ("scale",), ORIGIN) == [Answer("scale", ("major",))]
    assert s.osc("/livegen/key", ("f#",), ORIGIN) == [Echo("key", ("F#",))]
    assert s.osc("/livegen/set", ("scale", "Harmonic_Minor"), ORIGIN) == [Echo("scale", ("harmonic minor",))]
    assert s.osc("/livegen/get", ("key",), ORIGIN) == [Answer("key", ("F#",))]
    assert "note name A to G" in refusal(s.osc("/livegen/key", ("H",), ORIGIN))
    assert "Unknown scale 'bebop'" in refusal(s.osc("/livegen/scale", ("bebop",), ORIGIN))
    assert s.state.params["key"] == "F#" and s.state.params["scale"] == "harmonic minor"  # refusals change nothing
    # a knob choosing among scales goes through the same check
    assert s.midi(MidiEvent("control_change", 0, control=7, value=127)) == [Echo("scale", ("dorian",))]
    # an empty value clears them (the browser's menus have an empty entry): the templates leave them out
    assert s.osc("/livegen/set", ("key", ""), ORIGIN) == [Echo("key", ("",))]
    assert s.osc("/livegen/scale", ("  ",), ORIGIN) == [Echo("scale", ("",))]
    assert s.state.params.get("key") is None and s.state.params.get("scale") is None
    (g,) = queued(s.osc("/livegen/generate", ("pad in {key} {scale}",), ORIGIN))
    assert g.prompt == "pad in  "


def test_key_bpm_and_scale_fill_the_prompt_templates():
    s = make({"default": SA})
    s.osc("/livegen/bpm", (128,), ORIGIN)
    s.osc("/livegen/key", ("Eb",), ORIGIN)
    s.osc("/livegen/scale", ("minor",), ORIGIN)
    (r,) = queued(s.midi(MidiEvent("note_on", 0, 36, 100)))
    assert r.prompt == "kick, 128 bpm, in Eb minor"
    # typed into the built-in verb and into the prompt parameter too; other braces stay as they are
    (g,) = queued(s.osc("/livegen/generate", ("techno {bpm} bpm in {key} {scale} {other}",), ORIGIN))
    assert g.prompt == "techno 128 bpm in Eb minor {other}"
    s.osc("/livegen/bpm", (92.5,), ORIGIN)
    s.osc("/livegen/prompt", ("dub at {bpm}",), ORIGIN)
    assert s.build_request({}, None).prompt == "dub at 92.5"


def test_a_mapping_with_a_wrong_key_or_scale_is_refused_with_its_line():
    with pytest.raises(MappingError) as exc:
        Mapper.from_yaml("params:\n  key: H\n  scale: bebop\n", "bad.yaml")
    assert exc.value.errors[0].startswith("bad.yaml:2: parameter 'key': The key must be a note name")
    assert exc.value.errors[1].startswith("bad.yaml:3: parameter 'scale': Unknown scale 'bebop'")
    m = Mapper.from_yaml("params:\n  key: f#\n  scale: Dorian\n")
    assert (m.params["key"], m.params["scale"]) == ("F#", "dorian")


# ---- extend and vary: the session ----------------------------------------------------------------
def test_extend_continues_the_slot_clip_with_musicgen():
    s = make({"default": SA, "mg": MG})
    src = source(SA, 0.2, slot=1, loop=True)
    s.slot_sources[1] = src
    (r,) = queued(s.osc("/livegen/extend", (1,), ORIGIN))
    assert (r.action, r.model, r.slot, r.prompt, r.loop, r.launch) == ("extend", "mg", 1, "warm pad", True, "bar")
    assert r.source is src and r.strength is None
    assert r.seconds == pytest.approx(0.2) and r.seed is not None  # as long as the clip; its seed chosen now
    assert r.cfg_scale == 3.0  # the MusicGen model's defaults, not the source model's
    (r2,) = queued(s.osc("/livegen/extend", (1, 0.1), ORIGIN))
    assert r2.seconds == 0.1
    # from a mapping: a pad's rule extends the pad's slot; an OSC rule with an optional argument
    (m,) = queued(s.midi(MidiEvent("note_on", 0, 49, 100)))
    assert (m.action, m.slot) == ("extend", 1)
    (o,) = queued(s.osc("/ext/1", (0.15,), ORIGIN))
    assert (o.action, o.slot, o.seconds) == ("extend", 1, 0.15)
    # its plain form (the pre-render cache's metadata) leaves the audio out and makes a request again
    plain = r.to_dict()
    assert "source" not in plain and plain["action"] == "extend"
    assert Request(**{**plain, "outputs": tuple(plain["outputs"])}) == r


def test_vary_renders_audio_to_audio_from_the_slot_clip_with_stable_audio():
    s = make({"default": SA, "mg": MG})
    src = source(MG, 0.3, slot=1)
    s.slot_sources[1] = src
    (r,) = queued(s.osc("/livegen/vary", (1, 0.7), ORIGIN))
    assert (r.action, r.model, r.slot, r.strength, r.prompt) == ("vary", "default", 1, 0.7, "warm pad")
    assert r.source is src and r.seconds == pytest.approx(0.3) and r.steps == 8
    (d,) = queued(s.osc("/livegen/vary", (1,), ORIGIN))
    assert d.strength == musical.DEFAULT_STRENGTH
    (m,) = queued(s.midi(MidiEvent("note_on", 0, 50, 100)))
    assert (m.action, m.slot, m.strength) == ("vary", 1, 0.3)
    s.osc("/livegen/seed", (42,), ORIGIN)
    (f,) = queued(s.osc("/livegen/vary", (1, 0.5), ORIGIN))
    assert f.seed == 42  # the seed parameter in force, as for a generation


@pytest.mark.parametrize("caps,address,args,words", [
    ({"default": SA, "mg": MG}, "/livegen/extend", (3,), "Slot 3 has no clip to extend yet; generate one"),
    ({"default": SA, "mg": MG}, "/livegen/vary", (3, 0.5), "Slot 3 has no clip to vary yet; generate one"),
    ({"default": SA}, "/livegen/extend", (1,), "Extending needs a MusicGen model; this daemon has default "
                                               "(stable-audio)"),
    ({"mg": MG}, "/livegen/vary", (1, 0.5), "Varying needs a Stable Audio model; this daemon has mg (musicgen)"),
    ({"default": SA, "mg": MG}, "/livegen/vary", (1, 1.5), "strength must be above 0 and at most 1"),
    ({"default": SA, "mg": MG}, "/livegen/vary", (1, 0.0), "strength must be above 0 and at most 1"),
    ({"default": SA, "mg": MG}, "/livegen/vary", (1, "x"), "strength must be a number"),
    ({"default": SA, "mg": MG}, "/livegen/extend", (1, -2.0), "duration must be a positive number"),
    ({"default": SA, "mg": MG}, "/livegen/extend", (), "Expected /livegen/extend i:slot [f:seconds]"),
    ({"default": SA, "mg": MG}, "/livegen/extend", (2000,), "slot must be a whole number from 0 to 1023"),
])
def test_extend_and_vary_refusals_say_why(caps, address, args, words):
    s = make(caps)
    s.slot_sources[1] = source(MG if "mg" in caps else SA, 0.2, slot=1)
    s.slot_sources[2000] = source(MG if "mg" in caps else SA, 0.2, slot=1)
    assert words.lower() in refusal(s.osc(address, args, ORIGIN)).lower()


def test_a_clip_longer_than_the_stable_audio_window_cannot_be_varied():
    s = make({"default": SA, "mg": MG})
    s.slot_sources[2] = source(MG, 2.0, slot=2)
    reason = refusal(s.osc("/livegen/vary", (2, 0.5), ORIGIN))
    assert reason.startswith("Slot 2's clip cannot be varied: The duration is 2.00 s; model 'default' renders at most")


def test_reroll_of_an_extension_gets_a_fresh_seed_and_keeps_its_source():
    s = make({"default": SA, "mg": MG})
    s.slot_sources[1] = source(SA, 0.2, slot=1)
    (r,) = queued(s.osc("/livegen/extend", (1,), ORIGIN))
    (again,) = queued(s.osc("/livegen/reroll", (1,), ORIGIN))
    assert again.action == "extend" and again.source is r.source
    assert again.seed is not None  # never None: the pre-render cache holds plain generations only


def test_mapping_actions_extend_and_vary_are_checked_with_their_lines():
    m = Mapper.from_yaml(MAPPING)
    assert m.handle(MidiEvent("note_on", 0, 48, 100), m.initial_state()) == [Extend(0, None)]
    assert m.handle(MidiEvent("note_on", 0, 50, 100), m.initial_state()) == [Vary(1, 0.3)]
    bad = """\
midi:
  - note: 50
    action: vary
    slot: 1
    strength: 2
  - cc: 3
    action: extend
  - note: 51
    action: extend
    slot: 1
    strength: 0.5
"""
    with pytest.raises(MappingError) as exc:
        Mapper.from_yaml(bad, "bad.yaml")
    errors = exc.value.errors
    assert "bad.yaml:5: 'strength' must be above 0 and at most 1" in errors[0]
    assert errors[1] == "bad.yaml:6: this extend rule needs a 'slot' (the slot whose clip it extends)."
    assert errors[2].startswith("bad.yaml:11: unknown key 'strength' for a extend rule.")


def test_requests_check_their_action():
    src = source(SA, 0.2, slot=1)
    with pytest.raises(RequestError, match="To extend needs a slot and its clip"):
        Request("x", action="extend").validate()
    with pytest.raises(RequestError, match="Unknown action 'loop'"):
        Request("x", action="loop").validate()
    with pytest.raises(RequestError, match="Only vary takes a strength"):
        Request("x", action="extend", slot=1, source=src, strength=0.5).validate()
    from livegen.limits import Limits

    lim = Limits(models={"default": SA, "mg": MG})
    with pytest.raises(RequestError, match="To vary needs a Stable Audio model; 'mg' is musicgen"):
        Request("x", model="mg", action="vary", slot=1, source=src, strength=0.5, seconds=0.2).validate(lim)
    Request("x", model="mg", action="extend", slot=1, source=src, seconds=0.2).validate(lim)


# ---- what the engine gets -------------------------------------------------------------------------
class FakeMusicGen:
    """The attributes and signature of MusicGenPipeline that source_kwargs and generate_kwargs read."""

    sample_rate = 32000
    hop_length = 640
    max_seconds = 1.0

    def generate(self, prompt: str, seconds: float = 5.0, guidance_scale: float = 3.0, seed: int | None = None,
                 audio_prompt: np.ndarray | None = None, progress=None, cancel=None) -> np.ndarray:
        raise NotImplementedError


class FakeStableAudio:
    sample_rate = 44100

    def generate(self, prompt: str, seconds: float = 10.0, steps: int | None = None, cfg_scale: float | None = None,
                 seed: int | None = None, init_audio: np.ndarray | None = None, init_strength: float | None = None,
                 progress=None, cancel=None) -> np.ndarray:
        raise NotImplementedError


def test_extend_prompts_musicgen_with_the_clip_tail_in_whole_codec_frames():
    src = source(MG, 0.7013, slot=1)  # 22442 frames at 32 kHz: not a whole number of 640-frame codec frames
    r = Request("x", model="mg", action="extend", slot=1, source=src, seconds=0.4)
    kw = generate_kwargs(FakeMusicGen(), r, 0.4)
    tail = kw["audio_prompt"]
    # the window (1 s) holds 0.6 s of prompt before 0.4 s of continuation: 30 codec frames, the clip's last
    assert tail.shape == (2, 19200)
    np.testing.assert_array_equal(tail, src.audio[:, -19200:])  # same rate: the original samples, not resampled
    assert "init_audio" not in kw and kw["seconds"] == 0.4
    short = Request("x", model="mg", action="extend", slot=1, source=source(MG, 0.105), seconds=0.2)
    assert generate_kwargs(FakeMusicGen(), short, 0.2)["audio_prompt"].shape == (2, 3200)  # 5 whole frames of 5.25
    # a continuation as long as the window still hears half the window of the clip
    assert generate_kwargs(FakeMusicGen(), r.replace(seconds=1.0), 1.0)["audio_prompt"].shape == (2, 16000)
    tiny = Request("x", model="mg", action="extend", slot=1, source=source(MG, 0.015), seconds=0.2)
    with pytest.raises(RequestError, match="Slot 1's clip is shorter than one codec frame of the model .20 ms."):
        generate_kwargs(FakeMusicGen(), tiny, 0.2)


def test_a_stable_audio_clip_is_resampled_once_from_its_original_for_musicgen():
    src = source(SA, 0.505, slot=1)  # 22271 frames at 44.1 kHz, 16161 at 32 kHz
    r = Request("x", model="mg", action="extend", slot=1, source=src, seconds=0.25)
    tail = generate_kwargs(FakeMusicGen(), r, 0.25)["audio_prompt"]
    assert tail.shape == (2, 16000)  # the clip's last 25 whole codec frames (0.75 s of window left)
    whole = resample(src.audio, 44100, 32000)  # the whole original resampled once
    np.testing.assert_allclose(tail, whole[:, -16000:], atol=1e-5)  # the same samples


def test_vary_gives_stable_audio_the_clip_and_the_strength():
    src = source(SA, 0.3, slot=1)
    r = Request("x", action="vary", slot=1, source=src, strength=0.25, seconds=0.3, steps=2)
    kw = generate_kwargs(FakeStableAudio(), r, 0.3)
    np.testing.assert_array_equal(kw["init_audio"], src.audio)  # at the model's rate: as it was rendered
    assert kw["init_strength"] == 0.25 and kw["steps"] == 2
    assert generate_kwargs(FakeStableAudio(), Request("x", seconds=0.3), 0.3).keys() == {"seconds"}
    from_mg = generate_kwargs(FakeStableAudio(), r.replace(source=source(MG, 0.3)), 0.3)["init_audio"]
    assert from_mg.shape == (2, 13230)  # a MusicGen clip at Stable Audio's rate


# ---- where an extension starts on the player -----------------------------------------------------------
def _mix(player: Player, blocks: int, size: int = 256) -> np.ndarray:
    out, blk = [], np.zeros((size, player.channels), np.float32)
    for _ in range(blocks):
        player.callback(blk, size, None, None)
        out.append(blk.copy())
    return np.concatenate(out).T



@pytest.mark.parametrize("loop", [False, True])
def test_an_extension_follows_the_clip_with_no_gap_or_overlap_on_the_player(loop):
    """The Python player mixed block by block (its callback): the extension starts on the slot's end
    frame and every sample around the join is the current clip's or the extension's alone."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((2, 3000)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((2, 2000)) * 0.1).astype(np.float32)
    player = Player(AudioSettings(sample_rate=44100, channels=2, blocksize=256))
    player.schedule(0, a, loop=loop, launch="now")
    head = _mix(player, 2)
    at = musical.extension_frame(player, 0, a.shape[1] if loop else None)
    assert at == 3000
    assert player.schedule(0, b, at_frame=at) == 3000
    rec = np.concatenate([head, _mix(player, 20)], axis=1)
    np.testing.assert_array_equal(rec[:, :3000], a)
    np.testing.assert_array_equal(rec[:, 3000:5000], b)
    assert not rec[:, 5000:].any()


def test_an_extension_after_a_one_shot_ended_is_late_and_a_loop_waits_for_its_next_end():
    player = Player(AudioSettings(sample_rate=44100, channels=2, blocksize=256))
    clip = np.full((2, 600), 0.1, np.float32)
    player.schedule(0, clip, launch="now")
    _mix(player, 1)
    assert musical.extension_frame(player, 0, None) is None  # 600 is within two blocks of frame 256: too soon
    _mix(player, 4)
    assert player.slot_end_frame(0) is None and musical.extension_frame(player, 0, None) is None  # ended
    assert player.schedule(1, clip, loop=True, launch="now") == 1280
    _mix(player, 1)  # frame 1536: the loop's next end (1880) is within two blocks, the one after is not
    assert player.slot_end_frame(1) == 1880 and musical.extension_frame(player, 1, 600) == 2480


def test_the_shipped_mappings_write_bpm_and_key_into_the_pad_prompts():
    """Models follow the prompt better than a parameter: every pad's prompt says the tempo, key and
    scale; a prompt the sender types itself ({prompt}) is left as sent (it may use {bpm}...)."""
    root = Path(__file__).resolve().parents[1] / "mappings"
    for path in sorted(root.glob("*.yaml")):
        m = Mapper.from_files([path])
        prompts = [r.opts["prompt"] for r in m.rules if r.action == "generate" and "{pad_prompt}" in r.opts["prompt"]]
        assert prompts, path
        for p in prompts:
            assert p == "{pad_prompt}, {bpm} bpm, {key} {scale}", (path.name, p)


def test_start_up_warns_about_extend_and_vary_rules_without_their_model():
    from livegen import preflight
    from livegen.limits import Limits

    mapper = Mapper.from_yaml(MAPPING, "test.yaml")
    settings = make({"default": SA}).settings
    found = preflight.check_mapping(mapper, settings, Limits(models={"default": SA}))
    assert found.warnings == [
        "test.yaml:11: note 48-49 on any channel: extend needs a MusicGen model and this daemon has none; "
        "the rule will be refused.",
        "test.yaml:22: OSC /ext/{pad}: extend needs a MusicGen model and this daemon has none; the rule will be "
        "refused."]
    found = preflight.check_mapping(mapper, settings, Limits(models={"mg": MG}))
    assert found.warnings == ["test.yaml:13: note 50 on any channel: vary needs a Stable Audio model and this "
                              "daemon has none; the rule will be refused."]
    assert not preflight.check_mapping(mapper, settings, Limits(models={"default": SA, "mg": MG})).warnings
