"""Start-up checks of the settings and mappings against what the models can render.

Run by ``livegen serve`` before anything opens, by ``--dry-run``, after the models are loaded
(with their real capabilities), and on every hot reload. Errors name the file and line where
there is one; warnings name the mapping rule that can produce a value the model refuses (the
value is then refused at intake, with a sentence, when the knob gets there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livegen.limits import EngineKind, Limits
from livegen.mapping import Mapper
from livegen.request import RequestError, check_duration, unknown_sampler
from livegen.session import Session


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_settings(settings: Any, limits: Limits) -> list[str]:
    """Model defaults the model cannot render (an unknown sampler, a default duration beyond its
    window, steps for a model that takes none)."""
    out: list[str] = []
    for name, m in settings.models.items():
        caps = limits.models.get(name)
        if caps is None:
            continue
        where = f"models.{name}"
        if m.sampler is not None and m.sampler not in caps.samplers:
            out.append(f"{where}.sampler: {unknown_sampler(m.sampler, caps)}")
        if m.steps is not None and not caps.takes_steps:
            out.append(f"{where}.steps: model {name!r} takes no steps; remove the key.")
        if m.steps is not None and m.steps > limits.max_steps:
            out.append(f"{where}.steps: {m.steps} is more than engine.max_steps ({limits.max_steps}).")
        try:
            check_duration(float(m.seconds), name, limits)
        except RequestError as exc:
            out.append(f"{where}.seconds: {exc}")
    return out


def check_mapping(mapper: Mapper, settings: Any, limits: Limits) -> Findings:
    """Parameter values and rule literals the model refuses (errors), and set rules whose range
    can reach such values (warnings)."""
    found = Findings()
    session = Session(settings, mapper, limits.models)
    session.limits = limits
    for key, value in mapper.params.items():
        if value is None or key in ("prompt", "bpm", "beats_per_bar"):
            continue
        try:
            session.checked_value(key, value)
        except RequestError as exc:
            found.errors.append(f"{mapper.param_where.get(key, 'params')}: parameter {key!r}: {exc}")
    bpm, bpb = session.bpm, session.beats_per_bar
    for rule in mapper.rules:
        o = rule.opts
        model = o.get("model") if isinstance(o.get("model"), str) and "{" not in o.get("model", "") else None
        model = model or session.state.params.get("model")
        caps = limits.caps(model)
        if rule.action == "generate":
            secs = _literal(o.get("seconds"))
            bars = _literal(o.get("bars"))
            if bars is not None:
                secs = bars * bpb * 60.0 / bpm
            if secs is not None:
                try:
                    check_duration(secs, model, limits)
                except RequestError as exc:
                    found.errors.append(f"{rule.where()}: {rule.describe()}: {exc}")
            sampler = o.get("sampler")
            if caps is not None and isinstance(sampler, str) and "{" not in sampler and sampler not in caps.samplers:
                found.errors.append(f"{rule.where()}: {rule.describe()}: {unknown_sampler(sampler, caps)}")
            if isinstance(o.get("model"), str) and "{" not in o["model"] and limits.models and \
                    limits.resolve(o["model"]) not in limits.models:
                found.errors.append(f"{rule.where()}: {rule.describe()}: there is no model {o['model']!r}; "
                                    f"this daemon has {', '.join(sorted(limits.models))}.")
        elif rule.action == "set" and o.get("param") in ("seconds", "bars", "steps"):
            _check_set_range(rule, o, session, caps, found, bpm, bpb, limits)
        elif rule.action in ("extend", "vary") and limits.models:
            kind, what = ((EngineKind.MUSICGEN, "MusicGen") if rule.action == "extend"
                          else (EngineKind.STABLE_AUDIO, "Stable Audio"))
            if not any(c.engine is kind for c in limits.models.values()):
                found.warnings.append(f"{rule.where()}: {rule.describe()}: {rule.action} needs a {what} model and "
                                      "this daemon has none; the rule will be refused.")
    _check_feedback(mapper, settings, found)
    return found


def _check_feedback(mapper: Mapper, settings: Any, found: Findings) -> None:
    """The feedback section against the settings: MIDI is on and there is a port to send to."""
    fb = mapper.feedback
    if fb is None:
        return
    if not settings.midi.enabled:
        found.warnings.append(f"{fb.where()}: the feedback section lights nothing: midi.enabled is false.")
    elif not settings.midi.virtual and not (fb.connect or settings.midi.feedback_connect):
        found.warnings.append(f"{fb.where()}: the feedback section has no port to send to: midi.virtual is false "
                              "and neither feedback.connect nor midi.feedback_connect names one.")


def _literal(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_set_range(rule: Any, o: dict, session: Session, caps: Any, found: Findings, bpm: float, bpb: int,
                     limits: Limits) -> None:
    param = o["param"]
    if "value" in o:
        produced = [_literal(o["value"])]
    elif "choices" in o:
        produced = [_literal(c) for c in o["choices"]]
    else:
        lo_in, hi_in = o.get("input", (0.0, 127.0) if rule.event else (0.0, 1.0))
        produced = list(o.get("range", (lo_in, hi_in)))
    values = [v for v in produced if v is not None and v > 0]
    if not values:
        return
    top = max(values)
    if param == "steps":
        if caps is not None and not caps.takes_steps:
            found.warnings.append(f"{rule.where()}: {rule.describe()} sets steps, but model {caps.name!r} takes "
                                  "none; those sets are refused.")
        elif top > limits.max_steps:
            found.warnings.append(f"{rule.where()}: {rule.describe()} can set steps up to {top:g}, more than "
                                  f"engine.max_steps ({limits.max_steps}); values beyond are refused.")
        return
    secs = top * bpb * 60.0 / bpm if param == "bars" else top
    ceiling, why = limits.seconds_ceiling(session.state.params.get("model"))
    if secs > ceiling + 1e-9:
        at = f" ({secs:.2f} s at {bpm:g} bpm)" if param == "bars" else " s"
        found.warnings.append(f"{rule.where()}: {rule.describe()} can set {param} up to {top:g}{at}; {why}: "
                              "values beyond are refused.")
