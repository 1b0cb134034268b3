"""The checked pieces of a mapping: banks, rules, and the helpers that report ``file:line`` errors."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from livegen.settings import LineDict, LineList

CURVES = ("linear", "exp", "log")
_GENERATE_KEYS = ("prompt", "negative_prompt", "model", "seed", "seconds", "bars", "steps", "cfg",
                  "sampler", "slot", "outputs", "loop", "gain", "launch", "priority")


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
