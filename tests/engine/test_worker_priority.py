"""The generation thread renders below the event loop's CPU priority (Linux): the loop's replies
must not wait behind a render on a machine with few cores (docs/reliability.md, status latency)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from livegen.engine.worker import DONE, READY, RENDER_NICE, lower_thread_priority
from livegen.request import Request
from tests.engine.test_worker import FakeEngine, make, run

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread nice values are Linux-only")


class NiceEngine(FakeEngine):
    """Records the nice value of the thread that renders, and of a thread started from it."""

    def generate(self, prompt, seconds, **kwargs):
        tid = threading.get_native_id()
        self.render_nice = os.getpriority(os.PRIO_PROCESS, tid)
        child: list[int] = []
        t = threading.Thread(target=lambda: child.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t.start()
        t.join()
        self.child_nice = child[0]
        return super().generate(prompt, seconds, **kwargs)


@linux
def test_the_generation_thread_and_its_threads_render_at_a_lower_priority():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main():
        engine = NiceEngine()
        worker, h = make(engine)
        worker.start()
        await h.wait(READY)
        job, _ = worker.submit(Request("pad", seconds=0.1, steps=1))
        await h.wait(DONE, job.id)
        assert worker.close()
        return engine

    engine = run(main())
    expected = min(19, base + RENDER_NICE)
    assert engine.render_nice == expected and engine.child_nice == expected
    # the loop's own thread keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


@linux
def test_render_nice_zero_keeps_the_priority():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main():
        engine = NiceEngine()
        worker, h = make(engine, render_nice=0)
        worker.start()
        await h.wait(READY)
        job, _ = worker.submit(Request("pad", seconds=0.1, steps=1))
        await h.wait(DONE, job.id)
        assert worker.close()
        return engine

    assert run(main()).render_nice == base


@linux
def test_lower_thread_priority_only_touches_the_calling_thread():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    got: list = []

    def lower():
        got.append(lower_thread_priority(3))
        got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=lower)
    t.start()
    t.join()
    assert got == [min(19, base + 3)] * 2
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_nothing_changes_for_zero_or_off_linux():
    assert lower_thread_priority(0) is None
    if not sys.platform.startswith("linux"):  # macOS: setpriority acts on processes, never called
        assert lower_thread_priority(3) is None
