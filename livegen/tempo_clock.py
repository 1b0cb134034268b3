"""Following a host's MIDI clock: tempo, song position and clock loss, from timestamped messages.

Pure and synchronous: :class:`MidiClock` is fed the clock messages with the monotonic time they
arrived (``livegen.control.midi`` stamps them on its polling thread, spacing bursts with
rtmidi's delta times) and returns what changed as small events; it performs no I/O and reads no
clock of its own, so it is tested with synthetic tick times.

- **Tempo**: a least-squares line through the arrival times of the last ``window_beats`` beats
  of ticks (24 per quarter note): ``time = a + b * tick``, bpm = 60 / (24 b). The jitter of each
  tick averages out (a line through 8 beats of ticks with 3 ms of jitter is good to about
  0.01 bpm). The reported tempo changes only when the estimate moves by ``hysteresis_bpm`` or
  four standard errors of the estimate (from the ticks' scatter about the line), whichever is
  more, so a steady clock gives one steady value however jittery its transport, plus once when the window has filled after a
  change (the refined value). A real change is seen within two or three beats: when the last
  ``CHANGE_BEATS`` beats alone disagree with the line before them by more than ``change_bpm`` the
  window restarts from those beats (one beat alone is too noisy: with a JACK period of jitter it
  is only good to about 2 bpm, and a false change would re-pivot the grid). No estimate is made
  from fewer than ``MIN_BEATS`` beats.
  Estimates are made on beat boundaries only (every 24 ticks). Start and Continue restart the
  window too (a host may restart its clock's phase with its transport) but keep the tempo for
  ``HOLD_BEATS`` beats unless the new ticks disagree by more than ``change_bpm``.
- **Position**: the song position in ticks, from the tick count, never from wall time. Start
  sets it to 0, Song Position Pointer to 6 ticks per sixteenth, Continue resumes where it is; the
  next tick after any of them is at that position (MIDI 1.0: the first clock after Start is the
  downbeat) and yields an :class:`Anchor` at that tick's arrival time. While running each beat boundary yields an Anchor
  too (at the line's fitted time, so jitter does not move the grid); ticks while stopped do not
  advance the position.
- **Loss**: :meth:`MidiClock.check` (called periodically) reports :class:`ClockLost` once when
  ticks were arriving and none came for ``timeout`` seconds, unless a Stop came after the last
  tick (a host that stops its transport may stop its clock too); the limit is at least four
  tick spacings, for slow tempi. The next tick reports :class:`ClockBack`; the tempo window
  restarts (the ticks missed are unknown), the last tempo is kept, and the grid runs free until
  the host sends Start, Continue or a Song Position (the position is unknown after a loss).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

TICKS_PER_BEAT = 24
TICKS_PER_SIXTEENTH = 6
BPM_RANGE = (20.0, 400.0)
HOLD_BEATS = 4
MIN_BEATS = 2  # no estimate from fewer beats (one beat of JACK-jittered ticks is good to ~2 bpm only)
CHANGE_BEATS = 2  # a change is the last CHANGE_BEATS beats disagreeing with the line before them


@dataclass(frozen=True)
class TempoUpdate:
    """The tempo to use now (bpm, rounded to 0.01)."""

    bpm: float


@dataclass(frozen=True)
class Anchor:
    """Song position ``beats`` (quarter notes since the song's start) arrived at monotonic time
    ``time``; ``restart`` is true for the first one after Start/Continue/Song Position."""

    time: float
    beats: float
    restart: bool


@dataclass(frozen=True)
class ClockLost:
    sentence: str


@dataclass(frozen=True)
class ClockBack:
    sentence: str


ClockEvent = TempoUpdate | Anchor | ClockLost | ClockBack


class MidiClock:
    """See the module docstring. Feed it with :meth:`tick`, :meth:`start`, :meth:`continue_`,
    :meth:`stop`, :meth:`song_position`; poll :meth:`check` for loss."""

    def __init__(self, window_beats: int = 8, hysteresis_bpm: float = 0.1, change_bpm: float = 1.5,
                 timeout: float = 0.5) -> None:
        if window_beats < 1:
            raise ValueError("window_beats must be at least 1")
        self.window_beats = int(window_beats)
        self.hysteresis_bpm = float(hysteresis_bpm)
        self.change_bpm = float(change_bpm)
        self.timeout = float(timeout)
        self._points: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=self.window_beats * TICKS_PER_BEAT + 1)
        self._n = 0  # ticks seen since the window (re)started
        self._settled = False  # the window has filled since it last restarted
        self._hold = False  # after Start/Continue: keep the tempo until HOLD_BEATS are measured
        self.bpm: float | None = None  # the tempo reported (None: none measured yet)
        self.estimate: float | None = None  # the last raw estimate
        self.running = False
        self.position = 0  # song position in ticks (the position of the next tick while running)
        self._pending = False  # the next tick is a restart point
        self.last_tick: float | None = None
        self._interval = 0.0  # the last spacing of two ticks
        self._stopped_after_tick = False
        self.lost = False
        self.ticks = 0
        self.restarts = 0
        self.losses = 0

    # ------------------------------------------------------------------ messages
    def tick(self, t: float) -> list[ClockEvent]:
        out: list[ClockEvent] = []
        if self.last_tick is not None:
            gap = t - self.last_tick
            if gap > self._gap_limit() and (self.bpm or self._interval):
                self._restart_window()  # a gap: the ticks in it are unknown
                self._interval = 0.0
            elif gap > 0:
                self._interval = gap
        if self.lost:
            self.lost = False
            out.append(ClockBack("The MIDI clock is back."))
        self.last_tick = t
        self._stopped_after_tick = False
        self.ticks += 1
        self._points.append((self._n, t))
        self._n += 1
        on_beat = len(self._points) > 1 and (self._n - 1) % TICKS_PER_BEAT == 0
        if on_beat:
            out.extend(self._estimate())
        if self.running:
            if self._pending or self.position % TICKS_PER_BEAT == 0:
                out.append(Anchor(self._fitted(self._n - 1, t), self.position / TICKS_PER_BEAT, self._pending))
                self._pending = False
            self.position += 1
        return out

    def start(self, t: float | None = None) -> list[ClockEvent]:
        self.position = 0
        return self._resume()

    def continue_(self, t: float | None = None) -> list[ClockEvent]:
        return self._resume()

    def stop(self, t: float | None = None) -> list[ClockEvent]:
        self.running = False
        self._pending = False
        self._stopped_after_tick = True
        return []

    def song_position(self, sixteenths: int, t: float | None = None) -> list[ClockEvent]:
        self.position = max(0, int(sixteenths)) * TICKS_PER_SIXTEENTH
        if self.running:
            self._pending = True
        return []

    def _resume(self) -> list[ClockEvent]:
        self.running = True
        self._pending = True
        self.restarts += 1
        self._restart_window()  # a host may restart its clock's phase with the transport
        self._hold = self.bpm is not None
        return []

    # ------------------------------------------------------------------ loss
    def _gap_limit(self) -> float:
        spacing = 60.0 / (TICKS_PER_BEAT * self.bpm) if self.bpm else self._interval
        return max(self.timeout, 4.0 * spacing)

    def check(self, now: float) -> list[ClockEvent]:
        """Report the loss of a clock that was arriving (once); see the module docstring."""
        if self.lost or self.last_tick is None or self._stopped_after_tick:
            return []
        gap = now - self.last_tick
        if gap <= self._gap_limit():
            return []
        self.lost = True
        self.losses += 1
        self.running = False
        self._restart_window()
        tempo = f" (last tempo {self.bpm:.2f} bpm, kept)" if self.bpm else ""
        return [ClockLost(f"The MIDI clock stopped arriving: no tick for {gap:.1f} s{tempo}.")]

    # ------------------------------------------------------------------ tempo
    def _restart_window(self) -> None:
        self._points.clear()
        self._n = 0
        self._settled = False

    def _fit(self, points: list[tuple[int, float]]) -> tuple[float, float] | None:
        """``(a, b)`` of ``time = a + b * tick`` by least squares; None when degenerate."""
        fit = self._fit_err(points)
        return None if fit is None else fit[:2]

    @staticmethod
    def _fit_err(points: list[tuple[int, float]]) -> tuple[float, float, float] | None:
        """``(a, b, standard error of b)``; None when degenerate."""
        m = len(points)
        if m < 2:
            return None
        mx = sum(p[0] for p in points) / m
        my = sum(p[1] for p in points) / m
        sxx = sum((p[0] - mx) ** 2 for p in points)
        if sxx <= 0:
            return None
        b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
        a = my - b * mx
        if m < 3:
            return a, b, 0.0
        ssr = sum((p[1] - a - b * p[0]) ** 2 for p in points)
        return a, b, (ssr / (m - 2) / sxx) ** 0.5

    def _fitted(self, n: int, t: float) -> float:
        fit = self._fit(list(self._points)) if len(self._points) > TICKS_PER_BEAT else None
        return t if fit is None or fit[1] <= 0 else fit[0] + fit[1] * n

    @staticmethod
    def _bpm(slope: float) -> float | None:
        if slope <= 0:
            return None
        bpm = 60.0 / (TICKS_PER_BEAT * slope)
        return bpm if BPM_RANGE[0] <= bpm <= BPM_RANGE[1] else None

    def _estimate(self) -> list[ClockEvent]:
        points = list(self._points)
        span = CHANGE_BEATS * TICKS_PER_BEAT
        if len(points) > span + TICKS_PER_BEAT:  # a change: the last beats disagree with the line before them
            last = self._fit(points[-span - 1:])
            older = self._fit(points[:-span])
            recent = self._bpm(last[1]) if last else None
            before = self._bpm(older[1]) if older else None
            if recent is not None and before is not None and abs(recent - before) > self.change_bpm:
                kept = points[-span - 1:]
                self._restart_window()
                for _, t in kept:
                    self._points.append((self._n, t))
                    self._n += 1
                points = list(self._points)
        if len(points) <= MIN_BEATS * TICKS_PER_BEAT:
            return []
        fit = self._fit_err(points)
        est = self._bpm(fit[1]) if fit else None
        if est is None:
            return []
        noise = est * fit[2] / fit[1]  # the estimate's standard error (bpm), from the ticks' scatter
        self.estimate = est
        if self._hold:
            if len(points) <= HOLD_BEATS * TICKS_PER_BEAT and abs(est - (self.bpm or est)) <= self.change_bpm:
                return []
            self._hold = False
        full = len(points) == self._points.maxlen
        refine = full and not self._settled
        self._settled = self._settled or full
        step = max(self.hysteresis_bpm, 4.0 * noise)  # a jittery clock needs a wider hysteresis
        if self.bpm is None or abs(est - self.bpm) >= step or (refine and abs(est - self.bpm) >= 0.01):
            self.bpm = round(est, 2)
            return [TempoUpdate(self.bpm)]
        return []

    def stats(self) -> dict[str, object]:
        return {"bpm": self.bpm, "estimate": None if self.estimate is None else round(self.estimate, 3),
                "running": self.running, "position_beats": self.position / TICKS_PER_BEAT, "lost": self.lost,
                "ticks": self.ticks, "restarts": self.restarts, "losses": self.losses}
