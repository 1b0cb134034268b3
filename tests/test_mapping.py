from pathlib import Path

import pytest

from livegen.mapping import (
    ClockTick,
    Generate,
    KnobMoved,
    Mapper,
    MappingError,
    MidiEvent,
    OscEvent,
    Reject,
    Reroll,
    SelectBank,
    SetParam,
    Stop,
    Trigger,
    apply,
)
from livegen.request import Request
from livegen.session import Session
from livegen.settings import FolderSettings, Settings

ROOT = Path(__file__).resolve().parent.parent


def built(mapper: Mapper, state, act: Generate, origin: str = "osc") -> Request:
    """The session's complete request for a Generate action in ``state`` (the one builder)."""
    settings = Settings(folder=FolderSettings(path=Path("/tmp")))
    session = Session(settings, mapper)
    session.state = state
    return session.build_request(act.spec, origin)
SHIPPED = sorted((ROOT / "mappings").glob("*.yaml"))

BASIC = """
params:
  prompt: hello
  bars: 2
  mood: dark
banks:
  - name: a
    prompts: [kick, snare, hat, clap]
  - name: b
    prompts: [pad, bass, lead, arp]
midi:
  - note: 36-39
    channel: 10
    action: generate
    prompt: "{pad_prompt}, {mood}, {bpm} bpm"
    seed: velocity
    outputs: [play, folder]
    loop: true
  - event: note_off
    note: 36-39
    channel: 10
    action: stop
  - note: [60, 62]
    action: trigger
  - cc: 1
    action: set
    param: steps
    range: [4, 64]
    curve: exp
  - cc: 2
    action: set
    param: cfg
    range: [1, 9]
  - cc: 3
    action: set
    param: seed
    range: [0, 1000]
    curve: log
  - cc: 4
    action: set
    param: launch
    value: now
  - cc: 5
    action: reroll
  - program: any
    action: bank
  - event: clock
    action: tempo
osc:
  - address: /livegen/generate
    args: [prompt, seconds]
    action: generate
    prompt: "{prompt}"
    seconds: "{seconds}"
    slot: 7
  - address: /td/pad/{pad}
    action: generate
    prompt: "{pad_prompt} in {bank}"
  - address: /td/cfg
    action: set
    param: cfg
    range: [1, 10]
  - address: /td/bank/next
    action: bank
    bank: next
"""


@pytest.fixture
def mapper():
    return Mapper.from_yaml(BASIC, "basic.yaml")


def test_pad_generates_a_request(mapper):
    state = mapper.initial_state(bpm=128)
    (act,) = mapper.handle(MidiEvent("note_on", 9, 37, 90), state)
    assert isinstance(act, Generate)
    r = built(mapper, state, act)
    assert r.prompt == "snare, dark, 128 bpm"
    assert (r.slot, r.seed, r.bars, r.bpm, r.seconds, r.loop) == (1, 90, 2.0, 128.0, None, True)
    assert r.outputs == ("play", "folder")
    r.validate()
    # Wrong channel, note outside the range: nothing.
    assert mapper.handle(MidiEvent("note_on", 0, 37, 90), state) == []
    assert mapper.handle(MidiEvent("note_on", 9, 40, 90), state) == []


def test_note_off_and_velocity_zero_stop(mapper):
    state = mapper.initial_state()
    assert mapper.handle(MidiEvent("note_off", 9, 38, 0), state) == [Stop(2)]
    assert mapper.handle(MidiEvent("note_on", 9, 38, 0), state) == [Stop(2)]
    assert mapper.handle(MidiEvent("note_on", 3, 62, 10), state) == [Trigger(1)]


def test_cc_curves_and_integer_rounding(mapper):
    state = mapper.initial_state()

    def value(cc, v):
        acts = mapper.handle(MidiEvent("control_change", 0, control=cc, value=v), state)
        assert acts[0] == KnobMoved(0, cc, v)
        (sp,) = [a for a in acts if isinstance(a, SetParam)]
        return sp

    assert value(1, 0) == SetParam("steps", 4)
    assert value(1, 127) == SetParam("steps", 64)
    assert value(1, 64).value == round(4 * 16 ** (64 / 127))  # exp: geometric midpoint ~ 16
    assert isinstance(value(1, 64).value, int)
    assert value(2, 0).value == 1.0 and value(2, 127).value == 9.0
    assert abs(value(2, 127 / 2).value - 5.0) < 1e-9
    mid_log = value(3, 63.5).value
    assert isinstance(mid_log, int) and mid_log > 500  # log rises fast
    assert value(4, 99) == SetParam("launch", "now")


def test_state_changes_only_through_apply(mapper):
    state = mapper.initial_state()
    before = (dict(state.params), state.bank, dict(state.knobs))
    acts = mapper.handle(MidiEvent("control_change", 0, control=2, value=127), state)
    assert (dict(state.params), state.bank, dict(state.knobs)) == before
    for a in acts:
        apply(a, state)
    assert state.params["cfg"] == 9.0 and state.knobs[(0, 2)] == 127
    (act,) = mapper.handle(MidiEvent("note_on", 9, 36, 5), state)
    assert built(mapper, state, act).cfg_scale == 9.0


def test_the_last_duration_set_wins(mapper):
    state = mapper.initial_state()
    assert state.params["bars"] == 2
    apply(SetParam("seconds", 5.0), state)
    assert state.params["bars"] is None
    (act,) = mapper.handle(MidiEvent("note_on", 9, 36, 64), state)
    r = built(mapper, state, act)
    assert (r.seconds, r.bars) == (5.0, None)
    apply(SetParam("bars", 4.0), state)
    assert state.params["seconds"] is None


def test_value_filters():
    m = Mapper.from_yaml("""
midi:
  - cc: 20
    values: 1-127
    action: stop
osc:
  - address: /b
    values: [0.5, 1]
    action: stop
    slot: 2
""")
    st = m.initial_state()
    assert Stop(None) in m.handle(MidiEvent("control_change", 0, control=20, value=127), st)
    assert Stop(None) not in m.handle(MidiEvent("control_change", 0, control=20, value=0), st)
    assert m.handle(OscEvent("/b", (1.0,)), st) == [Stop(2)]
    assert m.handle(OscEvent("/b", (0.0,)), st) == []
    assert m.handle(OscEvent("/b", ()), st) == []


def test_choices_split_the_knob():
    m = Mapper.from_yaml("""
midi:
  - cc: 1
    action: set
    param: launch
    choices: [now, beat, bar]
""")
    st = m.initial_state()
    got = [m.handle(MidiEvent("control_change", 0, control=1, value=v), st)[1].value for v in (0, 42, 43, 127)]
    assert got == ["now", "now", "beat", "bar"]


WRONG_TYPES = """
midi:
  - note: 36
    action: generate
    prompt: 5
  - note: 37
    action: generate
    prompt: x
    loop: maybe
    gain: loud
    outputs: [speaker]
  - note: ten
    action: stop
  - program: 3
    values: 1-10
    action: bank
    bank: 0
  - cc: 5
    action: set
    param: launch
    choices: [now, later]
osc:
  - address: /x
    args: not-a-list
    action: stop
midi2: []
"""


def test_wrong_types_are_reported():
    with pytest.raises(MappingError) as info:
        Mapper.from_yaml(WRONG_TYPES, "t.yaml")
    errs = info.value.errors
    want = [
        (5, "'prompt' must be non-empty text"),
        (9, "'loop': expected true or false"),
        (10, "'gain': expected a number"),
        (11, "'outputs' must list 'play' and/or 'folder'"),
        (12, "note must be a number or a range"),
        (15, "'values' filters note velocities and CC values only"),
        (14, "a bank rule needs 'banks'"),
        (21, "launch must be one of"),
        (24, "'args' must be a list"),
        (26, "unknown section 'midi2'"),
    ]
    for line, text in want:
        assert any(e.startswith(f"t.yaml:{line}: ") and text in e for e in errs), (line, text, errs)
    assert len(errs) == len(want), "\n".join(errs)


def test_banks_program_change_and_osc_next(mapper):
    state = mapper.initial_state()
    (sel,) = mapper.handle(MidiEvent("program_change", 0, program=1), state)
    assert sel == SelectBank(1)
    apply(sel, state)
    (act,) = mapper.handle(MidiEvent("note_on", 9, 36, 64), state)
    assert built(mapper, state, act).prompt.startswith("pad,")
    assert mapper.handle(OscEvent("/td/bank/next", ()), state) == [SelectBank(0)]
    assert mapper.handle(MidiEvent("program_change", 0, program=99), state) == [SelectBank(1)]


def test_reroll_and_osc_generate(mapper):
    state = mapper.initial_state()
    assert mapper.handle(MidiEvent("control_change", 0, control=5, value=1), state)[1] == Reroll(None)
    (act,) = mapper.handle(OscEvent("/livegen/generate", ("glass harp", 6.0)), state)
    r = built(mapper, state, act)
    assert (r.prompt, r.seconds, r.bars, r.slot, r.origin) == ("glass harp", 6.0, None, 7, "osc")
    (act,) = mapper.handle(OscEvent("/td/pad/2", ()), state)
    r = built(mapper, state, act)
    assert r.prompt == "hat in a" and r.slot == 2
    (sp,) = mapper.handle(OscEvent("/td/cfg", (0.5,)), state)
    assert sp == SetParam("cfg", 5.5)
    assert mapper.handle(OscEvent("/nothing", (1,)), state) == []


def test_bad_message_content_becomes_reject_not_exception(mapper):
    state = mapper.initial_state()
    (rej,) = mapper.handle(OscEvent("/livegen/generate", ("x", b"long")), state)
    assert isinstance(rej, Reject) and "number" in rej.reason
    # an unquoted multi-word prompt (several string atoms from Max or Pd) is joined back together
    (act,) = mapper.handle(OscEvent("/livegen/generate", ("x", "long")), state)
    assert isinstance(act, Generate) and act.spec["prompt"] == "x long"
    (rej,) = mapper.handle(OscEvent("/livegen/generate", ("a", 1, 2)), state)
    assert isinstance(rej, Reject) and "at most 2" in rej.reason
    (rej,) = mapper.handle(OscEvent("/td/cfg", ("loud",)), state)
    assert isinstance(rej, Reject)


def test_whole_floats_are_accepted_as_ints():
    m = Mapper.from_yaml("""
osc:
  - address: /s
    args: [slot]
    action: trigger
    slot: "{slot}"
""")
    assert m.handle(OscEvent("/s", (3.0,)), m.initial_state()) == [Trigger(3)]
    assert isinstance(m.handle(OscEvent("/s", (3.5,)), m.initial_state())[0], Reject)


def test_a_tempo_rule_asks_the_session_to_follow_the_clock(mapper):
    # the clock is measured by livegen.tempo_clock (tests/test_tempo_clock.py, tests/test_session_clock.py)
    assert mapper.follows_clock
    assert not Mapper.from_yaml("params:\n  bpm: 90\n").follows_clock
    state = mapper.initial_state()
    acts = mapper.handle(MidiEvent("clock", time=10.0), state)
    assert acts == [ClockTick(10.0)]


def test_fixed_specs_for_prerendering(mapper):
    specs = mapper.fixed_specs(mapper.initial_state())
    assert [s["slot"] for s in specs] == [0, 1, 2, 3]
    assert all(s["seed"] is None for s in specs)


BROKEN = """
params:
  steps: lots
banks:
  - name: a
    prompts: [one, two]
midi:
  - note: 36-51
    action: generate
    prompt: "{pad_prompt} {colour}"
  - note: 40
    action: generate
    prompt: "x"
  - note: 130
    action: trigger
    slot: 1
  - cc: 200
    action: set
    param: seed
  - cc: 7
    action: explode
  - cc: 8
    action: set
    param: stepz
  - cc: 9
    action: set
    param: seed
    curve: wobbly
  - cc: 10
    action: generate
  - cc: 11
    action: set
    param: seed
    rnage: [1, 2]
  - cc: 12
    action: set
    param: cfg
    range: [0, 5]
    curve: exp
  - note: 60
    action: generate
    prompt: "{velocity"
  - note: 61
    channel: 17
    action: stop
  - cc: 13
    action: bank
    bank: c
  - note: 62
    action: generate
    prompt: x
    seconds: 2
    bars: 1
  - note: 63
    action: generate
    prompt: x
    steps: 0
  - cc: 14
    note: 3
    action: stop
  - action: stop
osc:
  - address: noslash
    action: stop
  - address: /a
    args: [v]
    action: set
    param: cfg
  - address: /a
    action: stop
"""


def test_every_mistake_is_reported_with_file_and_line():
    with pytest.raises(MappingError) as info:
        Mapper.from_yaml(BROKEN, "broken.yaml")
    errs = info.value.errors
    want = [
        (3, "parameter 'steps'"),
        (10, "unknown placeholder {colour}"),
        (10, "bank 'a' has 2 prompts but this rule has 16 pads"),
        (11, "same message as the rule at broken.yaml:8"),
        (14, "note 130 is out of range"),
        (17, "controller 200 is out of range"),
        (21, "unknown action 'explode'"),
        (24, "unknown parameter 'stepz'. Did you mean 'steps'?"),
        (28, "unknown curve 'wobbly'"),
        (29, "a generate rule needs a 'prompt'"),
        (34, "unknown key 'rnage' for a set rule. Did you mean 'range'?"),
        (38, "exp curve needs a 'range' whose ends are both above zero"),
        (42, "unbalanced braces"),
        (44, "channel 17 is out of range"),
        (48, "unknown bank 'c'"),
        (53, "not both"),
        (57, "'steps' must be between 1 and 1000"),
        (58, "both 'note' and 'cc'"),
        (61, "matches nothing"),
        (63, "starting with '/'"),
        (69, "same message as the rule at broken.yaml:65"),
    ]
    for line, text in want:
        assert any(e.startswith(f"broken.yaml:{line}: ") and text in e for e in errs), (line, text, errs)
    assert len(errs) == len(want), "\n".join(errs)


def test_yaml_errors_and_unknown_sections():
    with pytest.raises(MappingError) as info:
        Mapper.from_yaml("midi:\n  - note: [1, 2\n", "x.yaml")
    assert info.value.errors[0].startswith("x.yaml:")
    with pytest.raises(MappingError) as info:
        Mapper.from_yaml("mdi: []\n", "y.yaml")
    assert "Did you mean 'midi'?" in str(info.value)


def test_duplicates_across_files(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("midi:\n  - cc: 1\n    action: stop\n")
    b.write_text("midi:\n  - cc: [2, 1]\n    channel: 1-16\n    action: reroll\n")
    with pytest.raises(MappingError) as info:
        Mapper.from_files([a, b])
    assert str(info.value).startswith(f"{b}:2: ") and f"{a}:2" in str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_mappings_are_valid(path):
    m = Mapper.from_files([path])
    assert m.rules
    state = m.initial_state()
    # Every note rule answers its notes without raising or rejecting.
    for rule in m.rules:
        if rule.event == "note_on" and rule.numbers:
            ch = min(rule.channels) if rule.channels else 0
            for note in rule.numbers:
                acts = m.handle(MidiEvent("note_on", ch, note, 100), state)
                assert acts and not any(isinstance(a, Reject) for a in acts), (note, acts)
                for a in acts:
                    if isinstance(a, Generate):
                        built(m, state, a).validate()


def test_shipped_set_includes_the_required_layouts():
    names = {p.name for p in SHIPPED}
    assert {"default.yaml", "touchdesigner.yaml", "maxmsp.yaml"} <= names
    assert names & {"akai-mpd218.yaml", "launchpad.yaml"}


def test_default_mapping_has_16_pads_knobs_and_banks():
    m = Mapper.from_files([ROOT / "mappings" / "default.yaml"])
    state = m.initial_state()
    slots = []
    for note in range(36, 52):
        (g,) = m.handle(MidiEvent("note_on", 0, note, 100), state)
        slots.append(built(m, state, g).slot)
    assert slots == list(range(16))
    params = {a.name for cc in range(128) for a in m.handle(MidiEvent("control_change", 0, control=cc, value=64),
                                                            state) if isinstance(a, SetParam)}
    assert {"seed", "steps", "cfg", "bars"} <= params
    assert len(m.banks) >= 2
