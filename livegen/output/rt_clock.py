"""The stream clock of :class:`~livegen.output.rt_player.RtPlayer` (a base class of it: the
methods that map stream frames to times and back, and read the callback's counters).

Frame ``F`` is heard at stream time ``t0 + (F - base) / rate``. With the exact clock
(:mod:`livegen.output.exact_mixer`) rtmixer's times are frames / rate and that holds exactly.
Without it they are PortAudio's DAC times (on JACK from ``jack_frame_time()``'s estimate): ``t0``
is then re-anchored every STATS_PERIOD from a clock probe (a one-frame silent buffer chained with a
counters fetch: both run in the same block, so the block count meets that block's DAC time), on the
earliest stamp of the last ANCHOR_WINDOW probes. The counters fetch is also the stall detector's
ping (:meth:`StreamClock.callback_silence`, read by the stream guard).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from livegen.output.rt_voices import buffer_action, enqueue_chain, is_done, stats_action

_SILENT = np.zeros((1, 8), np.float32)  # the clock probe's one frame (8: the most channels)
ANCHOR_WINDOW = 12  # clock probes (0.5 s) whose earliest stamp anchors the clock
STATS_PERIOD = 0.04  # seconds between two reads of the callback's counters (also the stall detector's ping)
LOCK_WAIT = 0.2  # seconds the stream guard waits for the player's lock before it judges by the fetch's age


class StreamClock:
    """Needs the player's ``_m`` (the mixer), ``_lock``, ``sample_rate``, ``blocksize``, ``channels``
    and the clock fields RtPlayer.__init__ sets (``_t0``, ``_base``, ``_stream_base``, ...)."""

    @property
    def frame(self) -> int:
        """The stream frame a block rendered now would start at."""
        m = self._m
        if m is None:
            return self._base
        return self._base + int(round((m.time + self._latency - self._t0) * self.sample_rate))

    def _time_of(self, frame: int) -> float:
        """The stream (DAC) time of ``frame``."""
        return self._t0 + (frame - self._base) / self.sample_rate

    def _frame_of(self, t: float) -> int:
        return self._base + int(round((t - self._t0) * self.sample_rate))

    def frame_at(self, t: float) -> int:
        """The stream frame heard at monotonic time ``t`` (PortAudio's stream time is monotonic on
        JACK and CoreAudio; the offset between the two is taken now)."""
        m = self._m
        if m is None:
            return self._base
        if getattr(m, "exact", False) and self._block_clock is not None:  # the blocks' own callback times
            frame, mono, lat = self._block_clock
            return self._stream_base + frame + int(round((t - mono - lat) * self.sample_rate))
        return self._frame_of(m.time + (t - time.monotonic()))

    def _clock_probe(self) -> list[tuple[Any, Any]]:
        """A counters fetch chained with a one-frame silent buffer: both run in the same block, so
        the block count (frames, exact with fixed blocks) meets that block's DAC time."""
        self._stats_act = stats_action()
        self._probe, keep = buffer_action(_SILENT[:, :self.channels], 0.0)
        return [(self._probe, keep), (self._stats_act, None)]

    def _collect_stats(self) -> None:
        """Read the last counters fetch and its clock probe; post the next one every STATS_PERIOD.

        The stream clock is re-anchored at each probe: the frame of the probe's block (blocks
        counted x blocksize) is heard at the probe's DAC time. PortAudio's times on JACK come from
        jack_frame_time()'s estimate, which wanders against the frame count by tens of frames over
        seconds; re-anchoring every quarter second keeps launch times within a few frames."""
        a = self._stats_act
        if a is not None and is_done(self._m, a):
            blocks = int(a.stats.blocks)
            self._callbacks += blocks
            self._blocks_total += blocks
            n = int(a.stats.output_underflows)
            if n:
                self._underflows += n
                self._last_underflow_time = time.monotonic()
                self._last_underflow_frame = self._stream_base + max(0, self._blocks_total - 1) * self.blocksize
            probe_t = float(self._probe.actual_time)
            if probe_t > 0.0 and self._blocks_total > 0:
                if self._clock_exact:
                    base = self._stream_base + (self._blocks_total - 1) * self.blocksize
                    # PortAudio stamps a block when its callback starts, a little after the cycle
                    # did (more on a loaded machine): the earliest stamp of the last probes is the
                    # closest to the cycle's own time
                    self._anchors.append(probe_t - (base - self._stream_base) / self.sample_rate)
                    del self._anchors[:-ANCHOR_WINDOW]
                    recent = self._anchors[-3:]
                    if len(self._anchors) > 3 and min(recent) - min(self._anchors) > (
                            0.5 * self.blocksize / self.sample_rate):
                        self._anchors = recent  # a lasting step (cycles lost to an xrun): followed
                        # within three probes; one late callback (a loaded machine) is not a step
                    self._base = base
                    self._t0 = min(self._anchors) + (base - self._stream_base) / self.sample_rate
                else:
                    self._base = self.frame if self._t0 else self._stream_base
                    self._t0 = probe_t
            self._stats_act = None
            a = None
        if getattr(self._m, "exact", False):
            self._follow_block_clock(self._m)
        now = time.monotonic()
        if a is None and (self._external or now - self._stats_at >= STATS_PERIOD):
            enqueue_chain(self._m, self._clock_probe())
            self._stats_at = self._stats_posted = now

    def callback_silence(self) -> float:
        """Seconds the outstanding counters fetch has waited for the callback (0: none waits).

        The lock is waited for a bounded time: the stream guard must see a stall even while the
        thread that holds the lock is stuck in the audio library (then the fetch's age is the
        answer: its result cannot be read without the lock, rtmixer's result queue has one reader)."""
        if not self._lock.acquire(timeout=LOCK_WAIT):
            return time.monotonic() - self._stats_posted if self._stats_act is not None else 0.0
        try:
            if self._stats_act is None or self._m is None:
                return 0.0
            if is_done(self._m, self._stats_act):
                return 0.0
            return time.monotonic() - self._stats_posted
        finally:
            self._lock.release()

    def _clock_stats(self) -> dict[str, Any]:
        """Which clock starts the voices, and the master safety's counts (exact clock only)."""
        m = self._m
        if m is None or not getattr(m, "exact", False):
            return {"clock": "portaudio", "master_safety": False}
        c = m.counters()
        out = {"clock": "exact", "master_safety": True, "clipped_blocks": c["clipped_blocks"],
               "non_finite_blocks": c["non_finite_blocks"]}
        b = self._block_clock
        if b is not None:  # a block's first frame, the monotonic time it began (the earliest estimate), latency
            out["clock_block"] = [self._stream_base + b[0], b[1], b[2]]
        return out

    def _follow_block_clock(self, m: Any) -> None:
        """The exact clock's (frame, monotonic time) pair, steadied: a callback can only start late,
        so the earliest of the last ANCHOR_WINDOW blocks' (time - frame / rate) is the estimate; a
        lasting step (cycles lost) is followed within three reads, as the PortAudio-time clock does."""
        b = m.block_clock() if hasattr(m, "block_clock") else None
        if b is None:
            return
        frame, mono, lat = b
        self._mono_anchors.append(mono - frame / self.sample_rate)
        del self._mono_anchors[:-ANCHOR_WINDOW]
        recent = self._mono_anchors[-3:]
        if len(self._mono_anchors) > 3 and min(recent) - min(self._mono_anchors) > 0.5 * self.blocksize / self.sample_rate:
            self._mono_anchors = recent
        self._block_clock = (frame, min(self._mono_anchors) + frame / self.sample_rate, lat)
