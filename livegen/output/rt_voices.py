"""The pieces of the rtmixer audio path: actions, voices and an offline driver of rtmixer's C callback.

rtmixer (spatialaudio/python-rtmixer) runs a PortAudio callback written in C that mixes
*actions*: play a buffer, play from a ring buffer, cancel an action at a time. Everything that
makes a livegen voice (gain, fades, crossfades, loops, chokes) is realised here, in Python, on the
data handed over, never in the audio thread:

- A voice (:class:`RtVoice`) is one ``PLAY_RINGBUFFER`` action whose ring is fed with the clip's
  frames already gained and faded, by the feeder seconds ahead (:mod:`livegen.output.feeder`); a
  loop is fed round and round. A short clip fits in its ring and is written whole at once.
- A choke or a stop cuts a voice at a frame: a ``CANCEL`` at that frame, and a ``PLAY_BUFFER`` of
  the voice's next ``fade`` frames multiplied by the fade-out ramp at the same frame (the callback
  computes both offsets from the same time in the same block, so the seam is sample-exact).
- A gain change splices: the old voice is cancelled at a frame and a new voice continues the clip
  from there with a short ramp from the old gain to the new one.

Several actions that must land together (a new voice, the cut of the old one and its tail) are
linked into one chain and written into the action queue as one entry (:func:`enqueue_chain`), so
the callback never sees half of them.

:class:`OfflineMixer` calls rtmixer's own compiled callback without a device, with a stream clock
that advances exactly one frame per frame: the tests compare the C path with the Python reference
mixer (:mod:`livegen.output.mixer`) sample by sample this way.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

RING_SECONDS_MIN = 3.0  # a voice's ring holds at least this much (the feeder keeps LEAD_SECONDS in it)


def ramps(fade: int) -> tuple[np.ndarray, np.ndarray]:
    """The raised-cosine fade-in and fade-out ramps of the reference mixer, (fade, 1) float32."""
    t = (np.arange(fade, dtype=np.float64) + 0.5) / fade
    up = np.ascontiguousarray((0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)[:, None])
    return up, np.ascontiguousarray(up[::-1])


def pow2_at_least(n: int) -> int:
    return 1 << max(4, int(n - 1).bit_length())


# ------------------------------------------------------------------------------------------ actions
def _ffi_lib() -> tuple[Any, Any]:
    from _rtmixer import ffi, lib

    return ffi, lib


def buffer_action(buf: np.ndarray, start: float) -> tuple[Any, Any]:
    """A PLAY_BUFFER action for ``buf`` (N, C) float32 at stream time ``start`` (late: at once)."""
    ffi, lib = _ffi_lib()
    keep = ffi.from_buffer(buf)
    a = ffi.new("struct action*", dict(
        type=lib.PLAY_BUFFER, actual_time=-1.0, requested_time=float(start),
        buffer=ffi.cast("float*", keep), total_frames=int(buf.shape[0]), channels=int(buf.shape[1]),
        mapping=tuple(range(1, buf.shape[1] + 1))))
    return a, (keep, buf)


def ring_action(ring: Any, channels: int, start: float) -> tuple[Any, Any]:
    ffi, lib = _ffi_lib()
    a = ffi.new("struct action*", dict(
        type=lib.PLAY_RINGBUFFER, actual_time=-1.0, requested_time=float(start), ringbuffer=ring._ptr,
        total_frames=lib.ULONG_MAX, channels=int(channels), mapping=tuple(range(1, channels + 1))))
    return a, ring


def cancel_action(target: Any, at: float) -> tuple[Any, Any]:
    """Cancel ``target`` at stream time ``at`` (0: in the next block)."""
    ffi, lib = _ffi_lib()
    return ffi.new("struct action*", dict(type=lib.CANCEL, actual_time=-1.0, requested_time=float(at),
                                         action=target)), None


def stats_action() -> Any:
    ffi, lib = _ffi_lib()
    return ffi.new("struct action*", dict(type=lib.FETCH_AND_RESET_STATS, actual_time=-1.0, requested_time=0.0))


def enqueue_chain(mixer: Any, items: list[tuple[Any, Any]]) -> None:
    """Hand several actions to the callback as one queue entry (it takes a chain whole).

    Each action is registered in the mixer's table with what must stay alive until the callback
    reports it done (rtmixer drops that reference when the action comes back on its result
    queue): buffers are retired to Python, never freed in the audio thread."""
    if not items:
        return
    ffi, _ = _ffi_lib()
    mixer._drain_result_q()
    for (a, _), (b, _) in zip(items, items[1:], strict=False):
        a.next = b
    items[-1][0].next = ffi.NULL
    for a, keep in items:
        mixer._actions[a] = keep
    mixer._temp_action_ptr[0] = items[0][0]
    if mixer._action_q.write(mixer._temp_action_ptr) != 1:
        for a, _ in items:
            mixer._actions.pop(a, None)
        raise RuntimeError("the audio action queue is full")


def is_done(mixer: Any, action: Any) -> bool:
    """True once the callback has finished ``action`` (drains rtmixer's result queue)."""
    mixer._drain_result_q()
    return action not in mixer._actions


# ------------------------------------------------------------------------------------------ offline
class OfflineMixer:
    """rtmixer's compiled callback driven block by block without a device (tests, reference runs).

    Has the parts of ``rtmixer.Mixer`` the player uses (``time``, ``latency``, the action queue
    and table); ``render(n)`` runs the C callback for the next ``n`` frames with the block's DAC
    time equal to its first frame / rate, so a start time lands on exactly its frame."""

    def __init__(self, channels: int, samplerate: int, blocksize: int = 256, qsize: int = 1024) -> None:
        import rtmixer

        ffi, lib = _ffi_lib()
        self._ffi, self._lib = ffi, lib
        self.channels = int(channels)
        self.samplerate = float(samplerate)
        self.blocksize = int(blocksize)
        self.latency = 0.0
        self.active = False
        self._action_q = rtmixer.RingBuffer(ffi.sizeof("struct action*"), qsize)
        self._result_q = rtmixer.RingBuffer(ffi.sizeof("struct action*"), qsize)
        self._state = ffi.new("struct state*", dict(
            input_channels=0, output_channels=self.channels, samplerate=self.samplerate,
            action_q=self._action_q._ptr, result_q=self._result_q._ptr, actions=ffi.NULL))
        self._actions: dict[Any, Any] = {}
        self._temp_action_ptr = ffi.new("struct action**")
        self._ti = ffi.new("double[3]")  # PaStreamCallbackTimeInfo: adc, current, dac
        self.frames = 0
        self.blocks = 0
        self.underflow_next = False  # the next block carries PortAudio's output-underflow flag

    _drain_result_q = __import__("rtmixer").Mixer._drain_result_q

    @property
    def time(self) -> float:
        return self.frames / self.samplerate

    @property
    def actions(self) -> Any:
        self._drain_result_q()
        return self._actions.keys()

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def close(self) -> None:
        self.active = False

    def render(self, n: int | None = None) -> np.ndarray:
        n = int(n or self.blocksize)
        out = np.zeros((n, self.channels), dtype=np.float32)
        t = self.frames / self.samplerate
        self._ti[0] = self._ti[1] = self._ti[2] = t
        flags = 4 if self.underflow_next else 0  # paOutputUnderflow
        self.underflow_next = False
        rc = self._lib.callback(self._ffi.NULL, self._ffi.from_buffer(out), n,
                                self._ffi.cast("struct PaStreamCallbackTimeInfo*", self._ti), flags, self._state)
        if rc != 0:
            raise RuntimeError(f"the rtmixer callback returned {rc}")
        self.frames += n
        self.blocks += 1
        return out


# ------------------------------------------------------------------------------------------ voices
class RtVoice:
    """One sounding clip in a slot: a ring action fed from ``buf`` (clip positions from
    ``offset``), gained and faded as the reference mixer would."""

    def __init__(self, slot: int, buf: np.ndarray, start: int, loop: bool, gain: float, fade_in: bool,
                 up: np.ndarray, offset: int = 0, ramp_from: float | None = None) -> None:
        self.slot = slot
        self.buf = buf
        self.length = int(buf.shape[0])
        self.start = int(start)  # stream frame of timeline position 0
        self.loop = bool(loop)
        self.gain = float(gain)
        self.fade_in = bool(fade_in)
        self.offset = int(offset)  # clip position of timeline position 0 (a spliced voice continues)
        self.ramp_from = ramp_from  # a spliced gain change ramps from this gain over the fade
        self._up = up
        self.written = 0  # timeline frames written into the ring
        self.cut_at: int | None = None  # stream frame where it is cancelled (a stop or a choke)
        self.ring: Any = None
        self.action: Any = None
        self.stream: Any = None  # an RtStreamVoice feeds this voice instead of ``buf``
        self.mirror: np.ndarray | None = None  # a stream voice: its ring's memory (absolute position p at p % size)
        self.data_end = 0  # a stream voice: ring position after the last data placed (silence follows)
        self.approx = False  # ``start`` is an estimate until the callback stamps the action

    @property
    def total(self) -> int | None:
        """Timeline frames in all (None: endless loop or an open stream)."""
        if self.stream is not None:
            return self.stream.total_frames()
        return None if self.loop else max(0, self.length - self.offset)

    def render(self, p: int, n: int) -> np.ndarray:
        """Timeline positions [p, p + n) gained and faded, (m, C) float32 with m <= n (the end)."""
        if self.mirror is not None:  # a stream voice: what was written (already gained and faded)
            size = self.mirror.shape[0]
            n = max(0, min(n, self.data_end - p, size))
            return np.ascontiguousarray(self.mirror[np.arange(p, p + n) % size])
        total = self.total
        if total is not None:
            n = max(0, min(n, total - p))
        q = self.offset + p
        if self.loop:
            idx = (np.arange(q, q + n) % self.length) if n else np.arange(0)
            raw = self.buf[idx]
        else:
            raw = self.buf[q:q + n]
        out = np.multiply(raw, self.gain, dtype=np.float32)  # as the reference mixer: gain, then fades
        fade = self._up.shape[0]
        if p < fade and n:
            e = min(fade, p + n)
            if self.ramp_from is not None:
                g0, g1 = self.ramp_from, self.gain
                r = self._up[p:e]
                out[:e - p] = raw[:e - p] * (g0 + (g1 - g0) * r)
            if self.fade_in:
                np.multiply(out[:e - p], self._up[p:e], out=out[:e - p])
        return np.ascontiguousarray(out)


class RtStreamVoice:
    """A streaming voice (the contract's StreamVoice) on the rtmixer player.

    ``write`` queues chunks in Python (never blocks); the feeder places them in the voice's ring
    (:func:`livegen.output.feeder.feed_stream`: always followed by silence, so the rtmixer action
    never finds its ring empty). A chunk that comes too late to follow the previous one seamlessly
    starts a little ahead of the callback instead, faded in: a miss, counted."""

    def __init__(self, player: Any, slot: int, gain: float, capacity_frames: int) -> None:
        self._player = player
        self.slot = int(slot)
        self.gain = float(gain)
        self.capacity = int(capacity_frames)
        self._pending: collections.deque[np.ndarray] = collections.deque()  # (N, C), gained
        self._pending_frames = 0
        self._lock = threading.Lock()
        self.total_written = 0  # frames accepted by write()
        self.padded = 0  # frames of silence between chunks that came late (misses)
        self.misses = 0
        self.closed = False
        self.cancelled = False
        self.start_frame: int | None = None
        self.voice: RtVoice | None = None

    def write(self, chunk: np.ndarray) -> None:
        if self.closed:
            raise ValueError("the stream voice was closed")
        a = np.asarray(chunk, dtype=np.float32)
        c = self._player.channels
        if a.ndim != 2 or a.shape[0] != c:
            raise ValueError(f"expected a chunk of shape [{c}, N], got {a.shape}")
        data = np.ascontiguousarray(np.multiply(a.T, self.gain, dtype=np.float32))
        with self._lock:
            self._pending.append(data)
            self._pending_frames += data.shape[0]
            self.total_written += data.shape[0]

    def take(self, n: int, hold: int) -> np.ndarray | None:
        """Up to ``n`` queued frames, keeping ``hold`` back unless closed (feeder side)."""
        with self._lock:
            avail = self._pending_frames - (0 if self.closed else hold)
            n = min(n, avail)
            if n <= 0:
                return None
            parts = []
            got = 0
            while got < n:
                a = self._pending[0]
                k = min(n - got, a.shape[0])
                parts.append(a[:k])
                if k == a.shape[0]:
                    self._pending.popleft()
                else:
                    self._pending[0] = a[k:]
                got += k
            self._pending_frames -= n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def queued_frames(self) -> int:
        return self._pending_frames

    def total_frames(self) -> int | None:
        """Frames of the voice's timeline once everything is placed (gaps of misses included)."""
        v = self.voice
        if not self.closed or self._pending_frames or v is None:
            return None
        return v.data_end

    def start(self, launch: str = "now", at_frame: int | None = None) -> int:
        self.start_frame = self._player._start_stream(self, launch, at_frame)
        return self.start_frame

    @property
    def started_at(self) -> int | None:
        """The frame the voice really started on: a launch "now" on a silent slot starts in the next
        callback, one or two blocks after the frame :meth:`start` returned, and its frame is known
        once rtmixer stamped the action (None until then)."""
        return self._player._voice_start(self)

    def close(self) -> None:
        self.closed = True

    def cancel(self) -> None:
        self.cancelled = True
        self.closed = True
        self._player._cancel_stream(self)

    @property
    def buffered_frames(self) -> int:
        v = self.voice
        in_ring = 0
        if v is not None and v.action is not None:
            in_ring = max(0, v.written - int(v.action.done_frames))
        return in_ring + self._pending_frames
