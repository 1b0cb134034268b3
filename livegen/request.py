"""The request every part of the daemon speaks, and the clip that answers it.

A :class:`Request` is immutable: the mapper builds one from a MIDI/OSC message, the generation
thread renders it, and the player and folder writer consume the resulting :class:`Clip`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from livegen import limits, tempo

if TYPE_CHECKING:
    from livegen.musical import SlotSource
    from livegen.output.loudness import Levels

OUTPUTS = ("play", "folder")
LAUNCHES = ("now", "beat", "bar")
ACTIONS = ("generate", "extend", "vary")
BPM_RANGE = limits.BPM_RANGE


class RequestError(ValueError):
    """A request with an impossible or absurd value; the message is one plain sentence."""


@dataclass(frozen=True)
class Request:
    prompt: str
    model: str = "default"
    negative_prompt: str | None = None
    seed: int | None = None
    seconds: float | None = None
    bars: float | None = None
    bpm: float | None = None
    beats_per_bar: int = 4
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    slot: int | None = None
    outputs: tuple[str, ...] = ("play",)
    loop: bool = False
    gain: float = 1.0
    launch: str = "bar"
    priority: int = 0
    origin: str | None = None
    # musical actions on a slot's clip (livegen.musical): "generate" (from the prompt alone),
    # "extend" (continue ``source``) or "vary" (audio-to-audio from ``source`` with ``strength``)
    action: str = "generate"
    strength: float | None = None
    source: SlotSource | None = field(default=None, compare=False, repr=False)

    def replace(self, **changes: Any) -> Request:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (``Request(**d)`` takes them back); the source clip is left out."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        d["outputs"] = list(self.outputs)
        return d

    def validate(self, lim: limits.Limits | None = None) -> None:
        """Raise :class:`RequestError` (one sentence) if any value is impossible or absurd, or
        beyond what the model named in the request can render (when ``lim`` knows the model)."""
        lim = lim if lim is not None else limits.Limits()
        check_prompt(self.prompt, lim.max_prompt_chars)
        if self.negative_prompt is not None and len(self.negative_prompt) > lim.max_prompt_chars:
            raise RequestError(f"The negative prompt is longer than {lim.max_prompt_chars} characters.")
        if not self.model or not isinstance(self.model, str):
            raise RequestError("The model name is empty.")
        caps = lim.caps(self.model)
        if lim.models and caps is None:
            known = ", ".join(sorted(lim.models))
            raise RequestError(f"There is no model {self.model!r}; this daemon has {known}.")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= limits.SEED_RANGE[1]):
            raise RequestError(f"The seed must be a whole number from 0 to {limits.SEED_RANGE[1]}, not {self.seed!r}.")
        if self.seconds is not None and self.bars is not None:
            raise RequestError("Give the duration in seconds or in bars, not both.")
        if self.bpm is not None and not (_finite(self.bpm) and BPM_RANGE[0] <= self.bpm <= BPM_RANGE[1]):
            raise RequestError(f"The tempo must be between 20 and 400 bpm, not {self.bpm!r}.")
        lo, hi = limits.BEATS_PER_BAR_RANGE
        if not _is_int(self.beats_per_bar) or not lo <= self.beats_per_bar <= hi:
            raise RequestError(
                f"Beats per bar must be a whole number from {lo} to {hi}, not {self.beats_per_bar!r}."
            )
        if self.seconds is not None and not (_finite(self.seconds) and self.seconds > 0):
            raise RequestError(f"The duration must be a positive number of seconds, not {self.seconds!r}.")
        if self.bars is not None and not (_finite(self.bars) and limits.BARS_RANGE[0] <= self.bars
                                          <= limits.BARS_RANGE[1]):
            raise RequestError(f"The number of bars must be between 1/64 and {limits.BARS_RANGE[1]:g}, "
                               f"not {self.bars!r}.")
        if self.seconds is not None or self.bars is not None:
            check_duration(self.duration_seconds(), self.model, lim)
        max_steps = min(lim.max_steps, limits.STEPS_CEILING)
        if self.steps is not None:
            if caps is not None and not caps.takes_steps:
                raise RequestError(f"Model {caps.name!r} takes no steps; clear steps (set it to default).")
            if not _is_int(self.steps) or not 1 <= self.steps <= max_steps:
                raise RequestError(f"Steps must be a whole number from 1 to {max_steps}, not {self.steps!r}.")
        lo, hi = limits.CFG_RANGE
        if self.cfg_scale is not None and not (_finite(self.cfg_scale) and lo <= self.cfg_scale <= hi):
            raise RequestError(f"The CFG scale must be between {lo:g} and {hi:g}, not {self.cfg_scale!r}.")
        if self.sampler is not None:
            if not isinstance(self.sampler, str) or not self.sampler:
                raise RequestError("The sampler name is empty.")
            if caps is not None and self.sampler not in caps.samplers:
                raise RequestError(unknown_sampler(self.sampler, caps))
        if self.slot is not None and (not _is_int(self.slot) or not 0 <= self.slot < limits.SLOT_COUNT):
            raise RequestError(f"The slot must be a whole number from 0 to {limits.SLOT_COUNT - 1}, not {self.slot!r}.")
        if not self.outputs:
            raise RequestError("The request has no outputs; use 'play', 'folder' or both.")
        for out in self.outputs:
            if out not in OUTPUTS:
                raise RequestError(f"Unknown output {out!r}; use 'play' or 'folder'.")
        lo, hi = limits.GAIN_RANGE
        if not (_finite(self.gain) and lo <= self.gain <= hi):
            raise RequestError(f"The gain must be between {lo:g} and {hi:g}, not {self.gain!r}.")
        if self.launch not in LAUNCHES:
            raise RequestError(f"Unknown launch {self.launch!r}; use 'now', 'beat' or 'bar'.")
        if not _is_int(self.priority) or not limits.PRIORITY_RANGE[0] <= self.priority <= limits.PRIORITY_RANGE[1]:
            raise RequestError(f"The priority must be a whole number, not {self.priority!r}.")
        self._validate_action(caps)

    def _validate_action(self, caps: limits.ModelCaps | None) -> None:
        if self.action not in ACTIONS:
            raise RequestError(f"Unknown action {self.action!r}; use {', '.join(ACTIONS)}.")
        if self.action == "generate":
            if self.strength is not None or self.source is not None:
                raise RequestError("Only vary takes a strength, and only extend and vary a slot's clip.")
            return
        if self.source is None or self.slot is None:
            raise RequestError(f"To {self.action} needs a slot and its clip.")
        want = limits.EngineKind.MUSICGEN if self.action == "extend" else limits.EngineKind.STABLE_AUDIO
        if caps is not None and caps.engine is not want:
            what = "MusicGen" if want is limits.EngineKind.MUSICGEN else "Stable Audio"
            raise RequestError(f"To {self.action} needs a {what} model; {caps.name!r} is {caps.engine.value}.")
        if self.action == "vary":
            if self.strength is None or not (_finite(self.strength) and 0 < self.strength <= 1):
                raise RequestError(f"The strength must be above 0 and at most 1 (1 ignores the slot's audio), "
                                   f"not {self.strength!r}.")
        elif self.strength is not None:
            raise RequestError("Only vary takes a strength.")

    def duration_seconds(self, default_bpm: float = 120.0, default_seconds: float | None = None) -> float:
        """Seconds, or ``bars`` at ``bpm`` (``default_bpm`` when the request has none).

        Falls back to ``default_seconds``; raises :class:`RequestError` when there is no duration.
        """
        if self.seconds is not None:
            return float(self.seconds)
        if self.bars is not None:
            bpm = self.bpm if self.bpm is not None else default_bpm
            return tempo.bars_to_seconds(self.bars, bpm, self.beats_per_bar)
        if default_seconds is not None:
            return float(default_seconds)
        raise RequestError("The request has no duration: give seconds or bars.")

    def duration_samples(self, sample_rate: int, default_bpm: float = 120.0,
                         default_seconds: float | None = None) -> int:
        """Exact length in frames: bars are rounded once, on the whole length (no drift)."""
        if self.seconds is None and self.bars is not None:
            bpm = self.bpm if self.bpm is not None else default_bpm
            return tempo.bars_to_samples(self.bars, bpm, self.beats_per_bar, sample_rate)
        return int(round(self.duration_seconds(default_bpm, default_seconds) * sample_rate))


@dataclass
class Clip:
    request: Request
    audio: np.ndarray  # float32 [C, N]
    sample_rate: int
    seed: int
    model: str
    job_id: int
    created: float = field(default_factory=time.time)
    render_seconds: float = 0.0
    levels: Levels | None = None  # loudness normalisation applied (None: off)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def seconds(self) -> float:
        return self.frames / float(self.sample_rate)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    return numeric and math.isfinite(v)


def check_prompt(prompt: Any, max_chars: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("The prompt is empty.")
    if len(prompt) > max_chars:
        raise RequestError(f"The prompt has {len(prompt)} characters; the limit is {max_chars}.")


def check_duration(seconds: float, model: str | None, lim: limits.Limits) -> None:
    """Refuse a duration the model cannot render: under one frame, or beyond its window."""
    if not _finite(seconds) or seconds <= 0:
        raise RequestError(f"The duration must be a positive number of seconds, not {seconds!r}.")
    shortest = lim.min_seconds(model)
    if seconds < shortest:
        raise RequestError(f"The duration is {seconds:.3g} s, shorter than one audio frame ({shortest:.3g} s).")
    ceiling, why = lim.seconds_ceiling(model)
    if seconds > ceiling + 1e-9:
        raise RequestError(f"The duration is {seconds:.2f} s; {why}.")


def unknown_sampler(name: str, caps: limits.ModelCaps) -> str:
    if not caps.samplers:
        return f"Model {caps.name!r} has no sampler choice; clear the sampler (set it to default)."
    return f"Model {caps.name!r} has no sampler {name!r}; use one of {', '.join(caps.samplers)}."
