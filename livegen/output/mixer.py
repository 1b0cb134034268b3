"""A fixed-size voice mixer for the audio callback.

Everything :meth:`Mixer.mix` touches is preallocated: a fixed list of :class:`Voice` objects, a
scratch block and the fade ramps. Clip data is prepared (converted, transposed and copied in
chunks) on the caller's thread by :meth:`Mixer.prepare`; :meth:`Mixer.schedule` and
:meth:`Mixer.stop` only post a small command on a ``collections.deque`` (append/popleft are
atomic in CPython), which ``mix`` applies at the start of the next block. ``mix`` then does
slice copies and in-place ufuncs only: no array is allocated in steady state, no lock is taken.

Timing is in absolute frames of the output stream (``frame_time`` = index of the first frame
of the block). Per slot there is one sounding voice: a new clip in a slot replaces ("chokes")
the old one at its launch frame with a short crossfade.

The output stage is a master safety (``ceiling``, full scale by default): when the sum of the
voices goes past it, the block is clamped to it in place (a hard clip, counted in
``clipped_blocks``; clips are loudness-normalised under a -1 dBTP ceiling upstream, so this
only catches overlapping loud voices and faults). It costs two reductions per block when nothing
clips and two in-place ufuncs more when it clamps, and allocates nothing: ``bench/master_clamp.py``
measured +2 to +3 us per 256-frame stereo block (4 voices, ~20-25 us without it) and +2 to +7 us
when every block clamps, against a 5.8 ms block. NaN/inf in a block (only a stream voice can carry them: ``prepare``
zeroes them) are zeroed first, and counted in ``non_finite_blocks``.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from livegen.output.ringbuffer import RingBuffer

_SCHEDULE, _STREAM, _STOP, _GAIN = 0, 1, 2, 3


class Voice:
    __slots__ = ("active", "slot", "buf", "ring", "length", "start", "loop", "gain", "fade_in",
                 "stop_at", "serial", "end_at")

    def __init__(self) -> None:
        self.active = False
        self.slot = -1
        self.buf: np.ndarray | None = None  # (N, C) float32, C-contiguous
        self.ring: RingBuffer | None = None
        self.length = 0
        self.start = 0
        self.loop = False
        self.gain = 1.0
        self.fade_in = False
        self.stop_at = -1
        self.serial = 0
        self.end_at = -1  # a frame where it ends without a fade (its natural end or a loop boundary)

    def clear(self) -> None:
        self.active = False
        self.buf = None
        self.ring = None
        self.stop_at = -1
        self.end_at = -1


class Mixer:
    def __init__(self, channels: int = 2, voices: int = 16, fade_samples: int = 220, max_block: int = 8192,
                 ceiling: float | None = 1.0):
        if channels < 1 or voices < 1 or max_block < 1:
            raise ValueError("channels, voices and max_block must be positive")
        if ceiling is not None and not ceiling > 0:
            raise ValueError("the ceiling must be positive (or None: no master safety)")
        self.ceiling = None if ceiling is None else float(ceiling)
        self.clipped_blocks = 0  # blocks whose sum went past the ceiling (clamped)
        self.non_finite_blocks = 0  # blocks with NaN/inf in the sum (zeroed, then clamped)
        self.channels = int(channels)
        self.max_block = int(max_block)
        self.fade = max(1, int(fade_samples))
        self.voices = [Voice() for _ in range(int(voices))]
        self._scratch = np.zeros((self.max_block, self.channels), dtype=np.float32)
        t = ((np.arange(self.fade, dtype=np.float64) + 0.5) / self.fade)
        up = 0.5 - 0.5 * np.cos(np.pi * t)
        self._up = np.ascontiguousarray(up.astype(np.float32)[:, None])
        self._down = np.ascontiguousarray(self._up[::-1])
        self._commands: collections.deque = collections.deque()
        self._serial = 0
        self.voices_active = 0
        self.stolen = 0

    # ------------------------------------------------------------------ control thread
    def prepare(self, audio: np.ndarray, chunk_frames: int = 65536) -> np.ndarray:
        """Copy ``audio`` [C, N] into a new (N, channels) float32 buffer, in chunks.

        Mono is duplicated to every channel, extra channels are dropped (a stereo clip on a
        mono stream is averaged). Sleeps between chunks so a long copy does not hold the GIL
        against the audio callback.
        """
        if audio.ndim != 2:
            raise ValueError(f"audio must be [channels, frames], got shape {audio.shape}")
        c_in, n = audio.shape
        if not np.all(np.isfinite(audio)):  # NaN/inf (a diverged model) would poison the whole mix
            audio = np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        out = np.empty((n, self.channels), dtype=np.float32)
        for s in range(0, n, chunk_frames):
            e = min(n, s + chunk_frames)
            if c_in == self.channels:
                out[s:e] = audio[:, s:e].T
            elif c_in == 1:
                out[s:e] = audio[0, s:e, None]
            elif self.channels == 1:
                out[s:e, 0] = audio[:, s:e].mean(axis=0)
            else:
                k = min(c_in, self.channels)
                out[s:e, :k] = audio[:k, s:e].T
                out[s:e, k:] = audio[k - 1, s:e, None]
            time.sleep(0)
        return out

    def schedule(self, slot: int, buffer: np.ndarray, start_frame: int, loop: bool = False,
                 gain: float = 1.0) -> None:
        """Play a prepared ``buffer`` (from :meth:`prepare`) in ``slot`` from ``start_frame``."""
        if buffer.ndim != 2 or buffer.shape[1] != self.channels or buffer.dtype != np.float32:
            raise ValueError("schedule() takes a buffer made by prepare()")
        if not buffer.flags.c_contiguous:
            raise ValueError("the buffer must be C-contiguous (use prepare())")
        self._commands.append((_SCHEDULE, int(slot), buffer, None, int(start_frame), bool(loop), float(gain)))

    def stream(self, slot: int, ring: RingBuffer, start_frame: int, gain: float = 1.0) -> None:
        """Play whatever is written into ``ring`` in ``slot`` from ``start_frame`` (one-shot)."""
        if ring.channels != self.channels:
            raise ValueError(f"the ring has {ring.channels} channels; the mixer has {self.channels}")
        self._commands.append((_STREAM, int(slot), None, ring, int(start_frame), False, float(gain)))

    def stop(self, slot: int | None = None, at_frame: int | None = None) -> None:
        """Fade out ``slot`` (every slot when None) from ``at_frame`` (None: the next block)."""
        self._commands.append((_STOP, -1 if slot is None else int(slot), None, None,
                               -1 if at_frame is None else int(at_frame), False, 0.0))

    def set_gain(self, slot: int, gain: float) -> None:
        self._commands.append((_GAIN, int(slot), None, None, 0, False, float(gain)))

    # ------------------------------------------------------------------ audio thread
    def _free_voice(self) -> Voice:
        best = None
        for v in self.voices:
            if not v.active:
                return v
            if best is None or (v.stop_at >= 0, -v.serial) > (best.stop_at >= 0, -best.serial):
                best = v
        self.stolen += 1
        return best  # type: ignore[return-value]

    def _apply(self, cmd: tuple, frame_time: int) -> None:
        kind, slot, buf, ring, start, loop, gain = cmd
        if kind == _STOP:
            at = frame_time if start < 0 else max(start, frame_time)
            for v in self.voices:
                if v.active and (slot < 0 or v.slot == slot):
                    if v.start >= at:
                        v.clear()
                    elif v.stop_at < 0 or v.stop_at > at:
                        v.stop_at = at
            return
        if kind == _GAIN:
            for v in self.voices:
                if v.active and v.slot == slot:
                    v.gain = gain
            return
        start = max(start, frame_time)
        choked = False
        for v in self.voices:
            if v.active and v.slot == slot:
                if v.start >= start:
                    v.clear()  # a pending clip that never started: drop it
                elif v.stop_at < 0 or v.stop_at > start:
                    if v.ring is None and v.length > 0 and (
                            (not v.loop and v.start + v.length <= start)
                            or (v.loop and (start - v.start) % v.length == 0)):
                        v.end_at = start  # it ends (or wraps) where the new clip starts: a seamless join
                    else:
                        v.stop_at = start
                        choked = True
                else:
                    choked = choked or v.stop_at + self.fade > start
        v = self._free_voice()
        v.clear()
        self._serial += 1
        v.serial = self._serial
        v.slot = slot
        v.buf = buf
        v.ring = ring
        v.length = 0 if buf is None else buf.shape[0]
        v.start = start
        v.loop = loop and v.length > 0
        v.gain = gain
        v.fade_in = choked
        v.active = v.length > 0 or ring is not None

    def mix(self, out: np.ndarray, frame_time: int) -> None:
        """Render the block that starts at ``frame_time`` into ``out`` (frames, channels)."""
        n = out.shape[0]
        if n > self.max_block:
            raise ValueError(f"block of {n} frames exceeds max_block {self.max_block}")
        while self._commands:
            self._apply(self._commands.popleft(), frame_time)
        out.fill(0.0)
        fade = self.fade
        end_t = frame_time + n
        for v in self.voices:
            if not v.active:
                continue
            if v.start >= end_t:
                continue
            a = v.start - frame_time if v.start > frame_time else 0
            b = n
            if v.stop_at >= 0:
                b = min(n, v.stop_at + fade - frame_time)
                if b <= a:
                    v.clear()
                    continue
            if v.end_at >= 0:
                b = min(b, v.end_at - frame_time)
                if b <= a:
                    v.clear()
                    continue
            pos = frame_time + a - v.start  # clip position of block offset a
            k = b - a
            scr = self._scratch
            finished = False
            if v.ring is not None:
                got = v.ring.read_into(scr[:k])
                if v.ring.finished and got < k:
                    finished = True
                np.multiply(scr[:k], v.gain, out=scr[:k])
            elif not v.loop:
                if pos >= v.length:
                    v.clear()
                    continue
                if pos + k >= v.length:
                    k = v.length - pos
                    finished = True
                np.multiply(v.buf[pos:pos + k], v.gain, out=scr[:k])
            else:
                p = pos % v.length
                done = 0
                while done < k:
                    m = min(k - done, v.length - p)
                    np.multiply(v.buf[p:p + m], v.gain, out=scr[done:done + m])
                    done += m
                    p = 0
            if v.fade_in and pos < fade:
                e = min(fade, pos + k)
                np.multiply(scr[:e - pos], self._up[pos:e], out=scr[:e - pos])
            if v.stop_at >= 0:
                s0 = v.stop_at - (frame_time + a)
                if s0 < 0:
                    s0 = 0
                if s0 < k:
                    j0 = frame_time + a + s0 - v.stop_at
                    np.multiply(scr[s0:k], self._down[j0:j0 + k - s0], out=scr[s0:k])
                if frame_time + a + k >= v.stop_at + fade:
                    finished = True
            np.add(out[a:a + k], scr[:k], out=out[a:a + k])
            if finished:
                v.clear()
        c = self.ceiling
        if c is not None:  # the master safety: nothing beyond full scale leaves the mixer
            hi = out.max()
            lo = out.min()
            if not (hi <= c and lo >= -c):  # also true for NaN (every comparison with NaN is false)
                if not (hi == hi and lo == lo and abs(hi) != np.inf and abs(lo) != np.inf):
                    self.non_finite_blocks += 1  # a fault (a stream written with NaN): not the steady state
                    np.nan_to_num(out, copy=False, nan=0.0, posinf=c, neginf=-c)
                self.clipped_blocks += 1
                np.minimum(out, c, out=out)  # (np.clip with out= allocates a temporary block)
                np.maximum(out, -c, out=out)
        active = 0
        for v in self.voices:
            if v.active:
                active += 1
        self.voices_active = active

    def slots_playing(self) -> list[int]:
        """Slots with an active voice (for status; read from the control thread)."""
        return sorted({v.slot for v in self.voices if v.active and v.stop_at < 0})
