"""The ``feedback:`` section of a mapping: which LEDs show which slot, and what each state sends.

::

    feedback:
      connect: [LPX MIDI]          # output ports to connect to (substring match), optional
      rate: 200                    # at most this many messages a second (default 200)
      pads:                        # groups of LEDs; the i-th number of a group shows slot i
        - note: [11-18, 21-28]
          channel: 1               # 1-16, default 1
        - cc: [1-8]                # CC LEDs: the value is the CC's value
      states:                      # what each slot state sends; every state is required
        idle:      {value: 0}
        queued:    {value: 13}
        rendering: {value: [7, 9, 13], channel: 3}   # a list: stepped through by progress
        cached:    {value: 37}
        playing:   {value: 21, channel: 2}

A state's ``value`` is the note velocity (for ``note`` LEDs) or the CC value (``cc`` LEDs), 0-127,
or a list of such values chosen by the state's progress (rendering: step / total; cached: the
fraction of variations ready); ``channel`` (1-16) replaces the group's channel for that state
(Launchpads flash on channel 2 and pulse on channel 3). Mistakes are ``file:line: sentence``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livegen.mapping.rules import _Errs, _line, _parse_numbers
from livegen.settings import did_you_mean

STATES = ("idle", "queued", "rendering", "cached", "playing")
DEFAULT_RATE = 200.0
_KEYS = ("connect", "rate", "pads", "states")
_GROUP_KEYS = ("note", "cc", "channel")
_STATE_KEYS = ("value", "velocity", "channel")


@dataclass(frozen=True)
class LedGroup:
    kind: str  # "note" | "cc"
    numbers: tuple[int, ...]  # the i-th lights slot i
    channel: int  # 0-based
    line: int = 0


@dataclass(frozen=True)
class StateLook:
    values: tuple[int, ...]  # one value, or several chosen by progress
    channel: int | None  # 0-based; None: the group's channel

    def value(self, progress: float) -> int:
        if len(self.values) == 1:
            return self.values[0]
        i = int(max(0.0, min(1.0, progress)) * len(self.values))
        return self.values[min(i, len(self.values) - 1)]


@dataclass
class FeedbackSpec:
    source: str
    line: int
    groups: list[LedGroup]
    states: dict[str, StateLook]
    connect: list[str] = field(default_factory=list)
    rate: float = DEFAULT_RATE

    def where(self) -> str:
        return f"{self.source}:{self.line}"

    def message(self, group: LedGroup, slot: int, state: str, progress: float = 0.0) -> tuple[int, int, int] | None:
        """The three MIDI bytes that show ``state`` on ``group``'s LED for ``slot`` (None: no such LED)."""
        if not 0 <= slot < len(group.numbers):
            return None
        look = self.states[state]
        ch = group.channel if look.channel is None else look.channel
        status = (0x90 if group.kind == "note" else 0xB0) | ch
        return status, group.numbers[slot], look.value(progress)

    def slots(self) -> int:
        return max((len(g.numbers) for g in self.groups), default=0)


def parse_feedback(node: Any, line: int, errs: _Errs) -> FeedbackSpec | None:
    """The checked section, or None (with the mistakes in ``errs``)."""
    n_before = len(errs.items)
    if not isinstance(node, dict):
        errs.add(line, "'feedback' must be a mapping with 'pads' and 'states' (see docs/daemon.md, Feedback).")
        return None
    for key in node:
        if key not in _KEYS:
            errs.add(_line(node, key, line), f"unknown feedback key {key!r}.{did_you_mean(str(key), _KEYS)} "
                     f"Known: {', '.join(_KEYS)}.")
    connect = node.get("connect", [])
    if isinstance(connect, str):
        connect = [connect]
    if not isinstance(connect, list) or not all(isinstance(c, str) and c for c in connect):
        errs.add(_line(node, "connect", line), "feedback 'connect' must be a list of MIDI output port names.")
        connect = []
    rate = node.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 1 <= rate <= 10000:
        errs.add(_line(node, "rate", line), f"feedback 'rate' is messages per second, 1-10000, not {rate!r}.")
        rate = DEFAULT_RATE
    groups = _parse_groups(node.get("pads"), _line(node, "pads", line), errs) if "pads" in node else None
    if groups is None and "pads" not in node:
        errs.add(line, "the feedback section needs 'pads': groups of LEDs like '- note: 36-51'.")
    states = _parse_states(node.get("states"), _line(node, "states", line), errs) if "states" in node else None
    if "states" not in node:
        errs.add(line, f"the feedback section needs 'states' with what to send for {', '.join(STATES)}.")
    if len(errs.items) > n_before or groups is None or states is None:
        return None
    return FeedbackSpec(errs.source, line, groups, states, list(connect), float(rate))


def _parse_groups(node: Any, line: int, errs: _Errs) -> list[LedGroup] | None:
    if not isinstance(node, list) or not node:
        errs.add(line, "feedback 'pads' must be a list of LED groups like '- note: 36-51' or '- cc: 1-8'.")
        return None
    groups: list[LedGroup] = []
    seen: dict[tuple[str, int, int], int] = {}
    for i, g in enumerate(node):
        gl = _line(node, i, line)
        if not isinstance(g, dict):
            errs.add(gl, "an LED group must be a mapping like 'note: 36-51' (with an optional 'channel').")
            continue
        for key in g:
            if key not in _GROUP_KEYS:
                errs.add(_line(g, key, gl), f"unknown LED group key {key!r}.{did_you_mean(str(key), _GROUP_KEYS)} "
                         f"Known: {', '.join(_GROUP_KEYS)}.")
        kinds = [k for k in ("note", "cc") if k in g]
        if len(kinds) != 1:
            errs.add(gl, "an LED group names its LEDs with either 'note' or 'cc' (one of them).")
            continue
        kind = kinds[0]
        numbers = _parse_numbers(g[kind], 0, 127, "note" if kind == "note" else "controller", _line(g, kind, gl), errs)
        channel = _channel(g, gl, errs, default=0)
        if numbers is None or channel is None:
            continue
        group = LedGroup(kind, numbers, channel, gl)
        for n in numbers:
            other = seen.setdefault((kind, channel, n), gl)
            if other != gl:
                errs.add(_line(g, kind, gl), f"{kind} {n} on channel {channel + 1} already shows a slot in the "
                         f"LED group at line {other}.")
                break
        groups.append(group)
    return groups


def _channel(node: dict, line: int, errs: _Errs, default: int | None) -> int | None:
    if "channel" not in node:
        return default
    ch = node["channel"]
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= 16:
        errs.add(_line(node, "channel", line), f"a MIDI channel is 1-16, not {ch!r}.")
        return None
    return ch - 1


def _parse_states(node: Any, line: int, errs: _Errs) -> dict[str, StateLook] | None:
    if not isinstance(node, dict):
        errs.add(line, f"feedback 'states' must be a mapping of {', '.join(STATES)} to what each sends.")
        return None
    out: dict[str, StateLook] = {}
    for key in node:
        if key not in STATES:
            errs.add(_line(node, key, line), f"unknown slot state {key!r}.{did_you_mean(str(key), STATES)} "
                     f"The states are {', '.join(STATES)}.")
    missing = [s for s in STATES if s not in node]
    if missing:
        errs.add(line, f"feedback 'states' lacks {', '.join(missing)}: say what each state sends "
                 "(like 'idle: {value: 0}').")
    for state in STATES:
        if state not in node:
            continue
        sl = _line(node, state, line)
        look = node[state]
        if isinstance(look, int) and not isinstance(look, bool):
            look = {"value": look}
        if not isinstance(look, dict):
            errs.add(sl, f"state {state!r} must be a value 0-127 or a mapping like '{{value: 21, channel: 2}}'.")
            continue
        for key in look:
            if key not in _STATE_KEYS:
                errs.add(_line(look, key, sl), f"unknown key {key!r} for state {state!r}."
                         f"{did_you_mean(str(key), _STATE_KEYS)} Known: value (or velocity), channel.")
        if "value" in look and "velocity" in look:
            errs.add(sl, f"state {state!r} gives both 'value' and 'velocity'; they are the same thing.")
            continue
        raw = look.get("value", look.get("velocity"))
        if raw is None:
            errs.add(sl, f"state {state!r} needs a 'value' (the note velocity or CC value, 0-127).")
            continue
        items = raw if isinstance(raw, list) else [raw]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 127 for v in items):
            errs.add(_line(look, "value" if "value" in look else "velocity", sl),
                     f"state {state!r}: a value is 0-127 (or a list of such values chosen by progress), not {raw!r}.")
            continue
        channel = _channel(look, sl, errs, default=None)
        if "channel" in look and channel is None:
            continue
        out[state] = StateLook(tuple(items), channel)
    return out if len(out) == len(STATES) else None
