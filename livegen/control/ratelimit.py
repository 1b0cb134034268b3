"""Rate limits for hostile input: log lines aggregated per key, replies limited per key.

:class:`RateLimitedLog` writes at most one line per key per window (and at most ``burst`` lines
per window over all keys); what it holds back is counted and reported as "N more suppressed" with
the key's next line, or by :meth:`RateLimitedLog.flush`. :class:`PerKeyLimit` allows one event
per key per interval. Both keep a bounded number of keys (oldest dropped first), so a flood from
many source ports cannot grow them without bound.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class _Slot:
    since: float
    held: int = 0


class RateLimitedLog:
    """One log line per key per ``window`` seconds, at most ``burst`` lines per window in all."""

    def __init__(self, logger: logging.Logger, window: float, burst: int = 20, max_keys: int = 256,
                 clock: Clock = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self.written = 0
        self.suppressed = 0
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._burst_since = -float("inf")
        self._burst_count = 0
        self._unkeyed = 0  # held back by the burst limit before their key had a line

    def log(self, level: int, key: Hashable, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Write ``msg % args`` unless ``key`` (or the whole logger) is over its limit."""
        now = self.clock()
        slot = self._slots.get(key)
        if slot is not None and now - slot.since < self.window:
            slot.held += 1
            self.suppressed += 1
            return False
        if now - self._burst_since >= self.window:
            self._burst_since, self._burst_count = now, 0
        if self._burst_count >= self.burst:
            self.suppressed += 1
            if slot is not None:
                slot.held += 1
            else:
                self._unkeyed += 1
            return False
        self._burst_count += 1
        held = slot.held if slot is not None else 0
        self._slots[key] = _Slot(now)
        self._slots.move_to_end(key)
        while len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)
        if held:
            msg += " (%d more like this suppressed)"
            args = (*args, held)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        self.written += 1
        return True

    def flush(self, level: int = logging.WARNING, what: str = "log line") -> None:
        """Report the lines still held back (one line in all), e.g. at shutdown."""
        held = self._unkeyed + sum(slot.held for slot in self._slots.values())
        if held:
            self.logger.log(level, "%d more %s(s) were suppressed by the rate limit", held, what)
        for slot in self._slots.values():
            slot.held = 0
        self._unkeyed = 0


class PerKeyLimit:
    """Allows one event per key per ``interval`` seconds; counts the refused ones."""

    def __init__(self, interval: float, max_keys: int = 4096, clock: Clock = time.monotonic) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self.refused = 0
        self._last: OrderedDict[Hashable, float] = OrderedDict()

    def allow(self, key: Hashable) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.refused += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True
