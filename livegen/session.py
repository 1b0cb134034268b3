"""The session: the one place that turns a message into actions and complete, valid requests.

Every input goes through :class:`Session`: built-in OSC verbs (:mod:`livegen.control.osc_verbs`),
mapping rules (MIDI and OSC, :mod:`livegen.mapping`), and any future control surface. It holds
the state (parameters, knobs, bank, clock), the mapper and the limits in force
(:class:`livegen.limits.Limits`, with the loaded models' capabilities), and answers each message
with a list of :data:`Outcome` values the daemon carries out. It performs no I/O, so it is tested
in-process.

Rules it keeps:

- a request is built in one place (:meth:`Session.build_request`), whichever way it arrived, and
  is complete: every field the message leaves open comes from the state, the settings and the
  model (steps, cfg, sampler, duration, outputs), so what is rendered and recorded is explicit;
- nothing that cannot be rendered is accepted: a set or a request the model cannot do is refused
  with one sentence the moment it arrives, and nothing is queued;
- every accepted set is echoed with the value now in force (:class:`Echo`);
- hot reload applies the file's values except those a performer changed since the last load.
"""

from __future__ import annotations

import enum
import logging
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from livegen import limits as lim
from livegen import musical
from livegen.control import osc_verbs as verbs
from livegen.control.osc_verbs import Command, OscArgError, Reset, Verb
from livegen.limits import Limits, ModelCaps
from livegen.mapping import (
    Action,
    ClockTick,
    Extend,
    Generate,
    KnobMoved,
    Mapper,
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
    apply,
)
from livegen.request import LAUNCHES, Request, RequestError, check_duration, unknown_sampler
from livegen.tempo_clock import Anchor, ClockBack, ClockEvent, ClockLost, MidiClock, TempoUpdate

log = logging.getLogger("livegen.session")

PARAM_FIELDS = {"cfg": "cfg_scale"}  # state parameter -> Request field, where the names differ


# ---- outcomes: what the daemon carries out ----------------------------------------------------
@dataclass(frozen=True)
class Queue:
    """Render this complete, validated request."""

    request: Request


@dataclass(frozen=True)
class PlaySlot:
    slot: int


@dataclass(frozen=True)
class StopSlot:
    slot: int | None  # None: every slot


@dataclass(frozen=True)
class CancelJob:
    job: int | None  # None: every queued and running job


@dataclass(frozen=True)
class Echo:
    """A parameter's value now in force, after a set (to the sender and every subscriber)."""

    param: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Answer:
    """The answer to ``/livegen/get`` (to the sender)."""

    param: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class Query:
    """Status, reload or subscribe: answered by the daemon, which owns what they need."""

    verb: Verb
    port: int | None = None


@dataclass(frozen=True)
class TempoChanged:
    bpm: float
    beats_per_bar: int


@dataclass(frozen=True)
class Reanchor:
    """The followed MIDI clock says song position ``beats`` was heard at monotonic ``time``: put
    the bar grid's lines where that position says (the daemon maps the time to a stream frame)."""

    time: float
    beats: float
    beats_per_bar: int
    bpm: float


@dataclass(frozen=True)
class ClockNotice:
    """The followed MIDI clock was lost (``lost``) or came back: log it and tell the subscribers."""

    sentence: str
    lost: bool


Outcome = (Queue | PlaySlot | StopSlot | CancelJob | Echo | Answer | Refuse | Query | TempoChanged | Reanchor
           | ClockNotice)

CLOCK_MESSAGES = ("clock", "start", "continue", "stop", "songpos")


class TempoSource(str, enum.Enum):
    """Where the tempo in force comes from (``tempo.source``)."""

    INTERNAL = "internal"
    MIDI_CLOCK = "midi_clock"
    LINK = "link"  # the Ableton Link session (livegen.link_clock sets bpm from it, origin "link")


class Session:
    """State + mapper + limits -> outcomes. See the module docstring."""

    def __init__(self, settings: Any, mapper: Mapper, caps: dict[str, ModelCaps] | None = None) -> None:
        self.settings = settings
        self.mapper = mapper
        self.limits = Limits.from_settings(settings, caps if caps is not None else lim.caps_from_settings(settings))
        self.state: State = mapper.initial_state(settings.tempo.bpm, settings.tempo.beats_per_bar)
        self._file_params = dict(mapper.params)
        self.touched: set[str] = set()  # parameters a performer set since the last load
        self.slot_requests: OrderedDict[int, Request] = OrderedDict()
        self.last_request: Request | None = None
        self.clock = MidiClock(timeout=float(getattr(settings.tempo, "clock_timeout", 0.5)))
        # each slot's clip as its model rendered it (the daemon shares the delivery's): extend, vary
        self.slot_sources: dict[int, musical.SlotSource] = {}

    # ------------------------------------------------------------------ capabilities
    def set_caps(self, caps: dict[str, ModelCaps]) -> None:
        """Use the loaded models' capabilities (replacing those read from configuration)."""
        self.limits = Limits.from_settings(self.settings, caps)

    @property
    def bpm(self) -> float:
        return float(self.state.params.get("bpm") or self.settings.tempo.bpm)

    @property
    def beats_per_bar(self) -> int:
        return int(self.state.params.get("beats_per_bar") or self.settings.tempo.beats_per_bar)

    def default_outputs(self) -> tuple[str, ...]:
        """Outputs of a request that names none: the folder too when ``folder.path`` is set."""
        return ("play", "folder") if self.settings.folder.path is not None else ("play",)

    # ------------------------------------------------------------------ inputs
    def osc(self, address: str, args: tuple, origin: str) -> list[Outcome]:
        """One OSC message: a mapping rule claims it first, else a built-in address."""
        actions = self.mapper.handle(OscEvent(address, tuple(args)), self.state)
        if any(not isinstance(a, Reject) for a in actions):
            return self.perform(actions, origin)
        try:
            command = verbs.parse(address, args, self.mapper.param_types)
        except OscArgError as exc:
            return self.perform(actions, origin) if actions else [Refuse(str(exc))]
        if command is None:
            if actions:
                return self.perform(actions, origin)
            return [Refuse(f"Unknown address {address}: no built-in address or mapping rule matches.")]
        return self.command(command, origin)

    def midi(self, event: MidiEvent, origin: str | None = None) -> list[Outcome]:
        origin = origin or f"midi:{event.type}"
        out: list[Outcome] = []
        if event.type in CLOCK_MESSAGES and self.tempo_source == TempoSource.MIDI_CLOCK:
            out.extend(self._clock_outcomes(self._feed_clock(event), origin))
        return out + self.perform(self.mapper.handle(event, self.state), origin)

    # ------------------------------------------------------------------ the MIDI clock
    @property
    def tempo_source(self) -> TempoSource:
        """``link`` when the settings (``tempo.source``) say so (a mapping's ``tempo`` rule then
        follows nothing); ``midi_clock`` when the settings or a mapping's ``tempo`` rule say so;
        else ``internal``."""
        source = getattr(self.settings.tempo, "source", "internal")
        if source == TempoSource.LINK:
            return TempoSource.LINK
        if source == TempoSource.MIDI_CLOCK or self.mapper.follows_clock:
            return TempoSource.MIDI_CLOCK
        return TempoSource.INTERNAL

    def _feed_clock(self, event: MidiEvent) -> list[ClockEvent]:
        c = self.clock
        if event.type == "clock":
            return c.tick(event.time) if event.time is not None else []
        if event.type == "start":
            return c.start(event.time)
        if event.type == "continue":
            return c.continue_(event.time)
        if event.type == "stop":
            return c.stop(event.time)
        return c.song_position(int(event.value or 0), event.time)

    def clock_check(self, now: float) -> list[Outcome]:
        """Poll the followed clock for loss (the daemon calls this a few times a second)."""
        if self.tempo_source != TempoSource.MIDI_CLOCK:
            return []
        return self._clock_outcomes(self.clock.check(now), "midi:clock")

    def _clock_outcomes(self, events: list[ClockEvent], origin: str) -> list[Outcome]:
        out: list[Outcome] = []
        for e in events:
            if isinstance(e, TempoUpdate):
                if abs(e.bpm - self.bpm) >= 0.005:
                    out.extend(self.set_param("bpm", e.bpm, origin))
            elif isinstance(e, Anchor):
                out.append(Reanchor(e.time, e.beats, self.beats_per_bar, self.bpm))
            elif isinstance(e, (ClockLost, ClockBack)):
                out.append(ClockNotice(e.sentence, isinstance(e, ClockLost)))
        return out

    def tempo_status(self) -> dict[str, Any]:
        """``tempo`` in the status JSON: the source in force, the tempo, the clock's state."""
        return {"source": self.tempo_source.value, "bpm": self.bpm, "beats_per_bar": self.beats_per_bar,
                "clock": self.clock.stats()}

    def command(self, cmd: Command, origin: str) -> list[Outcome]:
        v = cmd.values
        if cmd.verb is Verb.GENERATE:
            spec = {k: v[k] for k in ("prompt", "seed", "seconds") if k in v}
            return self.generate(spec, origin)
        if cmd.verb is Verb.TRIGGER:
            return [PlaySlot(v["slot"])]
        if cmd.verb is Verb.STOP:
            return [StopSlot(v["slot"])]
        if cmd.verb is Verb.CANCEL:
            return [CancelJob(v["job"])]
        if cmd.verb is Verb.REROLL:
            return self.reroll(v["slot"], origin)
        if cmd.verb is Verb.EXTEND:
            return self.musical(Extend(v["slot"], v["seconds"]), origin)
        if cmd.verb is Verb.VARY:
            return self.musical(Vary(v["slot"], v["strength"]), origin)
        if cmd.verb is Verb.SET:
            return self.set_param(v["name"], v["value"], origin)
        if cmd.verb is Verb.GET:
            return [Answer(v["name"], self.value_in_force(v["name"]))]
        return [Query(cmd.verb, v.get("port"))]

    def perform(self, actions: list[Action], origin: str) -> list[Outcome]:
        out: list[Outcome] = []
        for action in actions:
            if isinstance(action, (KnobMoved, ClockTick)):
                apply(action, self.state)
            elif isinstance(action, Reject):
                out.append(Refuse(action.reason))
            elif isinstance(action, SetParam):
                out.extend(self.set_param(action.name, action.value, origin))
            elif isinstance(action, SelectBank):
                out.extend(self.set_param("bank", action.bank, origin))
            elif isinstance(action, Generate):
                out.extend(self.generate(action.spec, origin))
            elif isinstance(action, Trigger):
                out.append(PlaySlot(action.slot))
            elif isinstance(action, Stop):
                out.append(StopSlot(action.slot))
            elif isinstance(action, Reroll):
                out.extend(self.reroll(action.slot, origin))
            elif isinstance(action, (Extend, Vary)):
                out.extend(self.musical(action, origin))
        return out

    def musical(self, action: Extend | Vary, origin: str) -> list[Outcome]:
        """Extend (MusicGen continuation) or vary (Stable Audio audio-to-audio) a slot's clip."""
        try:
            if isinstance(action, Extend):
                request = musical.extend_request(self, action.slot, action.seconds, origin)
            else:
                request = musical.vary_request(self, action.slot, action.strength, origin)
        except RequestError as exc:
            return [Refuse(str(exc))]
        self.remember(request)
        return [Queue(request)]

    # ------------------------------------------------------------------ requests
    def generate(self, spec: dict[str, Any], origin: str) -> list[Outcome]:
        try:
            request = self.build_request(spec, origin)
        except RequestError as exc:
            return [Refuse(str(exc))]
        self.remember(request)
        return [Queue(request)]

    def build_request(self, spec: dict[str, Any], origin: str | None) -> Request:
        """The complete request for ``spec`` (the fields a message or rule gave) and the state.

        Raises :class:`RequestError` with one sentence when it cannot be rendered.
        """
        p = self.state.params
        seed = p.get("seed")
        fields: dict[str, Any] = {
            "prompt": p.get("prompt") or "",
            "model": p.get("model") or "default",
            "negative_prompt": p.get("negative_prompt") or None,
            "seed": seed if (seed is None or seed >= 0) else None,
            "seconds": p.get("seconds"),
            "bars": p.get("bars"),
            "bpm": self.bpm,
            "beats_per_bar": self.beats_per_bar,
            "steps": p.get("steps"),
            "cfg_scale": p.get("cfg"),
            "sampler": p.get("sampler"),
            "loop": bool(p.get("loop")),
            "gain": float(p.get("gain") if p.get("gain") is not None else 1.0),
            "launch": p.get("launch") or "bar",
            "priority": int(p.get("priority") or 0),
        }
        spec = dict(spec)
        if spec.get("seconds") is not None:
            fields["bars"] = None
        elif spec.get("bars") is not None:
            fields["seconds"] = None
        elif fields["seconds"] is not None and fields["bars"] is not None:
            fields["seconds"] = None  # bars follow the tempo
        for key in ("seconds", "bars"):
            if key in spec and spec[key] is None:
                del spec[key]
        fields.update(spec)
        if isinstance(fields["prompt"], str):  # {bpm}, {key}, {scale} typed into a verb's prompt
            fields["prompt"] = musical.fill_placeholders(fields["prompt"], {
                "bpm": self.bpm, "beats_per_bar": self.beats_per_bar, "key": p.get("key"), "scale": p.get("scale")})
        name = self.limits.resolve(fields["model"])
        caps = self.limits.models.get(name)
        if self.limits.models and caps is None:
            known = ", ".join(sorted(self.limits.models))
            raise RequestError(f"There is no model {fields['model']!r}; this daemon has {known}.")
        fields["model"] = name
        if caps is not None:
            if not caps.takes_steps:  # the state's steps and sampler are for the models that have them
                fields["steps"] = None
            if not caps.samplers:
                fields["sampler"] = None
            if fields["seconds"] is None and fields["bars"] is None:
                fields["seconds"] = caps.default_seconds
            if fields["steps"] is None:
                fields["steps"] = caps.default_steps
            if fields["cfg_scale"] is None:
                fields["cfg_scale"] = caps.default_cfg
            if fields["sampler"] is None:
                fields["sampler"] = caps.default_sampler
            if fields["negative_prompt"] is None:
                fields["negative_prompt"] = caps.default_negative_prompt
        fields["outputs"] = tuple(fields.get("outputs") or self.default_outputs())
        if "folder" in fields["outputs"] and self.settings.folder.path is None:
            raise RequestError("This request asks for the folder output but folder.path is not set.")
        fields["origin"] = origin
        try:
            request = Request(**fields)
        except TypeError as exc:  # a key the Request does not have: a bug in a caller
            raise RequestError(f"The request has an unknown field ({exc}).") from None
        request.validate(self.limits)
        return request

    def remember(self, request: Request) -> None:
        """Keep ``request`` for reroll (per slot, bounded)."""
        self.last_request = request
        if request.slot is not None:
            self.slot_requests.pop(request.slot, None)
            self.slot_requests[request.slot] = request
            while len(self.slot_requests) > lim.SLOT_COUNT:
                self.slot_requests.popitem(last=False)

    def reroll(self, slot: int | None, origin: str) -> list[Outcome]:
        if slot is None:
            base = self.last_request
            if base is None:
                return [Refuse("There is nothing to reroll yet.")]
        else:
            base = self.slot_requests.get(slot)
            if base is None:
                return [Refuse(f"Slot {slot} has no request to reroll yet.")]
        # an extension or variation gets its seed now: the pre-render cache holds plain generations only
        request = base.replace(seed=None if base.action == "generate" else secrets.randbelow(2**31), origin=origin)
        try:
            request.validate(self.limits)
        except RequestError as exc:
            return [Refuse(str(exc))]
        self.remember(request)
        return [Queue(request)]

    def prerender_requests(self) -> list[Request]:
        """Complete requests of the fixed-prompt pads (seed open), for idle pre-rendering."""
        out = []
        for spec in self.mapper.fixed_specs(self.state):
            try:
                out.append(self.build_request(spec, "prerender"))
            except RequestError as exc:
                log.debug("no pre-rendering for %r: %s", spec.get("prompt"), exc)
        return out

    # ------------------------------------------------------------------ parameters
    def set_param(self, name: str, value: Any, origin: str | None) -> list[Outcome]:
        """Check ``value`` for ``name`` against the limits in force, apply it, echo it."""
        try:
            value = self.checked_value(name, value)
        except (RequestError, OscArgError) as exc:
            return [Refuse(str(exc))]
        if name == "bank":
            self.state.bank = value
            self.touched.add(name)
            return [Echo("bank", self.value_in_force("bank"))]
        before = dict(self.state.params)
        apply(SetParam(name, value), self.state)
        self.touched.add(name)
        out: list[Outcome] = [Echo(name, self.value_in_force(name))]
        for other in ("seconds", "bars"):  # a duration clears the other one: say so
            if other != name and before.get(other) != self.state.params.get(other):
                self.touched.add(other)
                out.append(Echo(other, self.value_in_force(other)))
        if name in ("bpm", "beats_per_bar"):
            out.append(TempoChanged(self.bpm, self.beats_per_bar))
        return out

    def checked_value(self, name: str, value: Any) -> Any:
        """The value to store for ``name`` (None restores the default), or raise with a sentence."""
        types = self.mapper.param_types
        if name == "bank":
            return self._bank_index(value)
        if name not in types:
            raise RequestError(f"There is no parameter {name!r}; known: {', '.join(types)}.")
        if value is Reset.DEFAULT:
            return "default" if name == "model" else None
        if value is None:
            return None
        kind = types[name]
        if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                         or not math.isfinite(float(value))):
            raise RequestError(f"{name} must be a finite number, not {value!r}.")
        if name == "model":
            if value in ("", "default"):
                return "default"
            if self.limits.models and value not in self.limits.models:
                known = ", ".join(sorted(self.limits.models))
                raise RequestError(f"There is no model {value!r}; this daemon has {known}.")
            return value
        caps = self.limits.caps(self.state.params.get("model"))
        if name == "sampler":
            if caps is not None and caps.samplers and value not in caps.samplers:
                raise RequestError(unknown_sampler(str(value), caps))
            known = sorted({s for c in self.limits.models.values() for s in c.samplers})
            if caps is not None and not caps.samplers and value not in known:
                raise RequestError(f"No model of this daemon has a sampler {value!r}; "
                                   f"use one of {', '.join(known) or 'none'}.")
            return value
        if name == "seed":
            if int(value) != value:
                raise RequestError(f"The seed must be a whole number, not {value!r}.")
            if value < 0:
                return None  # a new random seed every time
            if value > lim.SEED_RANGE[1]:
                raise RequestError(f"The seed must be a whole number from 0 to {lim.SEED_RANGE[1]}, not {value}.")
            return int(value)
        if name in ("seconds", "bars"):
            if value == 0:
                return None  # 0 clears a duration (then the other one, or the model's default, applies)
            if value < 0:
                raise RequestError(f"The {name} must be positive (0 clears it), not {value:g}.")
            if name == "bars":
                lo, hi = lim.BARS_RANGE
                if not lo <= value <= hi:
                    raise RequestError(f"The number of bars must be between 1/64 and {hi:g}, not {value:g}.")
                seconds = value * self.beats_per_bar * 60.0 / self.bpm
            else:
                seconds = float(value)
            check_duration(seconds, self.state.params.get("model"), self.limits)
            return float(value)
        if name in ("key", "scale"):
            if isinstance(value, str) and not value.strip():
                return None  # "" clears it (the browser's menu has an empty entry)
            return musical.parse_key(value) if name == "key" else musical.parse_scale(value)
        if name in _REQUEST_PARAMS:  # model-independent ranges (steps are kept for models that take them)
            ranges = Limits(self.limits.max_steps, self.limits.max_seconds, self.limits.max_prompt_chars)
            Request("check", **{PARAM_FIELDS.get(name, name): value}).validate(ranges)
        if name == "prompt" and isinstance(value, str) and len(value) > self.limits.max_prompt_chars:
            raise RequestError(f"The prompt has {len(value)} characters; the limit is {self.limits.max_prompt_chars}.")
        if name == "launch" and value not in LAUNCHES:
            raise RequestError(f"Unknown launch {value!r}; use now, beat or bar (or 0, 1, 2).")
        return value

    def _bank_index(self, value: Any) -> int:
        banks = self.mapper.banks
        names = [b.name for b in banks]
        if isinstance(value, str):
            if value in names:
                return names.index(value)
            raise RequestError(f"There is no bank {value!r}; the banks are {', '.join(names) or 'none'}.")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < max(len(banks), 1):
            raise RequestError(f"Bank {value!r} does not exist (the mapping has {len(banks)}).")
        return int(value)

    def value_in_force(self, name: str) -> tuple[Any, ...]:
        """OSC arguments of ``name``'s value now in force (defaults resolved)."""
        p = self.state.params
        caps = self.limits.caps(p.get("model"))
        if name == "bank":
            banks = self.mapper.banks
            return (self.state.bank, banks[self.state.bank].name if 0 <= self.state.bank < len(banks) else "")
        v = p.get(name)
        if name == "model":
            return (self.limits.resolve(v),)
        if name == "seed":
            return (-1 if v is None else int(v),)
        if name == "steps":
            return (int(v) if v is not None else int(caps.default_steps or 0) if caps else 0,)
        if name == "cfg":
            return (float(v) if v is not None else float(caps.default_cfg) if caps else 0.0,)
        if name == "sampler":
            return (v if v is not None else (caps.default_sampler or "") if caps else "",)
        if name == "negative_prompt":
            return (v if v is not None else (caps.default_negative_prompt or "") if caps else "",)
        if name == "seconds":
            if v is not None:
                return (float(v),)
            return (0.0,) if p.get("bars") is not None else (float(caps.default_seconds) if caps else 0.0,)
        if name == "bars":
            return (float(v) if v is not None else 0.0,)
        if name == "bpm":
            return (self.bpm,)
        if name == "beats_per_bar":
            return (self.beats_per_bar,)
        if isinstance(v, bool):
            return (int(v),)
        return ("" if v is None else v,)

    # ------------------------------------------------------------------ reload
    def reload(self, mapper: Mapper) -> None:
        """Use a new mapping: the file's parameter values apply, except those a performer changed
        since the last load (a value the file did not change keeps the one in force)."""
        fresh = mapper.initial_state(None, None)
        params = dict(self.state.params)
        for key, value in mapper.params.items():
            if key in self.touched:
                continue
            if key not in self._file_params or self._file_params[key] != value or key not in params:
                params[key] = value
        for key in list(params):
            if key not in mapper.params:
                params.pop(key)
        fresh.params = params
        fresh.knobs = self.state.knobs
        fresh.clock_times = self.state.clock_times
        fresh.clock_ticks = self.state.clock_ticks
        fresh.bank = min(self.state.bank, max(0, len(mapper.banks) - 1))
        self.state = fresh
        self.mapper = mapper
        self._file_params = dict(mapper.params)
        self.touched.clear()


_REQUEST_PARAMS = {"negative_prompt", "steps", "cfg", "beats_per_bar", "gain", "priority", "bpm"}
