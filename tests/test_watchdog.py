"""The event-loop watchdog (a stall is reported with the blocking function's stack) and the signal
fallback (SIGTERM ends a process whose loop is stuck, within the grace period)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from livegen.watchdog import Stall, Watchdog

REPO = Path(__file__).resolve().parents[1]


def block_the_loop_for_a_second() -> None:
    time.sleep(1.0)


def test_a_blocked_loop_is_reported_once_with_the_blocking_function_and_its_duration():
    stalls: list[Stall] = []
    recovered: list[Stall] = []

    async def main():
        loop = asyncio.get_running_loop()
        dog = Watchdog(loop, stall_threshold=0.3, on_stall=stalls.append, on_recover=recovered.append).start()
        try:
            await asyncio.sleep(0.2)
            loop.call_soon(block_the_loop_for_a_second)
            await asyncio.sleep(0.1)  # returns right after the blocking callback
            await asyncio.sleep(0.3)  # the watchdog notices the end within a few beats
        finally:
            dog.stop()
        return dog

    dog = asyncio.run(main())
    assert len(stalls) == 1 and len(recovered) == 1 and stalls[0] is recovered[0]
    stall = stalls[0]
    assert "block_the_loop_for_a_second" in stall.stack and "time.sleep(1.0)" in stall.stack
    assert 0.3 < stall.detected_after < 0.6
    assert 0.85 < stall.duration < 1.3
    assert dog.stalls == 1 and dog.longest_stall_s == stall.duration
    assert dog.last_stall_at == pytest.approx(time.time() - 1.5, abs=0.5)
    assert dog.stats()["stalled_now"] is False


def test_a_healthy_loop_reports_no_stall():
    async def main():
        loop = asyncio.get_running_loop()
        dog = Watchdog(loop, stall_threshold=0.2).start()
        try:
            for _ in range(150):
                time.sleep(0.005)  # short work between awaits, as callbacks do
                await asyncio.sleep(0.003)
        finally:
            dog.stop()
        return dog

    dog = asyncio.run(main())
    assert (dog.stalls, dog.longest_stall_s, dog.last_stall_at) == (0, 0.0, None)


def test_a_stall_shorter_than_the_threshold_is_not_reported():
    async def main():
        loop = asyncio.get_running_loop()
        dog = Watchdog(loop, stall_threshold=0.5).start()
        try:
            await asyncio.sleep(0.1)
            time.sleep(0.3)
            await asyncio.sleep(0.2)
        finally:
            dog.stop()
        return dog

    assert asyncio.run(main()).stalls == 0


STUCK = textwrap.dedent(r"""
    import asyncio, sys
    from livegen import watchdog

    def spin_forever():
        while True:
            pass

    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        watchdog.install_signal_fallback(done.set, grace=float(sys.argv[2]))
        print("ready", flush=True)
        if sys.argv[1] == "spin":
            spin_forever()
        elif sys.argv[1] == "c-call":
            import ctypes
            libc = ctypes.CDLL(None)
            mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER
            libc.pthread_mutex_lock(mutex)
            libc.pthread_mutex_lock(mutex)  # a deadlock in C: no Python runs on this thread again
        await done.wait()
        print("stopped cleanly", flush=True)
        watchdog.disarm()

    asyncio.run(main())
""")


def run_and_terminate(mode: str, grace: float = 2.0, sig: int = signal.SIGTERM) -> tuple[int, float, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", STUCK, mode, str(grace)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)  # the loop is stuck by now
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        return proc.returncode, time.monotonic() - t0, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_ends_a_process_whose_loop_is_stuck_in_python_within_the_grace():
    rc, elapsed, out, err = run_and_terminate("spin")
    assert rc == 128 + signal.SIGTERM
    assert elapsed < 2.5
    assert "livegen: the shutdown did not finish within 2 s after SIGTERM; ending the process now." in err
    assert "spin_forever" in err  # the stuck loop's stack
    assert "stopped cleanly" not in out


def test_sigint_ends_a_process_stuck_in_a_c_call_through_the_wakeup_pipe():
    rc, elapsed, _out, err = run_and_terminate("c-call", grace=1.0, sig=signal.SIGINT)
    assert rc == 128 + signal.SIGINT
    assert elapsed < 1.5
    assert "within 1 s after SIGINT" in err


def test_a_healthy_loop_stops_normally_on_sigterm():
    rc, elapsed, out, err = run_and_terminate("healthy")
    assert (rc, out.splitlines()[-1]) == (0, "stopped cleanly"), err
    assert elapsed < 1.5
    assert "ending the process" not in err
