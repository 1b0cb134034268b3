"""livegen.gc_monitor: every collection is timed through gc.callbacks, per generation."""

from __future__ import annotations

import gc
import time

from livegen import gc_monitor


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycles(n: int) -> None:
    """``n`` garbage cycles of two objects, left for the next collection (automatic ones paused)."""
    gc.disable()
    try:
        for _ in range(n):
            a, b = Node(), Node()
            a.other, b.other = b, a
    finally:
        gc.enable()


def test_collections_are_timed_and_counted():
    mon = gc_monitor.GcMonitor(limit_ms=1e9).install()
    try:
        _cycles(20_000)
        gc.collect(0)
        gc.collect(2)
        st = mon.stats()
    finally:
        mon.uninstall()
    assert st["collections"][0] >= 1 and st["collections"][2] >= 1, st
    assert st["max_pause_ms_by_generation"][2] > 0 and st["total_ms"] > 0, st
    assert st["over_limit"] == 0 and st["last_over_limit"] is None
    assert mon._callback not in gc.callbacks  # uninstalled


def test_a_pause_over_the_limit_is_recorded():
    mon = gc_monitor.GcMonitor(limit_ms=0.0).install()
    try:
        _cycles(5_000)
        gc.collect()
    finally:
        mon.uninstall()
    assert mon.over_limit >= 1
    assert mon.last_over_limit["generation"] == 2 and mon.last_over_limit["collected"] >= 10_000


def test_tune_keeps_the_older_thresholds_and_install_reads_the_frozen_count():
    before = gc.get_threshold()
    try:
        assert gc_monitor.tune(4321)[0] == 4321
        assert gc.get_threshold()[1:] == before[1:]
        keep = [Node() for _ in range(100)]
        gc.freeze()
        mon = gc_monitor.GcMonitor().install()
        mon.uninstall()
        assert mon.frozen >= 100 and mon.stats()["frozen"] == mon.frozen
        del keep
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_forced_collections_run_on_the_loop_at_the_interval(monkeypatch):
    import asyncio
    import threading

    monkeypatch.setenv(gc_monitor.FORCE_ENV, "0.05")
    assert gc_monitor.forced_interval() == 0.05
    for off in ("", "0", "-1", "soon"):
        monkeypatch.setenv(gc_monitor.FORCE_ENV, off)
        assert gc_monitor.forced_interval() is None
    events: list[tuple[str, float, int]] = []

    def seen(phase, info):
        if info["generation"] == 2:
            events.append((phase, time.monotonic(), threading.get_ident()))

    async def main() -> int:
        gc_monitor.collect_every(asyncio.get_running_loop(), 0.05)
        end = time.monotonic() + 20
        while sum(p == "stop" for p, _, _ in events) < 4 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return threading.get_ident()

    gc.callbacks.append(seen)
    try:
        loop_thread = asyncio.run(main())
    finally:
        gc.callbacks.remove(seen)
    stops = [t for p, t, _ in events if p == "stop"]
    starts = [t for p, t, _ in events if p == "start"]
    assert len(stops) >= 4, events
    # each collection begins one interval after the previous one ended (a full collection of a big
    # heap takes its own time), on the loop's thread
    gaps = [b - a for a, b in zip(stops, starts[1:], strict=False)][:3]
    assert all(0.045 <= g < 1.0 for g in gaps), gaps
    assert {th for _, _, th in events} == {loop_thread}
