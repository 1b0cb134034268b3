"""Mapping files (YAML) from MIDI/OSC messages to actions.

- :mod:`livegen.mapping.events`: events, the session state, actions, :func:`apply`;
- :mod:`livegen.mapping.schema`: the file format, checked with ``file:line`` errors (with
  :mod:`livegen.mapping.rules`, banks and rules, and :mod:`livegen.mapping.rule_actions`);
- :mod:`livegen.mapping.mapper`: :class:`Mapper`, rules applied to one message at a time;
- :mod:`livegen.mapping.values`: literals and ``{placeholder}`` templates.
"""

from livegen.mapping.events import (
    DEFAULT_PARAMS,
    PARAM_TYPES,
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
    apply,
)
from livegen.mapping.mapper import Mapper, random_seed
from livegen.mapping.schema import ACTIONS, CURVES, MIDI_EVENTS, Bank, MappingError, MappingSpec, Rule

__all__ = [
    "ACTIONS", "CURVES", "DEFAULT_PARAMS", "MIDI_EVENTS", "PARAM_TYPES", "Action", "Bank", "ClockTick",
    "Extend", "Generate", "KnobMoved", "Mapper", "MappingError", "MappingSpec", "MidiEvent", "OscEvent", "Reject",
    "Reroll", "Rule", "SelectBank", "SetParam", "State", "Stop", "Trigger", "Vary", "apply", "random_seed",
]
