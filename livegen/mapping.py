"""Mapping rules (YAML) from MIDI/OSC messages to actions.

:class:`Mapper` is pure: ``handle(event, state)`` looks at one message and the current
:class:`State` and returns a list of actions; it performs no I/O and does not change ``state``.
State changes travel as :class:`SetParam`, :class:`SelectBank` and :class:`ClockTick` actions
which the caller applies with :func:`apply` (the daemon does this on its event loop).

The file format is documented in ``docs/daemon-settings.md`` ("Mapping files"); every mistake
in a file is reported at once as ``file:line: sentence``.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from livegen.request import LAUNCHES, OUTPUTS, Request
from livegen.settings import LineDict, LineList, did_you_mean, load_yaml

MIDI_EVENTS = ("note_on", "note_off", "control_change", "program_change", "clock", "start", "stop")
ACTIONS = ("generate", "trigger", "stop", "set", "bank", "reroll", "tempo")
CURVES = ("linear", "exp", "log")

# Parameter name -> type ("int", "float", "str", "bool", "launch") for the state and set rules.
PARAM_TYPES: dict[str, str] = {
    "prompt": "str", "negative_prompt": "str", "model": "str", "sampler": "str",
    "seed": "int", "steps": "int", "cfg": "float", "seconds": "float", "bars": "float",
    "bpm": "float", "beats_per_bar": "int", "gain": "float", "launch": "launch", "loop": "bool",
    "priority": "int",
}
DEFAULT_PARAMS: dict[str, Any] = {
    "prompt": "", "negative_prompt": None, "model": "default", "sampler": None, "seed": None,
    "steps": None, "cfg": None, "seconds": None, "bars": None, "bpm": 120.0, "beats_per_bar": 4,
    "gain": 1.0, "launch": "bar", "loop": False, "priority": 0,
}
# Placeholders always available in templates (besides the state parameters).
_COMMON_PLACEHOLDERS = {"bank", "bank_index", "channel"}
_EVENT_PLACEHOLDERS = {
    "note_on": {"note", "velocity", "pad", "pad_prompt"},
    "note_off": {"note", "velocity", "pad", "pad_prompt"},
    "control_change": {"control", "value"},
    "program_change": {"program", "value"},
    "clock": set(), "start": set(), "stop": set(),
}
_GENERATE_KEYS = ("prompt", "negative_prompt", "model", "seed", "seconds", "bars", "steps", "cfg",
                  "sampler", "slot", "outputs", "loop", "gain", "launch", "priority")
_MATCH_KEYS = ("event", "note", "cc", "program", "channel", "values", "address", "args")
_ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "generate": _GENERATE_KEYS,
    "trigger": ("slot",),
    "stop": ("slot",),
    "reroll": ("slot",),
    "set": ("param", "range", "curve", "input", "value", "arg", "choices"),
    "bank": ("bank",),
    "tempo": (),
}
_TOP_KEYS = ("name", "description", "params", "banks", "midi", "osc")


# ---------------------------------------------------------------------------------------------
# Events, state, actions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MidiEvent:
    """One MIDI message; ``channel`` is 0-15 (as mido gives it; files use 1-16)."""

    type: str
    channel: int = 0
    note: int | None = None
    velocity: int | None = None
    control: int | None = None
    value: int | None = None
    program: int | None = None
    time: float | None = None  # seconds on a monotonic clock; needed for clock -> tempo

    @classmethod
    def from_mido(cls, msg: Any, time: float | None = None) -> MidiEvent:
        """Build from a ``mido.Message`` (or anything with the same attributes)."""
        t = msg.type
        return cls(
            type=t,
            channel=int(getattr(msg, "channel", 0) or 0),
            note=getattr(msg, "note", None),
            velocity=getattr(msg, "velocity", None),
            control=getattr(msg, "control", None),
            value=getattr(msg, "value", None),
            program=getattr(msg, "program", None),
            time=time,
        )


@dataclass(frozen=True)
class OscEvent:
    address: str
    args: tuple = ()


@dataclass
class State:
    """What the mapper reads: parameters (see PARAM_TYPES), raw knob values, selected bank."""

    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    knobs: dict[tuple[int, int], int] = field(default_factory=dict)  # (channel, cc) -> 0..127
    bank: int = 0
    clock_times: list[float] = field(default_factory=list)
    clock_ticks: int = 0


@dataclass(frozen=True)
class Generate:
    request: Request


@dataclass(frozen=True)
class Trigger:
    slot: int


@dataclass(frozen=True)
class Stop:
    slot: int | None = None


@dataclass(frozen=True)
class SetParam:
    name: str
    value: Any


@dataclass(frozen=True)
class SelectBank:
    bank: int


@dataclass(frozen=True)
class Reroll:
    slot: int | None = None


@dataclass(frozen=True)
class ClockTick:
    """A MIDI clock tick at ``time``; :func:`apply` records it for tempo estimation."""

    time: float


@dataclass(frozen=True)
class Reject:
    """A message matched a rule but its content was unusable (e.g. a missing OSC argument)."""

    reason: str


@dataclass(frozen=True)
class KnobMoved:
    """A CC value arrived (kept in ``State.knobs`` by :func:`apply`)."""

    channel: int
    control: int
    value: int


Action = Generate | Trigger | Stop | SetParam | SelectBank | Reroll | ClockTick | Reject | KnobMoved


def apply(action: Action, state: State) -> State:
    """Apply a state-changing action to ``state`` in place (others are ignored); returns it.

    Durations are exclusive: setting ``seconds`` to a value clears ``bars`` and vice versa, so the
    last one set is the one new requests use.
    """
    if isinstance(action, SetParam):
        state.params[action.name] = action.value
        other = {"seconds": "bars", "bars": "seconds"}.get(action.name)
        if other is not None and action.value is not None:
            state.params[other] = None
    elif isinstance(action, SelectBank):
        state.bank = action.bank
    elif isinstance(action, KnobMoved):
        state.knobs[(action.channel, action.control)] = action.value
    elif isinstance(action, ClockTick):
        state.clock_times.append(action.time)
        del state.clock_times[:-25]
        state.clock_ticks += 1
    return state


class MappingError(ValueError):
    """Every mistake in the mapping files, one ``file:line: sentence`` per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bank:
    name: str
    prompts: tuple[str, ...]


@dataclass
class Rule:
    source: str
    line: int
    action: str
    event: str | None = None  # MIDI event type; None for OSC
    numbers: tuple[int, ...] | None = None  # notes / CCs / programs (order gives the pad index)
    channels: frozenset[int] | None = None  # 0-based; None = any
    values: frozenset[int] | None = None  # accepted velocities / CC values; None = any
    osc_values: tuple[float, float] | None = None  # accepted range of an OSC message's first argument
    address: str | None = None
    address_re: re.Pattern | None = None
    args: tuple[str, ...] = ()
    opts: dict[str, Any] = field(default_factory=dict)
    broken: bool = False  # had errors (kept only to report duplicates)
    match_ok: bool = True  # the message-matching part parsed (duplicates are checked on it)

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def describe(self) -> str:
        if self.address is not None:
            return f"OSC {self.address}"
        what = {"note_on": "note", "note_off": "note off", "control_change": "CC",
                "program_change": "program"}.get(self.event or "", self.event or "")
        nums = "" if self.numbers is None else " " + _ranges(self.numbers)
        ch = "any channel" if self.channels is None else "channel " + _ranges(sorted(c + 1 for c in self.channels))
        return f"{what}{nums} on {ch}"


def _ranges(nums: Iterable[int]) -> str:
    nums = sorted(set(nums))
    parts, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


class _Errs:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, line: int, msg: str) -> None:
        self.items.append(f"{self.source}:{line}: {msg}")


def _line(node: Any, key: Any, default: int) -> int:
    if isinstance(node, LineDict):
        return node.line_of(key)
    if isinstance(node, LineList):
        return node.line_of(key)
    return default


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_numbers(value: Any, lo: int, hi: int, what: str, line: int, errs: _Errs) -> tuple[int, ...] | None:
    """int, "36-51", or a list of those -> ordered tuple."""
    items = value if isinstance(value, list) else [value]
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            errs.add(line, f"{what} must be a number or a range like '36-51', not {item!r}.")
            return None
        if isinstance(item, int):
            a = b = item
        elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", item):
            a, b = (int(x) for x in item.split("-"))
            if b < a:
                errs.add(line, f"the {what} range {item!r} goes backwards; write it low-high.")
                return None
        else:
            errs.add(line, f"{what} must be a number or a range like '36-51', not {item!r}.")
            return None
        if a < lo or b > hi:
            errs.add(line, f"{what} {item} is out of range; MIDI {what}s go from {lo} to {hi}.")
            return None
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        errs.add(line, f"the {what} list names the same number twice.")
        return None
    return tuple(out)


def _placeholders(template: str) -> list[str] | None:
    """Field names used by a template, or None if it is malformed."""
    try:
        names = []
        for _lit, fname, _spec, _conv in string.Formatter().parse(template):
            if fname is not None:
                names.append(fname)
        return names
    except ValueError:
        return None


class _SafeFormat(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


# ---------------------------------------------------------------------------------------------
# Mapper
# ---------------------------------------------------------------------------------------------
class Mapper:
    """Rules from one or more mapping files; ``handle`` turns a message into actions."""

    def __init__(self, rules: list[Rule], banks: list[Bank], params: dict[str, Any],
                 param_types: dict[str, str], names: list[str]):
        self.rules = rules
        self.banks = banks
        self.params = params
        self.param_types = param_types
        self.names = names

    # --------------------------------------------------------------------------- loading
    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Mapper:
        docs = []
        errors: list[str] = []
        for p in paths:
            p = Path(p)
            try:
                text = p.read_text(encoding="utf-8")
            except OSError as exc:
                errors.append(f"{p}:0: cannot read the mapping file ({exc.strerror or exc}).")
                continue
            docs.append((text, str(p)))
        try:
            mapper = cls.from_texts(docs)
        except MappingError as exc:
            raise MappingError(errors + exc.errors) from None
        if errors:
            raise MappingError(errors)
        return mapper

    @classmethod
    def from_yaml(cls, text: str, source: str = "<mapping>") -> Mapper:
        return cls.from_texts([(text, source)])

    @classmethod
    def from_texts(cls, docs: Iterable[tuple[str, str]]) -> Mapper:
        errors: list[str] = []
        rules: list[Rule] = []
        banks: list[Bank] = []
        params = dict(DEFAULT_PARAMS)
        ptypes = dict(PARAM_TYPES)
        names: list[str] = []
        parsed = []
        # Pass 1: params and banks of every file (rules may use params declared in any file).
        for text, source in docs:
            errs = _Errs(source)
            data, yaml_errors = load_yaml(text, source)
            errors.extend(yaml_errors)
            if data is None and yaml_errors:
                continue
            if data is None:
                data = LineDict()
            if not isinstance(data, dict):
                errs.add(1, "a mapping file must be a mapping with keys like 'midi:' and 'osc:'.")
                errors.extend(errs.items)
                continue
            for key in data:
                if key not in _TOP_KEYS:
                    errs.add(_line(data, key, 1), f"unknown section {key!r}.{did_you_mean(key, _TOP_KEYS)}"
                             f" Known: {', '.join(_TOP_KEYS)}.")
            names.append(str(data.get("name", Path(source).stem)))
            _parse_params(data.get("params"), _line(data, "params", 1), params, ptypes, errs)
            _parse_banks(data.get("banks"), _line(data, "banks", 1), banks, errs)
            parsed.append((data, errs))
        for data, errs in parsed:
            for section, kind in (("midi", "midi"), ("osc", "osc")):
                node = data.get(section)
                if node is None:
                    continue
                if not isinstance(node, list):
                    errs.add(_line(data, section, 1), f"'{section}' must be a list of rules (lines starting '- ').")
                    continue
                for i, rnode in enumerate(node):
                    rule = _parse_rule(rnode, kind, _line(node, i, 1), errs, ptypes, banks)
                    if rule is not None:
                        rules.append(rule)
            errors.extend(errs.items)
        errors.extend(_duplicates(rules))
        rules = [r for r in rules if not r.broken]
        if errors:
            raise MappingError(errors)
        return cls(rules, banks, params, ptypes, names)

    def initial_state(self, bpm: float | None = None, beats_per_bar: int | None = None) -> State:
        params = dict(self.params)
        if bpm is not None:
            params["bpm"] = float(bpm)
        if beats_per_bar is not None:
            params["beats_per_bar"] = int(beats_per_bar)
        return State(params=params)

    # --------------------------------------------------------------------------- handling
    def handle(self, event: MidiEvent | OscEvent, state: State) -> list[Action]:
        """Actions for one message (empty when no rule matches). Never raises for bad content."""
        if isinstance(event, OscEvent):
            return self._handle_osc(event, state)
        ev = event
        if ev.type == "note_on" and not ev.velocity:
            ev = replace(ev, type="note_off")
        out: list[Action] = []
        if ev.type == "control_change" and ev.control is not None and ev.value is not None:
            out.append(KnobMoved(ev.channel, ev.control, ev.value))
        if ev.type == "clock" and ev.time is not None:
            out.append(ClockTick(ev.time))
        for rule in self.rules:
            if rule.event != ev.type:
                continue
            if rule.channels is not None and ev.channel not in rule.channels:
                continue
            number = {"note_on": ev.note, "note_off": ev.note, "control_change": ev.control,
                      "program_change": ev.program}.get(ev.type)
            if rule.numbers is not None and number not in rule.numbers:
                continue
            if rule.values is not None:
                v = ev.velocity if ev.type in ("note_on", "note_off") else ev.value
                if v not in rule.values:
                    continue
            ctx = self._context(state)
            ctx["channel"] = ev.channel + 1
            raw: float | None = None
            if ev.type in ("note_on", "note_off"):
                pad = rule.numbers.index(ev.note) if rule.numbers is not None else ev.note
                ctx.update(note=ev.note, velocity=ev.velocity or 0, pad=pad,
                           pad_prompt=self._pad_prompt(state, pad))
                raw = float(ev.velocity or 0)
            elif ev.type == "control_change":
                ctx.update(control=ev.control, value=ev.value)
                raw = float(ev.value or 0)
            elif ev.type == "program_change":
                ctx.update(program=ev.program, value=ev.program)
                raw = float(ev.program or 0)
            out.extend(self._act(rule, ctx, raw, state, ev))
        return out

    def _handle_osc(self, ev: OscEvent, state: State) -> list[Action]:
        out: list[Action] = []
        for rule in self.rules:
            if rule.address_re is None:
                continue
            m = rule.address_re.fullmatch(ev.address)
            if m is None:
                continue
            if rule.osc_values is not None:
                first = ev.args[0] if ev.args else None
                if not _is_num(first) or not rule.osc_values[0] <= first <= rule.osc_values[1]:
                    continue
            ctx = self._context(state)
            for k, v in m.groupdict().items():
                ctx[k] = int(v) if v.isdigit() else v
            if len(ev.args) > len(rule.args) and rule.args:
                out.append(Reject(f"{ev.address} takes at most {len(rule.args)} arguments "
                                  f"({', '.join(rule.args)}), got {len(ev.args)}."))
                continue
            for name, val in zip(rule.args, ev.args, strict=False):
                ctx[name] = _whole(val)
            if "pad" in ctx and isinstance(ctx["pad"], int):
                ctx["pad_prompt"] = self._pad_prompt(state, ctx["pad"])
            raw = None
            arg_name = rule.opts.get("arg")
            if arg_name is not None:
                raw = ctx.get(arg_name)
            elif ev.args:
                raw = ev.args[0]
            if "value" not in ctx and ev.args:
                ctx["value"] = _whole(ev.args[0])
            out.extend(self._act(rule, ctx, raw, state, ev))
        return out

    def _context(self, state: State) -> dict[str, Any]:
        ctx: dict[str, Any] = dict(state.params)
        ctx["bank_index"] = state.bank
        ctx["bank"] = self.banks[state.bank].name if 0 <= state.bank < len(self.banks) else str(state.bank)
        return ctx

    def _pad_prompt(self, state: State, pad: int) -> str:
        if 0 <= state.bank < len(self.banks):
            prompts = self.banks[state.bank].prompts
            if 0 <= pad < len(prompts):
                return prompts[pad]
        return str(state.params.get("prompt") or "")

    def _act(self, rule: Rule, ctx: dict[str, Any], raw: Any, state: State,
             ev: MidiEvent | OscEvent) -> list[Action]:
        o = rule.opts
        try:
            if rule.action == "generate":
                return [Generate(self._request(rule, ctx, ev))]
            if rule.action in ("trigger", "stop", "reroll"):
                try:
                    slot = _render_value(o["slot"], ctx, "int") if "slot" in o else None
                except KeyError:  # an optional OSC argument was left out: every slot
                    if rule.action == "trigger":
                        raise
                    slot = None
                if rule.action == "trigger":
                    if slot is None:
                        return [Reject("This trigger rule has no slot.")]
                    return [Trigger(int(slot))]
                return [Stop(slot)] if rule.action == "stop" else [Reroll(slot)]
            if rule.action == "bank":
                return [SelectBank(self._bank_index(o.get("bank", "value"), raw, state, rule))]
            if rule.action == "set":
                return [SetParam(o["param"], self._set_value(rule, ctx, raw))]
            if rule.action == "tempo":
                return self._tempo(state, ev)
        except KeyError as exc:
            return [Reject(f"{rule.describe()} ({rule.where()}): no value for {{{exc.args[0]}}}.")]
        except (ValueError, TypeError) as exc:
            return [Reject(f"{rule.describe()} ({rule.where()}): {exc}.")]
        return []

    def _request(self, rule: Rule, ctx: dict[str, Any], ev: MidiEvent | OscEvent) -> Request:
        o = rule.opts
        prompt = str(_render_value(o["prompt"], ctx, "str")).strip()
        if not prompt:
            raise ValueError("the prompt came out empty")
        p = ctx  # the state's parameters plus the message's values

        def pick(key: str, param: str, kind: str) -> Any:
            if key in o:
                return _render_value(o[key], ctx, kind)
            return p.get(param)

        seed_spec = o.get("seed", "param")
        if seed_spec == "random":
            seed = None
        elif seed_spec == "velocity":
            seed = int(ctx.get("velocity", 0))
        elif seed_spec == "param":
            seed = p.get("seed")
        else:
            seed = _render_value(seed_spec, ctx, "int")
        if seed is not None and seed < 0:
            seed = None
        seconds = pick("seconds", "seconds", "float")
        bars = pick("bars", "bars", "float")
        if "seconds" in o and seconds is not None:
            bars = None
        elif bars is not None:
            seconds = None
        slot_spec = o.get("slot", "{pad}" if "pad" in ctx else None)
        slot = _render_value(slot_spec, ctx, "int") if slot_spec is not None else None
        outputs = o.get("outputs", ("play",))
        origin = "osc" if isinstance(ev, OscEvent) else f"midi:{ev.type}"
        gain = o.get("gain", p.get("gain", 1.0))
        gain = float(ctx.get("velocity", 127)) / 127.0 if gain == "velocity" else _render_value(gain, ctx, "float")
        neg = pick("negative_prompt", "negative_prompt", "str")
        return Request(
            prompt=prompt,
            model=str(pick("model", "model", "str") or "default"),
            negative_prompt=neg or None,
            seed=seed,
            seconds=seconds,
            bars=bars,
            bpm=_opt_float(p.get("bpm")),
            beats_per_bar=int(p.get("beats_per_bar") or 4),
            steps=pick("steps", "steps", "int"),
            cfg_scale=pick("cfg", "cfg", "float"),
            sampler=pick("sampler", "sampler", "str"),
            slot=slot,
            outputs=tuple(outputs),
            loop=bool(pick("loop", "loop", "bool")),
            gain=float(gain),
            launch=str(pick("launch", "launch", "launch") or "bar"),
            priority=int(pick("priority", "priority", "int") or 0),
            origin=origin,
        )

    def _bank_index(self, spec: Any, raw: Any, state: State, rule: Rule) -> int:
        n = max(1, len(self.banks))
        if spec == "next":
            return (state.bank + 1) % n
        if spec == "prev":
            return (state.bank - 1) % n
        if spec == "value":
            if raw is None:
                raise ValueError("no value to select a bank with")
            v = _whole(raw)
            if not _is_num(v):
                raise ValueError(f"expected a bank number, got {raw!r}")
            if rule.event == "control_change":  # the knob's travel is split evenly between banks
                return min(int(v) * n // 128, n - 1)
            return min(max(int(v), 0), n - 1)
        if isinstance(spec, str):
            return [b.name for b in self.banks].index(spec)
        return int(spec)

    def _set_value(self, rule: Rule, ctx: dict[str, Any], raw: Any) -> Any:
        o = rule.opts
        kind = self.param_types[o["param"]]
        if "value" in o:
            return _render_value(o["value"], ctx, kind)
        if raw is None:
            raise ValueError("the message carries no value")
        if kind in ("str", "launch") and "choices" not in o:
            return _coerce(raw, kind)
        lo_in, hi_in = o.get("input", (0.0, 127.0) if rule.event else (0.0, 1.0))
        lo, hi = o.get("range", (lo_in, hi_in))
        if not _is_num(raw):
            raise ValueError(f"expected a number, got {raw!r}")
        x = (float(raw) - lo_in) / (hi_in - lo_in)
        x = min(max(x, 0.0), 1.0)
        if "choices" in o:
            choices = o["choices"]
            return choices[min(int(x * len(choices)), len(choices) - 1)]
        curve = o.get("curve", "linear")
        if curve == "exp":
            y = lo * (hi / lo) ** x
        elif curve == "log":
            y = lo + (hi - lo) * math.log10(1.0 + 9.0 * x)
        else:
            y = lo + (hi - lo) * x
        if kind == "int":
            return int(math.floor(y + 0.5))
        if kind == "bool":
            return x >= 0.5
        return float(y)

    def _tempo(self, state: State, ev: MidiEvent | OscEvent) -> list[Action]:
        if not isinstance(ev, MidiEvent) or ev.time is None:
            return []
        times = state.clock_times + [ev.time]
        ticks = state.clock_ticks + 1
        if ticks % 24 != 0 or len(times) < 25:
            return []
        span = times[-1] - times[-25]
        if span <= 0:
            return []
        bpm = round(60.0 / span, 1)  # 24 ticks per beat: the span is one beat
        if not 20.0 <= bpm <= 400.0 or abs(bpm - float(state.params.get("bpm") or 0)) < 0.05:
            return []
        return [SetParam("bpm", bpm)]

    # --------------------------------------------------------------------------- pre-rendering
    def fixed_requests(self, state: State) -> list[Request]:
        """Requests of note rules whose prompt does not depend on the message (pads mapped to
        fixed prompts), one per pad, with ``seed=None`` so any variation will do."""
        out: list[Request] = []
        for rule in self.rules:
            if rule.action != "generate" or rule.event != "note_on" or rule.numbers is None:
                continue
            names = set(_placeholders(rule.opts["prompt"]) or [])
            if names & {"velocity", "value", "control", "program"}:
                continue
            for note in rule.numbers:
                ch = min(rule.channels) if rule.channels else 0
                acts = self.handle(MidiEvent("note_on", ch, note, 100), state)
                for a in acts:
                    if isinstance(a, Generate):
                        out.append(replace(a.request, seed=None, origin="prerender"))
                        break
        return out


# ---------------------------------------------------------------------------------------------
# Value rendering
# ---------------------------------------------------------------------------------------------
def _whole(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _coerce(v: Any, kind: str) -> Any:
    if v is None:
        return None
    if kind == "str":
        return str(v)
    if kind == "launch":
        if v not in LAUNCHES:
            raise ValueError(f"launch must be one of {', '.join(LAUNCHES)}, not {v!r}")
        return v
    if kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            return v != 0
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return v.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"expected true or false, got {v!r}")
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    if kind == "int":
        if f != int(f):
            raise ValueError(f"expected a whole number, got {v!r}")
        return int(f)
    return f


def _render_value(spec: Any, ctx: dict[str, Any], kind: str) -> Any:
    """A literal, or a template string whose placeholders come from ``ctx``."""
    if isinstance(spec, str) and "{" in spec:
        names = _placeholders(spec) or []
        if len(names) == 1 and spec.strip() == "{" + names[0] + "}" and kind != "str":
            return _coerce(ctx[names[0]], kind)
        values = _SafeFormat({k: ("" if v is None else _whole(v)) for k, v in ctx.items()})
        return _coerce(spec.format_map(values), kind)
    return _coerce(spec, kind)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def _parse_params(node: Any, line: int, params: dict[str, Any], ptypes: dict[str, str], errs: _Errs) -> None:
    if node is None:
        return
    if not isinstance(node, dict):
        errs.add(line, "'params' must be a mapping of parameter names to starting values.")
        return
    for key, value in node.items():
        kl = _line(node, key, line)
        if not isinstance(key, str) or not key.isidentifier():
            errs.add(kl, f"parameter name {key!r} must be a plain word (letters, digits, _).")
            continue
        if key in ("note", "velocity", "value", "control", "program", "pad", "pad_prompt", "bank",
                   "bank_index", "channel"):
            errs.add(kl, f"{key!r} is filled in from each message and cannot be a parameter.")
            continue
        kind = ptypes.get(key)
        if kind is None:
            kind = ("bool" if isinstance(value, bool) else "int" if isinstance(value, int)
                    else "float" if isinstance(value, float) else "str")
            ptypes[key] = kind
        if value is None:
            params[key] = None
            continue
        try:
            params[key] = _coerce(value, kind)
        except ValueError as exc:
            errs.add(kl, f"parameter {key!r}: {exc}.")


def _parse_banks(node: Any, line: int, banks: list[Bank], errs: _Errs) -> None:
    if node is None:
        return
    if not isinstance(node, list):
        errs.add(line, "'banks' must be a list of banks, each with a 'name' and 'prompts'.")
        return
    for i, b in enumerate(node):
        bl = _line(node, i, line)
        if not isinstance(b, dict):
            errs.add(bl, "a bank must be a mapping with 'name' and 'prompts'.")
            continue
        for key in b:
            if key not in ("name", "prompts"):
                errs.add(_line(b, key, bl), f"unknown bank key {key!r}.{did_you_mean(key, ('name', 'prompts'))}")
        name = b.get("name")
        if not isinstance(name, str) or not name:
            errs.add(bl, "the bank has no 'name'.")
            name = f"bank{len(banks)}"
        if any(x.name == name for x in banks):
            errs.add(_line(b, "name", bl), f"there is already a bank named {name!r}.")
        prompts = b.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            errs.add(_line(b, "prompts", bl), f"bank {name!r} needs a non-empty list of 'prompts'.")
            continue
        good = True
        for j, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                errs.add(_line(prompts, j, bl), f"prompt {j} of bank {name!r} must be non-empty text.")
                good = False
        if good:
            banks.append(Bank(name, tuple(prompts)))


def _parse_rule(node: Any, kind: str, line: int, errs: _Errs, ptypes: dict[str, str],
                banks: list[Bank]) -> Rule | None:
    if not isinstance(node, dict):
        errs.add(line, f"each {kind} rule must be a mapping (like 'note: 36' and 'action: generate').")
        return None
    line = node.line
    n_before = len(errs.items)
    action = node.get("action")
    if action is None:
        errs.add(line, f"this rule has no 'action'; use one of {', '.join(ACTIONS)}.")
        return None
    if action not in ACTIONS:
        errs.add(_line(node, "action", line),
                 f"unknown action {action!r}.{did_you_mean(action, ACTIONS)} Use one of {', '.join(ACTIONS)}.")
        return None
    allowed = _MATCH_KEYS + _ACTION_KEYS[action]
    for key in node:
        if key == "action":
            continue
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            elsewhere = [a for a, ks in _ACTION_KEYS.items() if key in ks]
            extra = f" ('{key}' belongs to {', '.join(elsewhere)} rules.)" if elsewhere and not hint else ""
            errs.add(_line(node, key, line), f"unknown key {key!r} for a {action} rule.{hint}{extra}")
    rule = Rule(source=errs.source, line=line, action=action)
    if kind == "midi":
        _parse_midi_match(node, rule, errs)
    else:
        _parse_osc_match(node, rule, errs)
    rule.match_ok = len(errs.items) == n_before
    available = set(ptypes) | _COMMON_PLACEHOLDERS
    if rule.event is not None:
        available |= _EVENT_PLACEHOLDERS[rule.event]
    else:
        available |= set(rule.args) | {"value"}
        if rule.address is not None:
            available |= set(re.findall(r"{(\w+)}", rule.address))
            if "pad" in available:
                available.add("pad_prompt")
    _parse_action(node, rule, errs, ptypes, available, banks)
    rule.broken = len(errs.items) > n_before
    return rule


def _parse_midi_match(node: dict, rule: Rule, errs: _Errs) -> None:
    line = node.line
    given = [k for k in ("note", "cc", "program") if k in node]
    if "address" in node or "args" in node:
        errs.add(_line(node, "address", line), "'address' and 'args' belong to OSC rules (under 'osc:').")
    if len(given) > 1:
        errs.add(line, f"a rule matches one kind of message; it has both {given[0]!r} and {given[1]!r}.")
        return
    event = node.get("event")
    implied = {"note": "note_on", "cc": "control_change", "program": "program_change"}
    if event is None:
        if not given:
            errs.add(line, "this MIDI rule matches nothing: give 'note', 'cc', 'program' or 'event'.")
            return
        event = implied[given[0]]
    elif event not in MIDI_EVENTS:
        errs.add(_line(node, "event", line),
                 f"unknown MIDI event {event!r}.{did_you_mean(event, MIDI_EVENTS)} Use one of {', '.join(MIDI_EVENTS)}.")
        return
    rule.event = event
    key = {"note_on": "note", "note_off": "note", "control_change": "cc", "program_change": "program"}.get(event)
    for g in given:
        if g != key:
            errs.add(_line(node, g, line), f"'{g}' does not fit event {event!r}.")
            return
    if key is not None and key in node:
        what = {"note": "note", "cc": "controller", "program": "program"}[key]
        if key == "program" and node[key] == "any":
            rule.numbers = None
        else:
            rule.numbers = _parse_numbers(node[key], 0, 127, what, _line(node, key, line), errs)
    elif key in ("note", "cc"):
        errs.add(line, f"a {event} rule needs '{key}' (a number, a range like '36-51', or a list).")
    if "channel" in node:
        chans = _parse_numbers(node["channel"], 1, 16, "channel", _line(node, "channel", line), errs)
        if chans is not None:
            rule.channels = frozenset(c - 1 for c in chans)
    if "values" in node:
        if event not in ("note_on", "note_off", "control_change"):
            errs.add(_line(node, "values", line), "'values' filters note velocities and CC values only.")
        else:
            vals = _parse_numbers(node["values"], 0, 127, "value", _line(node, "values", line), errs)
            if vals is not None:
                rule.values = frozenset(vals)
    if rule.action == "tempo" and event != "clock":
        errs.add(_line(node, "action", line), "the tempo action follows MIDI clock: use it with 'event: clock'.")


def _parse_osc_match(node: dict, rule: Rule, errs: _Errs) -> None:
    line = node.line
    if "values" in node:
        v = node["values"]
        if _is_num(v):
            rule.osc_values = (float(v), float(v))
        elif isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v) and v[0] <= v[1]:
            rule.osc_values = (float(v[0]), float(v[1]))
        else:
            errs.add(_line(node, "values", line), "for OSC, 'values' is a number or [low, high] that the first "
                     f"argument must fall in, not {v!r}.")
    for k in ("note", "cc", "program", "channel", "event"):
        if k in node:
            errs.add(_line(node, k, line), f"'{k}' belongs to MIDI rules (under 'midi:').")
    addr = node.get("address")
    if not isinstance(addr, str) or not addr.startswith("/") or " " in addr:
        errs.add(_line(node, "address", line), "an OSC rule needs an 'address' starting with '/', without spaces.")
        return
    parts = re.split(r"({\w+}|\*)", addr)
    pattern = ""
    for part in parts:
        if part == "*":
            pattern += "[^/]*"
        elif part.startswith("{") and part.endswith("}"):
            pattern += f"(?P<{part[1:-1]}>[^/]+)"
        elif "{" in part or "}" in part:
            errs.add(_line(node, "address", line), f"the address {addr!r} has a malformed {{placeholder}}.")
            return
        else:
            pattern += re.escape(part)
    try:
        rule.address_re = re.compile(pattern)
    except re.error:
        errs.add(_line(node, "address", line), f"the address {addr!r} names a placeholder twice.")
        return
    rule.address = addr
    args = node.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and a.isidentifier() for a in args):
        errs.add(_line(node, "args", line), "'args' must be a list of argument names (plain words).")
        return
    if len(set(args)) != len(args):
        errs.add(_line(node, "args", line), "'args' names the same argument twice.")
        return
    rule.args = tuple(args)


def _check_template(value: Any, key: str, available: set[str], line: int, errs: _Errs) -> bool:
    if not isinstance(value, str) or "{" not in value and "}" not in value:
        return True
    names = _placeholders(value)
    if names is None:
        errs.add(line, f"'{key}' has unbalanced braces in {value!r}; write {{name}} or {{{{ for a brace.")
        return False
    ok = True
    for nm in names:
        base = re.split(r"[.\[]", nm, maxsplit=1)[0]
        if nm != base or not nm:
            errs.add(line, f"'{key}' uses {{{nm}}}; placeholders are plain names like {{note}}.")
            ok = False
        elif base not in available:
            errs.add(line, f"'{key}' uses unknown placeholder {{{base}}}.{did_you_mean(base, available)}"
                     f" Available here: {', '.join(sorted(available))}.")
            ok = False
    return ok


_FIELD_KINDS = {"negative_prompt": "str", "model": "str", "seconds": "float", "bars": "float",
                "steps": "int", "cfg": "float", "sampler": "str", "slot": "int", "loop": "bool",
                "gain": "float", "launch": "launch", "priority": "int"}
_FIELD_RANGES = {"seconds": (0.01, 3600), "bars": (0.0625, 1024), "steps": (1, 10000), "cfg": (0, 50),
                 "slot": (0, 1023), "gain": (0, 4)}


def _parse_action(node: dict, rule: Rule, errs: _Errs, ptypes: dict[str, str], available: set[str],
                  banks: list[Bank]) -> None:
    line = node.line
    opts: dict[str, Any] = {}
    a = rule.action
    if a == "generate":
        if "prompt" not in node:
            errs.add(line, "a generate rule needs a 'prompt' (text, may use placeholders like {pad_prompt}).")
        elif not isinstance(node["prompt"], str) or not node["prompt"].strip():
            errs.add(_line(node, "prompt", line), "'prompt' must be non-empty text.")
        else:
            if _check_template(node["prompt"], "prompt", available, _line(node, "prompt", line), errs):
                opts["prompt"] = node["prompt"]
            names = set(_placeholders(node["prompt"]) or [])
            if "pad_prompt" in names and not banks:
                errs.add(_line(node, "prompt", line), "the prompt uses {pad_prompt} but no 'banks' are defined.")
            elif "pad_prompt" in names and rule.numbers is not None:
                for b in banks:
                    if len(b.prompts) < len(rule.numbers):
                        errs.add(_line(node, "prompt", line),
                                 f"bank {b.name!r} has {len(b.prompts)} prompts but this rule has "
                                 f"{len(rule.numbers)} pads.")
        if "seconds" in node and "bars" in node:
            errs.add(_line(node, "bars", line), "give the duration in 'seconds' or in 'bars', not both.")
        for key in _GENERATE_KEYS:
            if key == "prompt" or key not in node:
                continue
            kl = _line(node, key, line)
            v = node[key]
            if key == "seed":
                if v in ("random", "velocity", "param"):
                    if v == "velocity" and "velocity" not in available:
                        errs.add(kl, "'seed: velocity' only works for note rules.")
                    opts[key] = v
                elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32:
                    opts[key] = v
                elif isinstance(v, str) and "{" in v:
                    if _check_template(v, key, available, kl, errs):
                        opts[key] = v
                else:
                    errs.add(kl, f"'seed' must be random, velocity, param, a number or a {{placeholder}}, not {v!r}.")
                continue
            if key == "outputs":
                vals = v if isinstance(v, list) else [v]
                bad = [x for x in vals if x not in OUTPUTS]
                if bad or not vals:
                    errs.add(kl, f"'outputs' must list 'play' and/or 'folder', not {bad[0] if bad else v!r}.")
                else:
                    opts[key] = tuple(vals)
                continue
            if key == "gain" and v == "velocity":
                if "velocity" not in available:
                    errs.add(kl, "'gain: velocity' only works for note rules.")
                opts[key] = v
                continue
            if _check_literal(v, key, _FIELD_KINDS[key], kl, errs, available):
                opts[key] = v
    elif a in ("trigger", "stop", "reroll"):
        if "slot" in node:
            if _check_literal(node["slot"], "slot", "int", _line(node, "slot", line), errs, available):
                opts["slot"] = node["slot"]
        elif a == "trigger":
            if "pad" in available:
                opts["slot"] = "{pad}"
            else:
                errs.add(line, "a trigger rule needs a 'slot'.")
        elif "pad" in available and rule.numbers is not None and len(rule.numbers) > 1:
            opts["slot"] = "{pad}"
    elif a == "set":
        _parse_set(node, rule, errs, ptypes, available, opts)
    elif a == "bank":
        b = node.get("bank", "value")
        kl = _line(node, "bank", line)
        names = [x.name for x in banks]
        if not banks:
            errs.add(line, "a bank rule needs 'banks' to be defined.")
        elif b in ("next", "prev"):
            opts["bank"] = b
        elif b == "value":
            if rule.event in ("note_on", "note_off", "clock", "start", "stop"):
                errs.add(kl, "this message carries no value to pick a bank with; give 'bank: <name or number>'.")
            opts["bank"] = b
        elif isinstance(b, int) and not isinstance(b, bool):
            if not 0 <= b < len(banks):
                errs.add(kl, f"bank {b} does not exist; banks are numbered 0 to {len(banks) - 1}.")
            opts["bank"] = b
        elif isinstance(b, str) and b in names:
            opts["bank"] = b
        else:
            errs.add(kl, f"unknown bank {b!r}.{did_you_mean(str(b), names)} Use a bank name, a number, "
                     "'next', 'prev' or 'value'.")
    rule.opts = opts


def _check_literal(v: Any, key: str, kind: str, line: int, errs: _Errs, available: set[str]) -> bool:
    if isinstance(v, str) and ("{" in v or "}" in v):
        return _check_template(v, key, available, line, errs)
    if v is None and kind in ("str",):
        return True
    try:
        val = _coerce(v, kind)
    except ValueError as exc:
        errs.add(line, f"'{key}': {exc}.")
        return False
    rng = _FIELD_RANGES.get(key)
    if rng is not None and val is not None and not rng[0] <= val <= rng[1]:
        errs.add(line, f"'{key}' must be between {rng[0]:g} and {rng[1]:g}, not {val:g}.")
        return False
    return True


def _parse_set(node: dict, rule: Rule, errs: _Errs, ptypes: dict[str, str], available: set[str],
               opts: dict[str, Any]) -> None:
    line = node.line
    param = node.get("param")
    if param is None:
        errs.add(line, "a set rule needs 'param' (the parameter to change).")
        return
    if param not in ptypes:
        errs.add(_line(node, "param", line), f"unknown parameter {param!r}.{did_you_mean(str(param), ptypes)}"
                 " Declare custom parameters under 'params:'.")
        return
    opts["param"] = param
    kind = ptypes[param]
    if "value" in node:
        for k in ("range", "curve", "input"):
            if k in node:
                errs.add(_line(node, k, line), f"'{k}' has no effect with a fixed 'value'.")
        if _check_literal(node["value"], "value", kind, _line(node, "value", line), errs, available):
            opts["value"] = node["value"]
        return
    if rule.event in ("clock", "start", "stop"):
        errs.add(line, f"{rule.event} messages carry no value: give 'value:'.")
        return
    if "arg" in node:
        if rule.address is None:
            errs.add(_line(node, "arg", line), "'arg' picks an OSC argument; it belongs to OSC rules.")
        elif node["arg"] not in rule.args:
            errs.add(_line(node, "arg", line), f"'arg' {node['arg']!r} is not one of this rule's args.")
        else:
            opts["arg"] = node["arg"]
    if "choices" in node:
        ch = node["choices"]
        kl = _line(node, "choices", line)
        for k in ("range", "curve"):
            if k in node:
                errs.add(_line(node, k, line), f"'{k}' has no effect with 'choices'.")
        if not isinstance(ch, list) or len(ch) < 2:
            errs.add(kl, "'choices' must be a list of at least two values; the knob's travel is split between them.")
        else:
            for c in ch:
                if not _check_literal(c, "choices", kind, kl, errs, set()):
                    break
            else:
                opts["choices"] = tuple(_coerce(c, kind) for c in ch)
        _parse_input(node, rule, errs, opts)
        return
    if kind in ("str", "launch"):
        for k in ("range", "curve", "input"):
            if k in node:
                errs.add(_line(node, k, line), f"'{k}' only applies to numeric parameters; {param!r} is text.")
        return
    if "range" in node:
        v = node["range"]
        if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)):
            errs.add(_line(node, "range", line), f"'range' must be two numbers like [0, 127], not {v!r}.")
        else:
            opts["range"] = (float(v[0]), float(v[1]))
    _parse_input(node, rule, errs, opts)
    curve = node.get("curve", "linear")
    if curve not in CURVES:
        errs.add(_line(node, "curve", line), f"unknown curve {curve!r}.{did_you_mean(str(curve), CURVES)}"
                 f" Use one of {', '.join(CURVES)}.")
        return
    opts["curve"] = curve
    if curve == "exp":
        lo, hi = opts.get("range", (None, None))
        if lo is None:
            errs.add(line, "an exp curve needs a 'range' whose ends are both above zero.")
        elif lo <= 0 or hi <= 0:
            errs.add(_line(node, "range", line), "an exp curve needs a 'range' whose ends are both above zero.")
    if param in _FIELD_RANGES:
        rlo, rhi = _FIELD_RANGES[param]
        default_in = (0.0, 127.0) if rule.event is not None else (0.0, 1.0)
        lo, hi = opts.get("range", opts.get("input", default_in))
        if min(lo, hi) < rlo or max(lo, hi) > rhi:
            where = "range" if "range" in node else "param"
            errs.add(_line(node, where, line), f"'{param}' must stay between {rlo:g} and {rhi:g}; "
                     f"give a 'range' inside that (now {lo:g} to {hi:g}).")
    if param == "seed" and "range" in opts and min(opts["range"]) < -1:
        errs.add(_line(node, "range", line), "seeds go from -1 (random) up; use a range like [-1, 100000].")


def _parse_input(node: dict, rule: Rule, errs: _Errs, opts: dict[str, Any]) -> None:
    if "input" not in node:
        return
    v = node["input"]
    kl = _line(node, "input", node.line)
    if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)):
        errs.add(kl, f"'input' must be two numbers like [0, 127], not {v!r}.")
    elif v[0] == v[1]:
        errs.add(kl, "'input' must span more than one value.")
    elif rule.event is not None and (min(v) < 0 or max(v) > 127):
        errs.add(kl, "MIDI values go from 0 to 127; 'input' must stay inside.")
    else:
        opts["input"] = (float(v[0]), float(v[1]))


def _duplicates(rules: list[Rule]) -> list[str]:
    errors = []
    rules = [r for r in rules if r.match_ok]
    for i, r in enumerate(rules):
        for q in rules[:i]:
            if r.address is not None or q.address is not None:
                disjoint = (r.osc_values is not None and q.osc_values is not None
                            and (r.osc_values[1] < q.osc_values[0] or q.osc_values[1] < r.osc_values[0]))
                if r.address is not None and r.address == q.address and not disjoint:
                    errors.append(f"{r.where()}: this rule handles the same message as the rule at "
                                  f"{q.where()} ({r.describe()}).")
                    break
                continue
            if r.event != q.event:
                continue
            if r.channels is not None and q.channels is not None and not (r.channels & q.channels):
                continue
            if r.values is not None and q.values is not None and not (r.values & q.values):
                continue
            if r.numbers is not None and q.numbers is not None:
                common = set(r.numbers) & set(q.numbers)
                if not common:
                    continue
                what = f"{_ranges(common)}"
            else:
                what = "all"
            errors.append(f"{r.where()}: this rule handles the same message as the rule at {q.where()} "
                          f"({r.describe()} overlaps on {what}).")
            break
    return errors


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed for re-rolls (0 .. 2**31-1)."""
    return (rng or random).randrange(0, 2**31)
