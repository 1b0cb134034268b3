"""The mapper: rules from the mapping files turn one MIDI/OSC message into actions.

:class:`Mapper` is pure: ``handle(event, state)`` looks at one message and the current
:class:`~livegen.mapping.events.State` and returns a list of actions; it performs no I/O and does
not change ``state``. A generate rule yields :class:`~livegen.mapping.events.Generate` with the
request fields the rule sets; the session completes it (one request builder for every input).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from livegen.mapping.events import (
    Action,
    ClockTick,
    Extend,
    Generate,
    KnobMoved,
    MidiEvent,
    OscEvent,
    Reject,
    Reroll,
    SelectBank,
    SetParam,
    State,
    Stop,
    Trigger,
    Vary,
)
from livegen.mapping.feedback_spec import FeedbackSpec
from livegen.mapping.schema import Bank, MappingSpec, Rule, parse_texts, read_files
from livegen.mapping.values import _coerce, _is_num, _placeholders, _render_value, _whole

_PROVIDED = "\x00provided"  # context key: the OSC argument names the message gave


def _join_words(args: tuple, wanted: int) -> tuple:
    """Max and Pure Data send an unquoted multi-word prompt as several string atoms: the leading
    strings of a message are joined (with spaces) into the rule's first argument, so a rule's
    only text argument should come first."""
    words = 0
    while words < len(args) and isinstance(args[words], str):
        words += 1
    if words <= 1 or wanted < 1:
        return tuple(args)
    return (" ".join(args[:words]), *args[words:])


class Mapper:
    """Rules from one or more mapping files; ``handle`` turns a message into actions."""

    def __init__(self, rules: list[Rule], banks: list[Bank], params: dict[str, Any],
                 param_types: dict[str, str], names: list[str]):
        self.rules = rules
        self.banks = banks
        self.params = params
        self.param_types = param_types
        self.names = names
        self.param_where: dict[str, str] = {}  # parameter -> "file:line" of its value in the files
        self.feedback: FeedbackSpec | None = None  # the mapping's LED feedback (livegen.feedback)

    @property
    def follows_clock(self) -> bool:
        """A ``tempo`` rule asks the session to follow the MIDI clock (as ``tempo.source:
        midi_clock`` does): :mod:`livegen.tempo_clock` measures it, not the mapper."""
        return any(rule.action == "tempo" for rule in self.rules)

    @classmethod
    def from_spec(cls, spec: MappingSpec) -> Mapper:
        mapper = cls(spec.rules, spec.banks, spec.params, spec.param_types, spec.names)
        mapper.param_where = dict(spec.param_where)
        mapper.feedback = spec.feedback
        return mapper

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Mapper:
        return cls.from_spec(read_files(paths))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<mapping>") -> Mapper:
        return cls.from_texts([(text, source)])

    @classmethod
    def from_texts(cls, docs: Iterable[tuple[str, str]]) -> Mapper:
        return cls.from_spec(parse_texts(docs))

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
        kind = "start" if ev.type == "continue" else ev.type  # a rule on start also hears Continue
        for rule in self.rules:
            if rule.event != kind:
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
            args = _join_words(ev.args, len(rule.args))
            if len(args) > len(rule.args) and rule.args:
                out.append(Reject(f"{ev.address} takes at most {len(rule.args)} arguments "
                                  f"({', '.join(rule.args)}), got {len(ev.args)}."))
                continue
            for name, val in zip(rule.args, args, strict=False):
                ctx[name] = _whole(val)
            ctx[_PROVIDED] = frozenset(rule.args[:len(args)])
            if "pad" in ctx and isinstance(ctx["pad"], int):
                ctx["pad_prompt"] = self._pad_prompt(state, ctx["pad"])
            raw = None
            arg_name = rule.opts.get("arg")
            if arg_name is not None:
                raw = ctx.get(arg_name)
            elif args:
                raw = args[0]
            if "value" not in ctx and args:
                ctx["value"] = _whole(args[0])
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
                return [Generate(self._spec(rule, ctx))]
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
            if rule.action in ("extend", "vary"):
                return [self._musical(rule, ctx)]
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

    def _spec(self, rule: Rule, ctx: dict[str, Any]) -> dict[str, Any]:
        """The request fields this generate rule sets (Request field names); the rest come from
        the session's state. An optional OSC argument that was left out sets nothing."""
        o = rule.opts
        prompt = str(_render_value(o["prompt"], ctx, "str")).strip()
        if not prompt:
            raise ValueError("the prompt came out empty")
        spec: dict[str, Any] = {"prompt": prompt}

        def given(key: str) -> bool:
            v = o.get(key)
            if v is None and key not in o:
                return False
            names = _placeholders(v) if isinstance(v, str) else None
            # "{seed}" naming an OSC argument the message left out: the rule sets nothing
            return not (names and len(names) == 1 and v.strip() == "{" + names[0] + "}"
                        and names[0] in rule.args and names[0] not in ctx.get(_PROVIDED, ()))

        seed_spec = o.get("seed", "param")
        if seed_spec == "random":
            spec["seed"] = None
        elif seed_spec == "velocity":
            spec["seed"] = int(ctx.get("velocity", 0))
        elif seed_spec != "param" and given("seed"):
            seed = _render_value(seed_spec, ctx, "int")
            spec["seed"] = None if seed is not None and seed < 0 else seed
        for key, field_name, kind in (("seconds", "seconds", "float"), ("bars", "bars", "float"),
                                      ("negative_prompt", "negative_prompt", "str"), ("model", "model", "str"),
                                      ("steps", "steps", "int"), ("cfg", "cfg_scale", "float"),
                                      ("sampler", "sampler", "str"), ("loop", "loop", "bool"),
                                      ("launch", "launch", "launch"), ("priority", "priority", "int")):
            if key in o and given(key):
                spec[field_name] = _render_value(o[key], ctx, kind)
        slot_spec = o.get("slot", "{pad}" if "pad" in ctx else None)
        if slot_spec is not None:
            spec["slot"] = _render_value(slot_spec, ctx, "int")
        if "outputs" in o:
            spec["outputs"] = tuple(o["outputs"])
        if "gain" in o and given("gain"):
            g = o["gain"]
            spec["gain"] = float(ctx.get("velocity", 127)) / 127.0 if g == "velocity" else float(
                _render_value(g, ctx, "float"))
        return spec

    def _musical(self, rule: Rule, ctx: dict[str, Any]) -> Action:
        """An extend or vary action: the slot, and the seconds (extend) or strength (vary) if given."""
        o = rule.opts
        if "slot" not in o:
            return Reject(f"This {rule.action} rule has no slot.")
        slot = int(_render_value(o["slot"], ctx, "int"))
        key = "seconds" if rule.action == "extend" else "strength"
        value = _render_value(o[key], ctx, "float") if key in o else None
        return Extend(slot, value) if rule.action == "extend" else Vary(slot, value)

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
        """No action of its own: the rule makes the session follow the clock (:attr:`follows_clock`;
        a regression over the last beats with a hysteresis, Start/Song Position re-anchoring the
        grid: :class:`livegen.tempo_clock.MidiClock`). The one-beat span this rule measured before
        flipped by 0.1 bpm on a steady clock, and every flip re-pivoted the grid."""
        return []

    # --------------------------------------------------------------------------- pre-rendering
    def fixed_specs(self, state: State) -> list[dict[str, Any]]:
        """Generate specs of note rules whose prompt does not depend on the message (pads mapped
        to fixed prompts), one per pad, with ``seed=None`` so any variation will do (for
        pre-rendering; the session completes them)."""
        out: list[dict[str, Any]] = []
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
                        out.append({**a.spec, "seed": None})
                        break
        return out


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed for re-rolls (0 .. 2**31-1)."""
    return (rng or random).randrange(0, 2**31)
