"""Checking the action part of a mapping rule (what a generate, set, bank... rule says to do)."""

from __future__ import annotations

import re
from typing import Any

from livegen import limits
from livegen.mapping.rules import _GENERATE_KEYS, CURVES, Bank, Rule, _Errs, _line
from livegen.mapping.values import _coerce, _is_num, _placeholders
from livegen.request import OUTPUTS
from livegen.settings import did_you_mean


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
    elif a in ("extend", "vary"):
        _parse_musical(node, rule, errs, available, opts)
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


def _parse_musical(node: dict, rule: Rule, errs: _Errs, available: set[str], opts: dict[str, Any]) -> None:
    """extend (slot, seconds) and vary (slot, strength): the slot's clip is continued or varied."""
    line = node.line
    if "slot" in node:
        if _check_literal(node["slot"], "slot", "int", _line(node, "slot", line), errs, available):
            opts["slot"] = node["slot"]
    elif "pad" in available:
        opts["slot"] = "{pad}"
    else:
        verb = "extends" if rule.action == "extend" else "varies"
        errs.add(line, f"this {rule.action} rule needs a 'slot' (the slot whose clip it {verb}).")
    key = "seconds" if rule.action == "extend" else "strength"
    if key in node:
        v, kl = node[key], _line(node, key, line)
        if key == "strength" and _is_num(v) and not 0 < v <= 1:
            errs.add(kl, f"'strength' must be above 0 and at most 1 (1 ignores the slot's audio), not {v!r}.")
        elif _check_literal(v, key, "float", kl, errs, available):
            opts[key] = v


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
