"""What the mapper reads and returns: MIDI/OSC events, the session state, and actions.

:class:`State` holds the parameters (see ``PARAM_TYPES``), raw knob values, the selected bank
and the MIDI clock history. Actions are small frozen dataclasses; the state-changing ones
(:class:`SetParam`, :class:`SelectBank`, :class:`KnobMoved`, :class:`ClockTick`) are applied by
:func:`apply` (the session does this on the event loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Parameter name -> type ("int", "float", "str", "bool", "launch") for the state and set rules.
PARAM_TYPES: dict[str, str] = {
    "prompt": "str", "negative_prompt": "str", "model": "str", "sampler": "str",
    "seed": "int", "steps": "int", "cfg": "float", "seconds": "float", "bars": "float",
    "bpm": "float", "beats_per_bar": "int", "gain": "float", "launch": "launch", "loop": "bool",
    "priority": "int", "key": "str", "scale": "str",
}
DEFAULT_PARAMS: dict[str, Any] = {
    "prompt": "", "negative_prompt": None, "model": "default", "sampler": None, "seed": None,
    "steps": None, "cfg": None, "seconds": None, "bars": None, "bpm": 120.0, "beats_per_bar": 4,
    "gain": 1.0, "launch": "bar", "loop": False, "priority": 0, "key": "C", "scale": "major",
}


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
    """Queue a generation. ``spec`` holds the request fields the message or rule gave (prompt,
    and whichever of seed, seconds, bars, slot, outputs... it sets); the session fills the rest
    from the state and the model (:meth:`livegen.session.Session.build_request`)."""

    spec: dict[str, Any]


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
class Extend:
    """Continue the slot's clip (MusicGen), starting where it ends; ``seconds`` None: as long as it."""

    slot: int
    seconds: float | None = None


@dataclass(frozen=True)
class Vary:
    """Audio-to-audio from the slot's clip (Stable Audio); ``strength`` None: the default."""

    slot: int
    strength: float | None = None


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


Action = (Generate | Trigger | Stop | SetParam | SelectBank | Reroll | Extend | Vary | ClockTick | Reject
          | KnobMoved)


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
