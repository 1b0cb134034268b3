"""Controller feedback: slot states (:mod:`livegen.slot_states`) lit on the controller's LEDs.

The mapping's ``feedback:`` section (:mod:`livegen.mapping.feedback_spec`) says which LEDs show
which slot and what each state sends. :class:`LedBoard` turns a slot's state into the message of
each of its LEDs and keeps what has to go out:

- de-duplicated: an LED is sent a message only when it differs from the last one it got (the
  rendering progress of a one-value state sends nothing after the first step);
- in order: while the rate allows, every change goes out as it came (idle, queued, rendering,
  playing, idle);
- rate-bounded (:class:`TokenBucket`, ``feedback.rate`` messages a second): when more changes wait
  than may go out, each LED keeps only its newest message, so a flood (every pad's progress, a
  bank of 64 LEDs) never floods the controller and the LEDs end in the right state.

:class:`Feedback` sends from a thread of its own (``livegen-feedback``); the event loop only
records the change (a lock held for microseconds) and wakes it. The thread also opens the MIDI
output (:mod:`livegen.control.midi_out`) when a reloaded mapping brings a feedback section, looks
at the named connections once a second and sends every LED again when a controller came back,
follows mapping reloads (LEDs no longer in the mapping are switched off; ports a
reload names are connected, those it no longer names stay connected until the daemon restarts),
and at close sets every LED to idle before the port closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from livegen.mapping.feedback_spec import FeedbackSpec

log = logging.getLogger("livegen.feedback")

LedKey = tuple[str, int, int]  # (kind, number, group index): one LED
Message = tuple[int, int, int]
CHECK_S = 1.0  # how often named connections are looked at
BURST_S = 0.05  # the bucket holds this many seconds of the rate (at least one message)


class TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, rate * BURST_S)
        self._clock = clock
        self._tokens = self.capacity
        self._t = clock()

    def available(self) -> int:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._t) * self.rate)
        self._t = now
        return int(self._tokens)

    def spend(self, n: int = 1) -> None:
        self._tokens -= n

    def wait_for_one(self) -> float:
        """Seconds until one message may go."""
        return max(0.0, (1.0 - self._tokens) / self.rate)


class LedBoard:
    """What each LED shows and what still has to be sent (not thread-safe: :class:`Feedback` locks)."""

    def __init__(self, spec: FeedbackSpec) -> None:
        self.spec = spec
        self.states: dict[int, tuple[str, float]] = {}  # slot -> (state, progress)
        self.sent: dict[LedKey, Message] = {}
        self.queue: list[tuple[LedKey, Message]] = []
        self.coalesced = 0  # changes dropped because a newer one for the same LED was waiting

    def _leds(self, slot: int) -> list[tuple[LedKey, int]]:
        return [((g.kind, g.numbers[slot], i), i) for i, g in enumerate(self.spec.groups) if 0 <= slot < len(g.numbers)]

    def _last(self, key: LedKey) -> Message | None:
        for k, msg in reversed(self.queue):
            if k == key:
                return msg
        return self.sent.get(key)

    def show(self, slot: int, state: str, progress: float = 0.0) -> None:
        self.states[slot] = (state, progress)
        for key, gi in self._leds(slot):
            msg = self.spec.message(self.spec.groups[gi], slot, state, progress)
            if msg is not None and msg != self._last(key):
                self.queue.append((key, msg))

    def show_all(self, resend: bool = False) -> None:
        """Every LED's current look (idle where the slot has no state); ``resend``: also what was sent."""
        if resend:
            self.sent.clear()
        for slot in range(self.spec.slots()):
            state, progress = self.states.get(slot, ("idle", 0.0))
            self.show(slot, state, progress)

    def replace(self, spec: FeedbackSpec) -> None:
        """A reloaded mapping: LEDs it no longer lights are switched off (velocity or value 0 on
        their group's channel), the others show their slot's state in the new look."""
        keep = {(g.kind, n) for g in spec.groups for n in g.numbers}
        for i, g in enumerate(self.spec.groups):
            for n in g.numbers:
                if (g.kind, n) not in keep:
                    msg = ((0x90 if g.kind == "note" else 0xB0) | g.channel, n, 0)
                    if self._last((g.kind, n, i)) != msg:
                        self.queue.append(((g.kind, n, i), msg))
        self.spec = spec
        self.sent = {k: v for k, v in self.sent.items() if (k[0], k[1]) in keep}
        self.show_all()

    def take(self, budget: int) -> list[Message]:
        """Up to ``budget`` messages to send now, oldest first; when more wait, each LED keeps its newest."""
        if len(self.queue) > budget:
            newest: dict[LedKey, int] = {}
            for i, (key, _) in enumerate(self.queue):
                newest[key] = i
            kept = [item for i, item in enumerate(self.queue) if newest[item[0]] == i]
            self.coalesced += len(self.queue) - len(kept)
            self.queue = [(k, m) for k, m in kept if self.sent.get(k) != m]
        out, self.queue = self.queue[:budget], self.queue[budget:]
        for key, msg in out:
            self.sent[key] = msg
        return [m for _, m in out]


class Feedback:
    """The feedback thread. ``spec()`` is read on the thread (a mapping reload may change it);
    :meth:`on_slot` is the slot states' listener (called on the loop)."""

    def __init__(self, spec: Callable[[], FeedbackSpec | None], make_output: Callable[[FeedbackSpec], Any],
                 connect_of: Callable[[FeedbackSpec], list[str]] | None = None) -> None:
        self._spec_source = spec
        self._make_output = make_output
        self._connect_of = connect_of  # the port names a spec wants connected (a reload may add some)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._board: LedBoard | None = None
        self._bucket: TokenBucket | None = None
        self._slots: dict[int, tuple[str, float]] = {}
        self.output: Any = None
        self.problem: str | None = None  # why there is no output (logged once)
        self._failed_spec: FeedbackSpec | None = None

    # ------------------------------------------------------------------ the loop's side
    def on_slot(self, slot: int, state: Any, progress: float) -> None:
        name = getattr(state, "value", state)
        with self._lock:
            self._slots[slot] = (name, progress)
            if self._board is not None:
                self._board.show(slot, name, progress)
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        out = self.output
        board = self._board
        return {"ports": list(out.port_names) if out is not None else [], "sent": out.sent if out is not None else 0,
                "failed": out.failed if out is not None else 0, "coalesced": board.coalesced if board else 0,
                "waiting": len(board.queue) if board else 0, "problem": self.problem,
                "server_returns": getattr(out, "server_returns", 0) if out is not None else 0}

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> list[str]:
        """Open the output now if the mapping has feedback (start-up: the names are logged); start the thread."""
        self._follow_spec()
        self._thread = threading.Thread(target=self._run, name="livegen-feedback", daemon=True)
        self._thread.start()
        return list(self.output.port_names) if self.output is not None else []

    def close(self, timeout: float = 1.0) -> None:
        """Every LED to idle (as the rate allows within ``timeout``), then the port closes."""
        with self._lock:
            if self._board is not None:
                self._slots.clear()
                self._board.states.clear()
                self._board.show_all()
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout + 0.5)
        out, self.output = self.output, None
        if out is not None:
            out.close()

    # ------------------------------------------------------------------ the thread
    def _follow_spec(self) -> None:
        spec = self._spec_source()
        board = self._board
        if spec is None and board is not None and board.spec.groups:  # the section was removed: LEDs off
            with self._lock:
                board.replace(FeedbackSpec(board.spec.source, 0, [], board.spec.states, rate=board.spec.rate))
            return
        if spec is None or (board is not None and board.spec == spec) or spec == self._failed_spec:
            return
        if self.output is None:
            output = self._make_output(spec)
            try:
                names = output.open()
            except Exception as exc:  # noqa: BLE001 - MidiUnavailable or a broken backend: no feedback
                output.close()
                self._failed_spec = spec
                self.problem = str(exc)
                log.warning("MIDI feedback disabled: %s", exc)
                return
            self.output, self.problem = output, None
            log.info("MIDI feedback (%s) to %s", spec.where(), ", ".join(names) or "no ports yet")
        with self._lock:
            if board is None:
                self._board = LedBoard(spec)
                for slot, (state, progress) in self._slots.items():
                    self._board.states[slot] = (state, progress)
                self._board.show_all()
            else:
                board.replace(spec)
                if self._connect_of is not None and self.output is not None:
                    self.output.want(self._connect_of(spec))
            if self._bucket is None or self._bucket.rate != spec.rate:
                self._bucket = TokenBucket(spec.rate)

    def _run(self) -> None:
        next_check = time.monotonic() + CHECK_S
        deadline: float | None = None
        while True:
            stopping = self._stop.is_set()
            if stopping and deadline is None:
                deadline = time.monotonic() + 1.0
            try:
                if not stopping:
                    self._follow_spec()
                now = time.monotonic()
                if now >= next_check and not stopping:
                    next_check = now + CHECK_S
                    if self.output is not None and self.output.check():
                        with self._lock:
                            if self._board is not None:
                                self._board.show_all(resend=True)
                wait = self._send()
            except Exception:  # noqa: BLE001 - the feedback thread keeps going whatever happens
                log.exception("MIDI feedback failed")
                wait = CHECK_S
            if stopping and (wait is None or time.monotonic() >= (deadline or 0.0)):
                return
            timeout = min(wait if wait is not None else CHECK_S, max(0.0, next_check - time.monotonic()))
            self._wake.wait(timeout if not stopping else min(timeout, 0.01))
            self._wake.clear()

    def _send(self) -> float | None:
        """Send what the rate allows; seconds until more may go (None: nothing waits)."""
        if self.output is None or self._board is None or self._bucket is None:
            return None
        with self._lock:
            messages = self._board.take(self._bucket.available()) if self._board.queue else []
            waiting = bool(self._board.queue)
        for msg in messages:
            self.output.send(msg)
        self._bucket.spend(len(messages))
        return self._bucket.wait_for_one() if waiting else None


def start_feedback(daemon: Any) -> Feedback:
    """The daemon's feedback: the current mapping's section (followed across reloads), the slot
    states as its source, a MIDI output named like the input (``midi.*`` settings)."""
    from livegen.control.midi_out import MidiOutput

    s = daemon.settings.midi

    def connect_of(spec: FeedbackSpec) -> list[str]:
        return [*s.feedback_connect, *spec.connect]

    def make_output(spec: FeedbackSpec) -> MidiOutput:
        return MidiOutput(s.port_name, connect_of(spec), api=s.api, virtual=s.virtual)

    def spec() -> FeedbackSpec | None:
        session = daemon.session
        return session.mapper.feedback if session is not None else None

    feedback = Feedback(spec, make_output, connect_of)
    daemon.slots.listeners.append(feedback.on_slot)
    for slot, (state, progress) in list(daemon.slots.states.items()):
        feedback.on_slot(slot, state, progress)
    feedback.open()
    return feedback
