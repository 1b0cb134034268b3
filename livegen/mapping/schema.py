"""The mapping file format: YAML -> rules, banks and parameters, every mistake as ``file:line: sentence``.

The format is documented in ``docs/daemon-settings.md`` ("Mapping files"). :func:`parse_texts`
checks one or more files together (rules may use parameters and banks declared in any of them)
and raises :class:`MappingError` listing every mistake at once. Fixed ranges come from
:mod:`livegen.limits`; checks that depend on the loaded model are the session's
(:func:`livegen.session.check_mapping`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livegen import limits
from livegen.mapping.events import DEFAULT_PARAMS, PARAM_TYPES
from livegen.mapping.values import _coerce, _is_num, _placeholders
from livegen.request import OUTPUTS
from livegen.settings import LineDict, LineList, did_you_mean, load_yaml

MIDI_EVENTS = ("note_on", "note_off", "control_change", "program_change", "clock", "start", "stop")
ACTIONS = ("generate", "trigger", "stop", "set", "bank", "reroll", "tempo")
CURVES = ("linear", "exp", "log")
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


class MappingError(ValueError):
    """Every mistake in the mapping files, one ``file:line: sentence`` per line."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


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


@dataclass
class MappingSpec:
    """The checked content of the mapping files."""

    rules: list[Rule]
    banks: list[Bank]
    params: dict[str, Any]
    param_types: dict[str, str]
    names: list[str]
    param_where: dict[str, str] = field(default_factory=dict)  # parameter -> "file:line" of its value


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
    return MappingSpec(rules, banks, params, ptypes, names, where)


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
_FIELD_RANGES = {"seconds": (0.0, limits.SECONDS_CEILING), "bars": limits.BARS_RANGE,
                 "steps": (1, limits.STEPS_CEILING), "cfg": limits.CFG_RANGE, "slot": (0, limits.SLOT_COUNT - 1),
                 "gain": limits.GAIN_RANGE, "bpm": limits.BPM_RANGE, "beats_per_bar": limits.BEATS_PER_BAR_RANGE}


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
