"""Musical actions on what is playing (``extend``, ``vary``) and the ``key``/``scale`` parameters.

- **extend** a slot: MusicGen continues the slot's clip. The tail of the clip (at most
  :data:`EXTEND_CONTEXT_SECONDS`, and what fits in the model's trained window before the
  continuation but at least half that window, cut to whole codec frames so the continuation
  starts exactly where the clip ends) is the decoder's audio prompt; only the
  continuation is returned. It is scheduled on the player at the frame where the slot's current
  clip ends (``Player.slot_end_frame``; a looping clip: its next loop end), so the two join with
  no gap and no overlap. A render that arrives after a one-shot clip has ended (or too close to its
  end to be scheduled in time) is *late*: it starts on the request's launch grid instead (the
  next bar by default) and the sender gets an ``/livegen/ack`` saying so.
- **vary** a slot: Stable Audio renders audio-to-audio from the slot's clip (``init_audio``,
  ``init_strength``), with the same length, and replaces the clip at its launch point.
- **key** and **scale** are session parameters (``/livegen/key s:``, ``/livegen/scale s:``, or
  ``/livegen/set``), checked here, usable as ``{key}`` and ``{scale}`` in prompt templates next to
  ``{bpm}``.

Both actions read the slot's *original* clip (:class:`SlotSource`: the audio at the rate of the
model that rendered it, as it was delivered), so audio is resampled at most once, from the
original, to the rate of the model that extends or varies it (never from the stream-rate copy).
The audio preparation runs on the generation thread (:func:`source_kwargs`), never on the loop.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from livegen.limits import EngineKind
from livegen.request import Request, RequestError

if TYPE_CHECKING:
    from livegen.session import Session

ACTIONS = ("generate", "extend", "vary")
EXTEND_CONTEXT_SECONDS = 10.0  # the longest tail of a clip MusicGen hears before continuing it
DEFAULT_STRENGTH = 0.5  # vary: how much of the slot's audio is replaced by noise (1 = all of it)

# ---- key and scale -----------------------------------------------------------------------------
NOTE_NAMES = ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B")
SCALES = ("major", "minor", "dorian", "phrygian", "lydian", "mixolydian", "locrian", "harmonic minor",
          "melodic minor", "major pentatonic", "minor pentatonic", "blues", "chromatic")
_SCALE_ALIASES = {"ionian": "major", "aeolian": "minor", "maj": "major", "min": "minor"}
_KEY_RE = re.compile(r"([A-Ga-g])\s*([#b\u266f\u266d]|sharp|flat)?", re.IGNORECASE)
DEFAULT_KEY = "C"
DEFAULT_SCALE = "major"


def parse_key(value: Any) -> str:
    """A key's tonic as written in prompts: ``C``, ``F#``, ``Bb`` (``f sharp``, ``bb``, ``E\u266d`` accepted);
    raises :class:`RequestError` with a sentence otherwise."""
    text = value.strip() if isinstance(value, str) else None
    m = _KEY_RE.fullmatch(text) if text else None
    if m is None:
        raise RequestError(f"The key must be a note name A to G with an optional # or b (like C, F#, Bb), "
                           f"not {value!r}.")
    accidental = (m.group(2) or "").lower()
    accidental = "#" if accidental in ("#", "\u266f", "sharp") else "b" if accidental in ("b", "\u266d", "flat") else ""
    return m.group(1).upper() + accidental


def parse_scale(value: Any) -> str:
    """A scale name from :data:`SCALES` (``_`` or ``-`` for spaces, any case, ionian/aeolian as
    major/minor); raises :class:`RequestError` with a sentence otherwise."""
    text = " ".join(re.split(r"[\s_-]+", value.strip().lower())) if isinstance(value, str) else ""
    text = _SCALE_ALIASES.get(text, text)
    if text not in SCALES:
        raise RequestError(f"Unknown scale {value!r}; use one of {', '.join(SCALES)}.")
    return text


_TEMPLATE = re.compile(r"{(bpm|key|scale|beats_per_bar)}")


def fill_placeholders(text: str, values: dict[str, Any]) -> str:
    """``{bpm}``, ``{key}``, ``{scale}`` and ``{beats_per_bar}`` in a prompt typed into a built-in
    verb (``/livegen/generate``, the ``prompt`` parameter); other braces are left as they are."""

    def one(m: re.Match) -> str:
        v = values.get(m.group(1))
        if isinstance(v, float) and v == int(v):
            v = int(v)
        return "" if v is None else str(v)

    return _TEMPLATE.sub(one, text) if "{" in text else text


# ---- the slot's original clip --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SlotSource:
    """A slot's clip as the model rendered it (after levels and the cut, before any resampling for
    the stream): what ``extend`` and ``vary`` start from."""

    audio: np.ndarray  # float32 [C, N] at sample_rate
    sample_rate: int
    request: Request
    model: str
    seed: int
    job_id: int

    @property
    def frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def seconds(self) -> float:
        return self.frames / float(self.sample_rate)

    def at_rate(self, rate: int, last_frames: int | None = None) -> np.ndarray:
        """The clip (or its last ``last_frames`` frames at ``rate``) at ``rate``: resampled once,
        from the original."""
        from livegen.audio_io import resample

        audio = self.audio
        if last_frames is not None:
            # start on a frame that falls on the new rate's grid (a multiple of sr / gcd): the tail is
            # then exactly the end of the whole clip resampled; 512 frames more for the filter's edge
            step = self.sample_rate // math.gcd(self.sample_rate, int(rate))
            need = int(np.ceil(last_frames * self.sample_rate / rate)) + 512
            audio = audio[:, max(0, (self.frames - need) // step * step):]
        out = resample(audio, self.sample_rate, int(rate)) if int(rate) != self.sample_rate else audio
        if last_frames is not None:
            out = out[:, max(0, out.shape[1] - int(last_frames)):]
        return np.ascontiguousarray(out, dtype=np.float32)


# ---- the generation thread: what the engine gets -------------------------------------------------
def source_kwargs(engine: Any, request: Request, seconds: float) -> dict[str, Any]:
    """The engine arguments of an extend (``audio_prompt``) or vary (``init_audio``,
    ``init_strength``) request; empty for a plain generation. Runs on the generation thread."""
    src = request.source
    if request.action == "generate" or src is None:
        return {}
    rate = int(engine.sample_rate)
    if request.action == "vary":
        return {"init_audio": src.at_rate(rate), "init_strength": request.strength}
    hop = int(getattr(engine, "hop_length", 1) or 1)
    window = getattr(engine, "max_seconds", None)
    context = EXTEND_CONTEXT_SECONDS
    if window is not None:  # what fits in the trained window before the continuation, at least half of it
        context = min(context, max(float(window) - seconds, float(window) / 2))
    have = int(round(src.seconds * rate))
    frames = min(have, int(context * rate)) // hop * hop  # whole codec frames: the continuation starts at the end
    if frames < hop:
        raise RequestError(f"Slot {request.slot}'s clip is shorter than one codec frame of the model "
                           f"({hop / rate * 1000:.0f} ms); there is nothing to continue.")
    return {"audio_prompt": src.at_rate(rate, frames)}


# ---- the session: complete requests ----------------------------------------------------------------
def _model_of_kind(session: Session, kind: EngineKind, preferred: str) -> str | None:
    models = session.limits.models
    for name in (preferred, session.limits.resolve("default"), *models):
        caps = models.get(name)
        if caps is not None and caps.engine is kind:
            return name
    return None


def _source(session: Session, slot: int, verb: str) -> SlotSource:
    src = session.slot_sources.get(slot)
    if src is None:
        raise RequestError(f"Slot {slot} has no clip to {verb} yet; generate one for it first.")
    return src


def _kinds(session: Session) -> str:
    return ", ".join(f"{n} ({c.engine.value})" for n, c in sorted(session.limits.models.items())) or "none"


def extend_request(session: Session, slot: int, seconds: float | None, origin: str | None) -> Request:
    """The complete request continuing slot ``slot``'s clip (``seconds`` None: as long as that clip's
    request); raises :class:`RequestError` with one sentence."""
    src = _source(session, slot, "extend")
    model = _model_of_kind(session, EngineKind.MUSICGEN, src.model)
    if model is None:
        raise RequestError(f"Extending needs a MusicGen model; this daemon has {_kinds(session)}.")
    r = src.request
    spec: dict[str, Any] = {"prompt": r.prompt, "model": model, "slot": slot, "loop": r.loop, "gain": r.gain,
                            "launch": r.launch, "outputs": r.outputs, "seed": _seed(session),
                            "action": "extend", "source": src}
    if seconds is not None:
        spec["seconds"] = seconds
    elif r.bars is not None and r.seconds is None:
        spec["bars"] = r.bars
    else:
        spec["seconds"] = src.seconds
    return session.build_request(spec, origin)


def vary_request(session: Session, slot: int, strength: float | None, origin: str | None) -> Request:
    """The complete request varying slot ``slot``'s clip with ``strength`` in (0, 1]; raises
    :class:`RequestError` with one sentence."""
    src = _source(session, slot, "vary")
    model = _model_of_kind(session, EngineKind.STABLE_AUDIO, src.model)
    if model is None:
        raise RequestError(f"Varying needs a Stable Audio model; this daemon has {_kinds(session)}.")
    strength = DEFAULT_STRENGTH if strength is None else strength
    r = src.request
    spec = {"prompt": r.prompt, "model": model, "slot": slot, "loop": r.loop, "gain": r.gain, "launch": r.launch,
            "outputs": r.outputs, "seed": _seed(session), "seconds": src.seconds, "action": "vary",
            "strength": strength, "source": src}
    try:
        return session.build_request(spec, origin)
    except RequestError as exc:
        raise RequestError(f"Slot {slot}'s clip cannot be varied: {exc}") from None


def _seed(session: Session) -> int:
    """The state's seed, else a fresh one (chosen here: a variation is never served from the
    pre-render cache)."""
    seed = session.state.params.get("seed")
    return int(seed) if seed is not None and seed >= 0 else secrets.randbelow(2**31)


# ---- the play pool: where an extension starts ------------------------------------------------------
def extension_frame(player: Any, slot: int, loop_frames: int | None) -> int | None:
    """The stream frame where an extension of ``slot`` starts seamlessly, or None when it is late
    (the slot is silent, or its clip ends too soon to schedule in time and does not loop:
    ``loop_frames`` is the stream length of a looping current clip, else None)."""
    end = player.slot_end_frame(slot)
    if end is None:
        return None
    blocksize = int(getattr(getattr(player, "settings", None), "blocksize", 0) or 1024)
    soonest = int(player.frame) + 2 * blocksize  # a command needs a callback or two to land
    if end >= soonest:
        return int(end)
    if loop_frames:
        return int(end + loop_frames * -(-(soonest - end) // loop_frames))  # the first loop end after that
    return None
