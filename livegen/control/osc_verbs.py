"""The built-in ``/livegen/...`` OSC address space: addresses and arguments -> :class:`Command`.

:func:`parse` turns a built-in address and its arguments into a :class:`Command`, or raises
:class:`OscArgError` with a sentence for the error reply; it returns None for an address outside
``/livegen/`` (a mapping rule may still claim it). Whole floats are accepted where an int is
expected (Pure Data sends every number as a float, TouchDesigner CHOPs send floats only), and
``launch`` also takes 0/1/2 for now/beat/bar. An empty string or ``default`` as a value restores the
default of the parameters in :data:`RESETTABLE`. Values are typed here; whether a value is
possible for the loaded model is the session's decision (:mod:`livegen.session`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from livegen.limits import BPM_RANGE
from livegen.mapping.events import PARAM_TYPES
from livegen.request import LAUNCHES

PREFIX = "/livegen/"

# Reply / push addresses the daemon sends.
ACK = "/livegen/ack"
GET = "/livegen/get"
PROGRESS = "/livegen/progress"
DONE = "/livegen/done"
ERROR = "/livegen/error"
READY = "/livegen/ready"
STATUS = "/livegen/status"
REPLY_ADDRESSES = (ACK, PROGRESS, DONE, ERROR, READY)

# Parameters a value of "" or "default" restores to the default (the model's, or random seed).
RESETTABLE = ("model", "sampler", "steps", "cfg", "negative_prompt", "seed", "seconds", "bars")
# Single-value addresses (TouchDesigner CHOP export, faders): /livegen/<name> value. The names are
# the session's parameters, plus "bank" (a number or a bank name).
SINGLE_VALUES: dict[str, str] = {**PARAM_TYPES, "bank": "bank"}


class Verb(str, enum.Enum):
    GENERATE = "generate"
    TRIGGER = "trigger"
    STOP = "stop"
    CANCEL = "cancel"
    REROLL = "reroll"
    EXTEND = "extend"
    VARY = "vary"
    SET = "set"
    GET = "get"
    STATUS = "status"
    RELOAD = "reload"
    SUBSCRIBE = "subscribe"


class Reset(enum.Enum):
    """The value of a set that restores the parameter's default."""

    DEFAULT = "default"


HELP = (
    "/livegen/generate s:prompt [i:seed] [f:seconds], /livegen/trigger i:slot, /livegen/stop [i:slot], "
    "/livegen/cancel [i:job], /livegen/reroll [i:slot], /livegen/extend i:slot [f:seconds], "
    "/livegen/vary i:slot [f:strength], /livegen/set s:param value, /livegen/get s:param, "
    "/livegen/status, /livegen/reload, /livegen/subscribe [i:port], /livegen/<param> value for "
    + ", ".join(SINGLE_VALUES)
)


class OscArgError(ValueError):
    """The arguments of a built-in address are wrong (the message is the error reply)."""


@dataclass(frozen=True)
class Command:
    """A parsed built-in message; ``values`` holds its typed arguments."""

    verb: Verb
    values: dict[str, Any] = field(default_factory=dict)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 2**63:
        return int(value)
    raise OscArgError(f"{what} must be a whole number, got {_show(value)}.")


def as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OscArgError(f"{what} must be a number, got {_show(value)}.")
    try:
        value = float(value)
    except OverflowError:
        raise OscArgError(f"{what} is too large a number.") from None
    if not math.isfinite(value):
        raise OscArgError(f"{what} must be a finite number, got {value}.")
    return value


def as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise OscArgError(f"{what} must be a string, got {_show(value)}.")
    return value


def as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no", "1", "0"):
        return value.lower() in ("true", "on", "yes", "1")
    raise OscArgError(f"{what} must be 0 or 1 (or true/false), got {_show(value)}.")


def as_launch(value: Any, what: str) -> str:
    if isinstance(value, str) and value in LAUNCHES:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1, 2):
        return LAUNCHES[int(value)]
    raise OscArgError(f"{what} must be one of {', '.join(LAUNCHES)} (or 0, 1, 2), got {_show(value)}.")


def as_bank(value: Any, what: str) -> int | str:
    if isinstance(value, str):
        if not value:
            raise OscArgError("bank must be a bank number or name, got an empty string.")
        return value
    return as_int(value, what)


_CONVERT = {"int": as_int, "float": as_float, "str": as_str, "bool": as_bool, "launch": as_launch,
            "bank": as_bank}


def convert_value(name: str, value: Any, types: dict[str, str] | None = None) -> Any:
    """Type a value for parameter ``name`` (``types``: the mapping's parameter types, which add
    custom parameters); returns :data:`Reset.DEFAULT` for ``""`` / ``"default"`` where allowed."""
    kinds = {**SINGLE_VALUES, **(types or {}), "bank": "bank"}
    kind = kinds.get(name)
    if kind is None:
        raise OscArgError(f"There is no parameter {name!r}; known: {', '.join(kinds)}.")
    if name in RESETTABLE and isinstance(value, str) and value.strip().lower() in ("", "default"):
        return Reset.DEFAULT
    if name == "bpm":
        bpm = as_float(value, name)
        if not BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
            raise OscArgError(f"The tempo must be between {BPM_RANGE[0]:g} and {BPM_RANGE[1]:g} bpm, not {bpm:g}.")
        return bpm
    return _CONVERT[kind](value, name)


def _count(args: Sequence[Any], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise OscArgError(f"Expected {usage}, got {len(args)} argument(s).")


def join_words(args: Sequence[Any]) -> tuple:
    """Pd and Max split an unquoted prompt at spaces: leading strings are joined back together."""
    words = 0
    while words < len(args) and isinstance(args[words], str):
        words += 1
    if words > 1:
        return (" ".join(args[:words]), *args[words:])
    return tuple(args)


def parse(address: str, args: Sequence[Any], types: dict[str, str] | None = None) -> Command | None:
    """Parse a built-in address; None when ``address`` is not one (the mapper may still match it)."""
    if not address.startswith(PREFIX):
        return None
    verb = address[len(PREFIX):]
    if verb == "generate":
        args = join_words(args)
        _count(args, 1, 3, "/livegen/generate s:prompt [i:seed] [f:seconds]")
        values: dict[str, Any] = {"prompt": as_str(args[0], "prompt")}
        if len(args) > 1:
            seed = as_int(args[1], "seed")
            values["seed"] = seed if seed >= 0 else None  # negative: a random seed
        if len(args) > 2:
            values["seconds"] = as_float(args[2], "seconds")
        return Command(Verb.GENERATE, values)
    if verb == "trigger":
        _count(args, 1, 1, "/livegen/trigger i:slot")
        return Command(Verb.TRIGGER, {"slot": as_int(args[0], "slot")})
    if verb in ("stop", "cancel", "reroll"):
        key = "job" if verb == "cancel" else "slot"
        _count(args, 0, 1, f"/livegen/{verb} [i:{key}]")
        return Command(Verb(verb), {key: as_int(args[0], key) if args else None})
    if verb in ("extend", "vary"):
        key = "seconds" if verb == "extend" else "strength"
        _count(args, 1, 2, f"/livegen/{verb} i:slot [f:{key}]")
        values = {"slot": as_int(args[0], "slot"), key: as_float(args[1], key) if len(args) > 1 else None}
        return Command(Verb(verb), values)
    if verb == "set":
        if len(args) > 2 and args and args[0] in ("prompt", "negative_prompt"):
            args = (args[0], *join_words(args[1:]))
        _count(args, 2, 2, "/livegen/set s:param value")
        name = as_str(args[0], "param")
        return Command(Verb.SET, {"name": name, "value": convert_value(name, args[1], types)})
    if verb == "get":
        _count(args, 1, 1, "/livegen/get s:param")
        name = as_str(args[0], "param")
        kinds = {**SINGLE_VALUES, **(types or {})}
        if name not in kinds:
            raise OscArgError(f"There is no parameter {name!r}; known: {', '.join(kinds)}.")
        return Command(Verb.GET, {"name": name})
    if verb in ("status", "reload"):
        _count(args, 0, 0, f"/livegen/{verb} (no arguments)")
        return Command(Verb(verb))
    if verb == "subscribe":
        _count(args, 0, 1, "/livegen/subscribe [i:port]")
        port = as_int(args[0], "port") if args else None
        if port is not None and not 1 <= port <= 65535:
            raise OscArgError(f"The port must be a whole number from 1 to 65535, not {port}.")
        return Command(Verb.SUBSCRIBE, {"port": port})
    if verb in SINGLE_VALUES or (types and verb in types):
        if verb in ("prompt", "negative_prompt"):
            args = join_words(args)
        _count(args, 1, 1, f"/livegen/{verb} value")
        return Command(Verb.SET, {"name": verb, "value": convert_value(verb, args[0], types)})
    if address in REPLY_ADDRESSES or address in (STATUS, GET):
        raise OscArgError(f"{address} is a reply address the daemon sends, not one it receives.")
    raise OscArgError(f"Unknown address {address}; known: {HELP}.")
