"""The mapping file format: YAML -> rules, banks and parameters, every mistake as ``file:line: sentence``.

The format is documented in ``docs/daemon-settings.md`` ("Mapping files"). :func:`parse_texts`
checks one or more files together (rules may use parameters and banks declared in any of them)
and raises :class:`MappingError` listing every mistake at once. Fixed ranges come from
:mod:`livegen.limits`; checks that depend on the loaded model are in
(:func:`livegen.preflight.check_mapping`). Rules and banks are in :mod:`livegen.mapping.rules`,
the checks of a rule's action in :mod:`livegen.mapping.rule_actions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livegen.mapping.events import DEFAULT_PARAMS, PARAM_TYPES
from livegen.mapping.feedback_spec import FeedbackSpec, parse_feedback
from livegen.mapping.rule_actions import _parse_action
from livegen.mapping.rules import _GENERATE_KEYS, CURVES, Bank, Rule, _Errs, _line, _parse_numbers, _ranges
from livegen.mapping.values import _coerce, _is_num
from livegen.musical import parse_key, parse_scale
from livegen.request import RequestError
from livegen.settings import LineDict, did_you_mean, load_yaml

__all__ = ["ACTIONS", "CURVES", "MIDI_EVENTS", "Bank", "MappingError", "MappingSpec", "Rule", "parse_texts",
           "read_files"]


MIDI_EVENTS = ("note_on", "note_off", "control_change", "program_change", "clock", "start", "stop")
ACTIONS = ("generate", "trigger", "stop", "set", "bank", "reroll", "tempo", "extend", "vary")
# Placeholders always available in templates (besides the state parameters).
_COMMON_PLACEHOLDERS = {"bank", "bank_index", "channel"}
_EVENT_PLACEHOLDERS = {
    "note_on": {"note", "velocity", "pad", "pad_prompt"},
    "note_off": {"note", "velocity", "pad", "pad_prompt"},
    "control_change": {"control", "value"},
    "program_change": {"program", "value"},
    "clock": set(), "start": set(), "stop": set(),
}
_MATCH_KEYS = ("event", "note", "cc", "program", "channel", "values", "address", "args")
_ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "generate": _GENERATE_KEYS,
    "trigger": ("slot",),
    "stop": ("slot",),
    "reroll": ("slot",),
    "set": ("param", "range", "curve", "input", "value", "arg", "choices"),
    "bank": ("bank",),
    "tempo": (),
    "extend": ("slot", "seconds"),
    "vary": ("slot", "strength"),
}
_TOP_KEYS = ("name", "description", "params", "banks", "midi", "osc", "feedback")


class MappingError(ValueError):
    """Every mistake in the mapping files, one ``file:line: sentence`` per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))



@dataclass
class MappingSpec:
    """The checked content of the mapping files."""

    rules: list[Rule]
    banks: list[Bank]
    params: dict[str, Any]
    param_types: dict[str, str]
    names: list[str]
    param_where: dict[str, str] = field(default_factory=dict)  # parameter -> "file:line" of its value
    feedback: FeedbackSpec | None = None  # the LEDs to light (livegen.feedback); one file may have it


def read_files(paths: Iterable[str | Path]) -> MappingSpec:
    """Read and check mapping files; raises :class:`MappingError` (unreadable files included)."""
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
        spec = parse_texts(docs)
    except MappingError as exc:
        raise MappingError(errors + exc.errors) from None
    if errors:
        raise MappingError(errors)
    return spec


def parse_texts(docs: Iterable[tuple[str, str]]) -> MappingSpec:
    """Check ``(text, source)`` documents together; raises :class:`MappingError`."""
    errors: list[str] = []
    rules: list[Rule] = []
    banks: list[Bank] = []
    params = dict(DEFAULT_PARAMS)
    ptypes = dict(PARAM_TYPES)
    where: dict[str, str] = {}
    names: list[str] = []
    feedback: FeedbackSpec | None = None
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
        if isinstance(data.get("params"), dict):
            where.update({k: f"{source}:{_line(data['params'], k, 1)}" for k in data["params"]})
        _parse_banks(data.get("banks"), _line(data, "banks", 1), banks, errs)
        if "feedback" in data:
            fb = parse_feedback(data["feedback"], _line(data, "feedback", 1), errs)
            if fb is not None and feedback is not None:
                errs.add(fb.line, f"only one mapping file may have a 'feedback' section; {feedback.where()} has one.")
            elif fb is not None:
                feedback = fb
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
    return MappingSpec(rules, banks, params, ptypes, names, where, feedback)


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
            if key in ("key", "scale"):
                params[key] = (parse_key if key == "key" else parse_scale)(value)
        except RequestError as exc:
            errs.add(kl, f"parameter {key!r}: {exc}")
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
