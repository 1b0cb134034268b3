"""Garbage-collector pauses in the daemon: measured on every collection, and kept short.

A collection runs on whichever thread allocates when a threshold is crossed and holds the GIL
until it ends, so its whole duration is a pause for the event loop (and, with the Python audio
backend, for the audio callback). :class:`GcMonitor` times each one through ``gc.callbacks``
(start/stop, per generation) and keeps counts, the longest pause and how many went over
``limit_ms``; the daemon reports them in its status JSON (``gc``).

:func:`tune` is applied after the start-up freeze (``livegen.daemon.freeze_heap``): the loaded
process (imports, models) is out of the collector's view, so only what was made since is scanned.
Generation 0 runs every ``GEN0_THRESHOLD`` net allocations (700 by default: the loop, the pools
and MLX's Python side allocate far more between two bars than that; a young collection of a few
thousand objects takes well under a millisecond). The older generations are collected at the
default pace; after the freeze a full collection scans only what was made since start-up. In a
12 s storm of generate requests (both models), parameter sets and status queries against the
tiny test models no collection ran at all (tests/integration/test_daemon_gc_pauses.py).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

GEN0_THRESHOLD = 5000
LIMIT_MS = 5.0  # the target: no collection pauses the event loop for longer


def tune(gen0: int = GEN0_THRESHOLD) -> tuple[int, int, int]:
    """Set the collector's thresholds for the daemon (see the module docstring); returns them."""
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(int(gen0), g1, g2)
    return gc.get_threshold()


@dataclass
class GcMonitor:
    """Times every garbage collection of the process (see the module docstring)."""

    limit_ms: float = LIMIT_MS
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    max_pause_ms: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    total_ms: float = 0.0
    over_limit: int = 0
    last_over_limit: dict[str, Any] | None = None  # generation, ms, collected, time.time()
    frozen: int = 0  # objects in the permanent generation at install (counting them walks them all)
    _start: float = 0.0
    _installed: bool = False

    def install(self) -> GcMonitor:
        if not self._installed:
            self.frozen = gc.get_freeze_count()
            gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            try:
                gc.callbacks.remove(self._callback)
            except ValueError:
                pass
            self._installed = False

    # the thread that collects, with the GIL held: keep it tiny
    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        ms = (time.perf_counter() - self._start) * 1000.0
        gen = int(info.get("generation", 0))
        self.collections[gen] += 1
        self.total_ms += ms
        if ms > self.max_pause_ms[gen]:
            self.max_pause_ms[gen] = ms
        if ms > self.limit_ms:
            self.over_limit += 1
            self.last_over_limit = {"generation": gen, "ms": round(ms, 2),
                                    "collected": int(info.get("collected", 0)), "at": time.time()}

    def stats(self) -> dict[str, Any]:
        return {"collections": list(self.collections), "max_pause_ms": round(max(self.max_pause_ms), 3),
                "max_pause_ms_by_generation": [round(x, 3) for x in self.max_pause_ms],
                "total_ms": round(self.total_ms, 1), "limit_ms": self.limit_ms, "over_limit": self.over_limit,
                "last_over_limit": self.last_over_limit, "threshold": list(gc.get_threshold()),
                "frozen": self.frozen}


FORCE_ENV = "LIVEGEN_FORCE_GC_EVERY_S"  # a soak/benchmark hook: a full collection this often


def forced_interval() -> float | None:
    """Seconds between forced full collections (``LIVEGEN_FORCE_GC_EVERY_S``), or None (off).
    bench/rt_soak.py sets it to show that the audio does not care (issue 11's target)."""
    import os

    try:
        every = float(os.environ.get(FORCE_ENV, "") or "nan")
    except ValueError:
        return None
    return every if every > 0 else None


def collect_every(loop: Any, every: float) -> None:
    """A ``gc.collect()`` on ``loop``'s thread every ``every`` seconds (holding the GIL, as a
    collection of the loaded heap would) until the loop closes; timed like any collection."""

    def tick() -> None:
        gc.collect()
        loop.call_later(every, tick)

    loop.call_later(every, tick)
