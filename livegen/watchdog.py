"""Event-loop watchdog and a signal fallback that ends the process even when the loop is stuck.

:class:`Watchdog`: the loop beats every ``interval`` seconds (``loop.call_later``); a thread of
its own checks the beat. When the loop has not beaten for ``stall_threshold`` seconds (default
0.5), the stall is logged once, with the loop thread's stack at that moment
(``sys._current_frames``), and ``on_stall`` is called on the watchdog's thread; when the loop
beats again, the end is logged with the stall's duration and ``on_recover`` is called (also on
the watchdog's thread: hand it to the loop with ``loop.call_soon_threadsafe``). Counters:
``stalls``, ``longest_stall_s``, ``last_stall_at`` (``time.time()`` of the last stall's start).

:func:`install_signal_fallback`: SIGTERM and SIGINT handlers set with ``signal.signal`` (not
``loop.add_signal_handler``, which runs its handlers on the loop and so never while the loop is
stuck). The first signal schedules ``stop()`` on the loop (``call_soon_threadsafe``) and arms a
timer thread: if the shutdown has not called :func:`disarm` within ``grace`` seconds (default
2), the timer writes one line (and the loop thread's stack) to stderr and ends the process with
``os._exit``. A second signal ends it at once. The signal is also noticed through a wake-up pipe
(``signal.set_wakeup_fd``) read by a thread, so the timer is armed even while the main thread is
stuck inside a C call that does not return to Python; when something else (asyncio's own
``add_signal_handler``) already owns the wake-up fd, it is left alone and only the Python-level
handler arms the timer.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("livegen.watchdog")


def thread_stack(ident: int | None) -> str:
    """The formatted stack of the thread ``ident`` ("" when it does not run)."""
    if ident is None:
        return ""
    frame = sys._current_frames().get(ident)
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


@dataclass
class Stall:
    """One stall of the event loop. ``duration`` is None while it lasts."""

    started_at: float  # time.time() of the last beat before the stall
    detected_after: float  # seconds without a beat when it was noticed
    stack: str  # the loop thread's stack when noticed ("" if it ended before being seen)
    duration: float | None = None


class Watchdog:
    """Checks from another thread that ``loop`` keeps running; see the module docstring.

    ``start()`` must be called on the loop's thread (from a coroutine or callback), or pass
    ``loop_thread`` (a ``threading.get_ident()``) to name it.
    """

    def __init__(
        self,
        loop: Any,
        stall_threshold: float = 0.5,
        on_stall: Callable[[Stall], None] | None = None,
        on_recover: Callable[[Stall], None] | None = None,
        interval: float = 0.05,
        loop_thread: int | None = None,
    ) -> None:
        if stall_threshold <= 0 or interval <= 0:
            raise ValueError("the stall threshold and the beat interval must be positive")
        self.loop = loop
        self.stall_threshold = stall_threshold
        self.interval = min(interval, stall_threshold / 2)
        self.on_stall = on_stall
        self.on_recover = on_recover
        self.stalls = 0
        self.longest_stall_s = 0.0
        self.last_stall_at: float | None = None
        self.current: Stall | None = None
        self._loop_thread = loop_thread
        self._beat_mono = 0.0
        self._beat_wall = 0.0
        self._late: list[float] = []
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the loop's thread
    def start(self) -> Watchdog:
        if self._thread is not None:
            return self
        if self._loop_thread is None:
            self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._beat_mono = 0.0
        self._late.clear()
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="livegen-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self._collect()  # a stall that ended just before the stop


    def stats(self) -> dict[str, Any]:
        return {"stalls": self.stalls, "longest_stall_s": round(self.longest_stall_s, 3),
                "last_stall_at": self.last_stall_at, "stalled_now": self.current is not None}

    def _beat(self) -> None:
        now = time.monotonic()
        if self._beat_mono:
            gap = now - self._beat_mono - self.interval  # how late this beat is
            if gap > self.stall_threshold:
                self._late.append(gap)  # before the beat time: the watchdog reads in that order
        self._beat_mono = now
        self._beat_wall = time.time()
        if not self._stop.is_set():
            self._handle = self.loop.call_later(self.interval, self._beat)

    # the watchdog's thread
    def _watch(self) -> None:
        period = min(self.interval, self.stall_threshold / 4)
        while not self._stop.wait(period):
            self._collect()
            silent = time.monotonic() - self._beat_mono - self.interval
            if self.current is None and silent > self.stall_threshold:
                self._detected(Stall(self._beat_wall, silent, thread_stack(self._loop_thread)))

    def _collect(self) -> None:
        while self._late:  # stalls that have ended
            gap = self._late.pop(0)
            if self.current is None:  # it ended between two looks: no stack to show
                self._detected(Stall(time.time() - gap, gap, ""))
            self._ended(gap)

    def _detected(self, stall: Stall) -> None:
        self.current = stall
        self.stalls += 1
        self.last_stall_at = stall.started_at
        if stall.stack:
            log.warning("the event loop has been blocked for %.2f s; it is running:\n%s",
                        stall.detected_after, stall.stack.rstrip())
        if self.on_stall is not None:
            self._call(self.on_stall, stall)

    def _ended(self, duration: float) -> None:
        stall, self.current = self.current, None
        if stall is None:
            return
        stall.duration = max(duration, stall.detected_after)
        self.longest_stall_s = max(self.longest_stall_s, stall.duration)
        log.warning("the event loop was blocked for %.2f s", stall.duration)
        if self.on_recover is not None:
            self._call(self.on_recover, stall)

    @staticmethod
    def _call(fn: Callable[[Stall], None], stall: Stall) -> None:
        try:
            fn(stall)
        except Exception:  # noqa: BLE001 - a faulty observer must not end the watchdog
            log.exception("a watchdog callback failed")


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------
class SignalFallback:
    """What :func:`install_signal_fallback` installed; ``disarm()`` when the shutdown finished."""

    def __init__(self, stop: Callable[[], None], grace: float, loop: Any, exit_code: int | None,
                 signals: Sequence[int]) -> None:
        self.stop = stop
        self.grace = grace
        self.loop = loop
        self.exit_code = exit_code
        self.signals = tuple(int(s) for s in signals)
        self.signalled: int | None = None  # the first signal received
        self._loop_thread = threading.get_ident()
        self._disarmed = threading.Event()
        self._armed = threading.Lock()
        self._timer: threading.Thread | None = None
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1

    def _install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        r, w = os.pipe()
        os.set_blocking(w, False)
        previous = signal.set_wakeup_fd(w)
        if previous != -1:  # someone (asyncio) owns the wake-up fd: give it back
            signal.set_wakeup_fd(previous)
            os.close(r)
            os.close(w)
            return
        self._wakeup = (r, w)
        threading.Thread(target=self._read_wakeup, args=(r,), name="livegen-signals", daemon=True).start()

    def uninstall(self) -> None:
        """Restore the previous handlers (tests; the daemon keeps them until it exits)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup[1])  # the reader sees end-of-file and closes its end
            self._wakeup = None

    def disarm(self) -> None:
        """The normal shutdown finished: the timer will not end the process."""
        self._disarmed.set()

    # the main thread, between two bytecodes (even while the loop is stuck in Python code)
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signalled is not None:
            self._exit(signum, "a second signal")
        self.signalled = signum
        self._arm(signum)
        try:
            self.loop.call_soon_threadsafe(self.stop)
        except RuntimeError:  # the loop is closed: nothing left to stop
            pass

    # the wake-up pipe's reader thread: sees the signal at C level, even if Python is stuck in C
    def _read_wakeup(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, 64)
                if not data:
                    return
                for signum in data:
                    if signum in self.signals:
                        self._arm(signum)
        except OSError:
            return
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def _arm(self, signum: int) -> None:
        with self._armed:
            if self._timer is not None:
                return
            self._timer = threading.Thread(target=self._countdown, args=(signum,), name="livegen-exit-timer",
                                           daemon=True)
            self._timer.start()

    def _countdown(self, signum: int) -> None:
        if not self._disarmed.wait(self.grace):
            self._exit(signum, f"the shutdown did not finish within {self.grace:g} s")

    def _exit(self, signum: int, why: str) -> None:
        name = signal.Signals(signum).name
        # os.write, not logging: the stuck thread may hold the logging lock
        text = f"livegen: {why} after {name}; ending the process now.\n"
        stack = thread_stack(self._loop_thread)
        if stack:
            text += "The event loop's thread was running:\n" + stack
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        os._exit(self.exit_code if self.exit_code is not None else 128 + signum)


_installed: SignalFallback | None = None


def install_signal_fallback(
    stop: Callable[[], None],
    grace: float = 2.0,
    *,
    loop: Any = None,
    exit_code: int | None = None,
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
) -> SignalFallback:
    """Install the SIGTERM/SIGINT handlers (see the module docstring); call on the main thread.

    ``loop`` defaults to the running loop. ``exit_code`` for a forced exit defaults to
    128 + the signal number (143 for SIGTERM, 130 for SIGINT).
    """
    global _installed
    if loop is None:
        import asyncio

        loop = asyncio.get_running_loop()
    if _installed is not None:
        _installed.uninstall()
    fallback = SignalFallback(stop, grace, loop, exit_code, signals)
    fallback._install()
    _installed = fallback
    return fallback


def disarm() -> None:
    """The daemon's shutdown finished: the installed fallback will not end the process."""
    if _installed is not None:
        _installed.disarm()


def bounded_call(fn: Callable[[], Any], timeout: float, name: str = "livegen-bounded") -> bool:
    """Run ``fn()`` on a thread of its own and wait at most ``timeout`` seconds; True if it returned
    (its exceptions are logged, not raised). For calls into native code that a dead peer can hang
    (PortAudio's stream stop with the JACK server gone): the shutdown goes on without them. The
    thread is a daemon thread, so a call that never returns cannot keep the process alive."""
    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - reported, the caller carries on
            log.exception("%s failed", name)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()
