"""Real-time playback: a :class:`~livegen.output.mixer.Mixer` inside a sounddevice callback.

The callback only mixes from buffers that were prepared earlier and counts what happened:
clip conversion and copying run on the caller's thread (:meth:`Player.schedule`), and the hand
over is a command on a lock-free deque that the next callback applies. Launch times are frames
on the stream's own clock, quantised to the beat/bar grid of the current tempo.

``sounddevice`` is imported in :meth:`Player.start` (PortAudio scans its host APIs at import,
so a JACK server must already be running by then).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from livegen import tempo as tempo_mod
from livegen.audio_io import resample  # clips at another rate (MusicGen: 32 kHz)
from livegen.output.mixer import Mixer
from livegen.output.ringbuffer import RingBuffer
from livegen.settings import AudioSettings, TempoSettings

CLOCK_WINDOW = 16  # callbacks: the stream clock is the earliest of the last ones (see Player.frame_at)


class TempoSource(Protocol):
    bpm: float
    beats_per_bar: int


@dataclass
class SlotClip:
    """What a slot plays, as scheduled (for :meth:`Player.slot_end_frame`): start frame, length in
    frames (0 for a stream voice until it is closed), looping or not."""
    start: int
    length: int
    loop: bool
    stream: Any = None  # the PyStreamVoice of a streaming slot
    buf: np.ndarray | None = None  # (N, C), ungained: for the level meter
    gain: float = 1.0


def window_peak(buf: np.ndarray | None, start: int, end: int, loop: bool) -> float:
    """Peak of ``buf`` (N, C) over clip positions [start, end) (wrapped when ``loop``)."""
    if buf is None or end <= start or buf.shape[0] == 0:
        return 0.0
    n = buf.shape[0]
    if loop:
        s0, e0 = start % n, (start % n) + (end - start)
        if e0 <= n:
            return float(np.abs(buf[s0:e0]).max()) if e0 > s0 else 0.0
        return max(float(np.abs(buf[s0:]).max()), float(np.abs(buf[:min(n, e0 - n)]).max()))
    s0, e0 = max(0, start), min(n, end)
    return float(np.abs(buf[s0:e0]).max()) if e0 > s0 else 0.0


LEVEL_WINDOW_SECONDS = 0.05  # slot_levels: peak of the last 50 ms
STALL_SECONDS = 0.1  # no callback for longer than this while running: the stream stalled


def clip_end_frame(clip: SlotClip, frame: int) -> int | None:
    """The frame where ``clip`` ends seen from ``frame``: a loop's next loop end, a one-shot's end
    (None once it has ended), a stream's end once its producer closed it (None before)."""
    if clip.stream is not None:
        if not clip.stream.closed:
            return None
        clip = SlotClip(clip.start, clip.stream.total_written + clip.stream.padded, False)
    if clip.length <= 0:
        return None
    if not clip.loop:
        end = clip.start + clip.length
        return end if end > frame else None
    if frame < clip.start:
        return clip.start + clip.length
    return clip.start + clip.length * ((frame - clip.start) // clip.length + 1)


class PyStreamVoice:
    """A streaming voice of the Python player (see the contract's StreamVoice): chunks wait in a
    Python queue and move into the voice's :class:`RingBuffer` as it has room (on ``write`` and on
    the player's feed thread), so ``write`` never blocks. A miss is a read that found the ring
    empty before ``close`` (the mixer plays silence there)."""

    def __init__(self, player: Player, slot: int, gain: float, capacity_frames: int) -> None:
        self._player = player
        self.slot = int(slot)
        self.gain = float(gain)
        self.ring = RingBuffer(player.channels, max(1, int(capacity_frames)))
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._pending_frames = 0
        self._lock = threading.Lock()
        self.total_written = 0  # frames accepted by write()
        self.padded = 0  # the Python mixer never pads: a miss is silence inside the block
        self.closed = False
        self.cancelled = False
        self.start_frame: int | None = None

    def write(self, chunk: np.ndarray) -> None:
        if self.closed:
            raise ValueError("the stream voice was closed")
        a = np.asarray(chunk, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != self._player.channels:
            raise ValueError(f"expected a chunk of shape [{self._player.channels}, N], got {a.shape}")
        with self._lock:
            self._pending.append(a)
            self._pending_frames += a.shape[1]
            self.total_written += a.shape[1]
        self.flush()

    def flush(self) -> None:
        """Move queued chunks into the ring as far as it has room (producer side)."""
        with self._lock:
            while self._pending and not self.ring.closed:
                a = self._pending[0]
                n = self.ring.write(a)
                self._pending_frames -= n
                if n < a.shape[1]:
                    self._pending[0] = a[:, n:]
                    return
                self._pending.popleft()
            if self.closed and not self._pending and not self.ring.closed:
                self.ring.close()

    def start(self, launch: str = "now", at_frame: int | None = None) -> int:
        self.flush()
        self.start_frame = self._player._start_stream(self, launch, at_frame)
        return self.start_frame

    @property
    def started_at(self) -> int | None:
        """The frame the voice started on (the mixer starts it exactly where :meth:`start` said)."""
        return self.start_frame

    def close(self) -> None:
        self.closed = True
        self.flush()

    def cancel(self) -> None:
        self.cancelled = True
        self.closed = True
        self._player._cancel_stream(self)

    @property
    def buffered_frames(self) -> int:
        return self.ring.available() + self._pending_frames

    @property
    def misses(self) -> int:
        return self.ring.underflows

    @property
    def done(self) -> bool:
        return self.cancelled or self.ring.finished


class Player:
    def __init__(self, settings: AudioSettings | None = None, tempo: TempoSource | None = None,
                 max_block: int = 8192):
        self.settings = settings or AudioSettings()
        t = tempo or TempoSettings()
        self.sample_rate = int(self.settings.sample_rate)
        self.channels = int(self.settings.channels)
        self._bpm = float(t.bpm)
        self._beats_per_bar = int(t.beats_per_bar)
        self._origin = 0  # frame where the bar grid is anchored
        fade = int(round(self.settings.fade_ms * self.sample_rate / 1000.0))
        self.mixer = Mixer(self.channels, self.settings.voices, max(1, fade), max_block=max_block)
        self._frame = 0
        self._callbacks = 0
        self._underflows = 0
        self._last_underflow_frame = -1
        self._first_underflow_frame = -1
        self._status_flags = 0
        self._stream: Any = None
        self._latency = 0.0  # the stream's output latency (seconds), once it runs
        self._clock: tuple[float, int] | None = None  # (time.monotonic(), frame) at the last callback
        self._offset: float | None = None  # min of (callback time - frame / rate) over CLOCK_WINDOW: frame_at
        self._offsets = [float("inf")] * CLOCK_WINDOW
        self._offset_i = 0
        self._last_underflow_time: float | None = None
        self._slots: dict[int, SlotClip] = {}  # what each slot plays (control side)
        self._streams: list[PyStreamVoice] = []
        self._feed_thread: threading.Thread | None = None
        self._feed_stop = threading.Event()
        self._lock = threading.Lock()  # serialises control-thread calls, never taken by the callback

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open and start the output stream on ``settings.device``."""
        if self._stream is not None:
            return
        import sounddevice as sd

        latency = self.settings.latency
        stream = sd.OutputStream(
            samplerate=self.sample_rate,
            blocksize=self.settings.blocksize,
            device=self.settings.device,
            channels=self.channels,
            dtype="float32",
            latency=latency,
            callback=self.callback,
        )
        stream.start()
        try:
            self._latency = float(stream.latency)
        except (TypeError, ValueError):
            self._latency = 0.0
        self._stream = stream

    def close(self, timeout: float = 1.0) -> None:
        """Stop and close the stream; never waits longer than ``timeout`` (a dead JACK server can
        hang PortAudio's stop: it is then left to a helper thread)."""
        self._feed_stop.set()
        stream, self._stream = self._stream, None
        if stream is None:
            return

        def stop() -> None:
            try:
                stream.stop()
            finally:
                stream.close()

        t = threading.Thread(target=stop, name="livegen-stream-close", daemon=True)
        t.start()
        t.join(max(0.0, timeout))

    def __enter__(self) -> Player:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    # ------------------------------------------------------------------ audio thread
    def callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """The sounddevice callback: mix one block, advance the clock, count problems."""
        now = time.monotonic()
        if status:
            if status.output_underflow:
                self._underflows += 1
                if self._first_underflow_frame < 0:
                    self._first_underflow_frame = self._frame
                self._last_underflow_frame = self._frame
                self._last_underflow_time = now
            self._status_flags += 1
        i = self._offset_i
        self._offsets[i] = now - self._frame / self.sample_rate
        self._offset_i = (i + 1) % CLOCK_WINDOW
        self._offset = min(self._offsets)
        self._clock = (now, self._frame)
        self.mixer.mix(outdata, self._frame)
        self._frame += frames
        self._callbacks += 1

    # ------------------------------------------------------------------ control thread
    @property
    def frame(self) -> int:
        """Frames rendered so far (the stream clock)."""
        return self._frame

    @property
    def bpm(self) -> float:
        return self._bpm

    def launch_frame(self, launch: str) -> int:
        """The frame a clip launched now with ``launch`` would start at.

        ``"now"``: the current stream frame, i.e. the first frame of the next callback's block. If a
        callback is running while the command is posted, the mixer applies it one block later and
        starts the clip at that block's first frame, from the clip's own first frame, so nothing is
        cut and the sound starts one period after the trigger at most. ``"beat"``/``"bar"`` keep one
        block of margin so that a boundary is never chosen inside a block being rendered."""
        if launch == "now":
            return self._frame
        now = self._frame + max(1, int(self.settings.blocksize))
        return tempo_mod.next_launch_frame(now, launch, self._bpm, self._beats_per_bar, self.sample_rate,
                                           self._origin)

    def schedule(self, slot: int, audio: np.ndarray, loop: bool = False, gain: float = 1.0,
                 launch: str = "bar", sample_rate: int | None = None, at_frame: int | None = None) -> int:
        """Play ``audio`` [C, N] float32 in ``slot``; returns the start frame.

        ``sample_rate`` is the clip's rate (None: already at the stream rate; otherwise it is
        resampled here). The clip is copied into a voice buffer here, in chunks, before the
        callback sees it; a clip already in ``slot`` is crossfaded out at the start frame.
        ``at_frame`` (a stream frame) overrides ``launch`` (an extension that continues a clip at
        its :meth:`slot_end_frame`); a frame already rendered starts at the next block.
        """
        if audio.ndim != 2 or audio.shape[1] == 0:
            raise ValueError(f"audio must be [channels, frames] with frames > 0, got {audio.shape}")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            audio = resample(audio, int(sample_rate), self.sample_rate)
        buf = self.mixer.prepare(np.asarray(audio, dtype=np.float32))
        with self._lock:
            start = self.launch_frame(launch) if at_frame is None else max(int(at_frame), self._frame)
            self.mixer.schedule(slot, buf, start, loop=loop, gain=gain)
            self._slots[int(slot)] = SlotClip(start, buf.shape[0], bool(loop), buf=buf, gain=float(gain))
        return start

    def open_stream(self, slot: int, gain: float = 1.0, capacity_frames: int | None = None) -> PyStreamVoice:
        """A streaming voice for ``slot`` (written from one producer thread, started later)."""
        cap = int(capacity_frames or self.settings.ring_seconds * self.sample_rate)
        voice = PyStreamVoice(self, slot, gain, cap)
        with self._lock:
            self._streams.append(voice)
            if self._feed_thread is None:
                self._feed_thread = threading.Thread(target=self._feed, name="livegen-feed", daemon=True)
                self._feed_thread.start()
        return voice

    def _feed(self) -> None:
        """Moves queued stream chunks into their rings; ends when no stream voice is left."""
        while not self._feed_stop.wait(0.01):
            for v in list(self._streams):
                v.flush()
                if v.done:
                    with self._lock:
                        if v in self._streams:
                            self._streams.remove(v)
            with self._lock:
                if not self._streams:
                    self._feed_thread = None
                    return

    def _start_stream(self, voice: PyStreamVoice, launch: str, at_frame: int | None) -> int:
        with self._lock:
            start = self.launch_frame(launch) if at_frame is None else max(int(at_frame), self._frame)
            self.mixer.stream(voice.slot, voice.ring, start, voice.gain)
            self._slots[voice.slot] = SlotClip(start, 0, False, stream=voice, gain=voice.gain)
        return start

    def _cancel_stream(self, voice: PyStreamVoice) -> None:
        with self._lock:
            clip = self._slots.get(voice.slot)
            if clip is not None and clip.stream is voice:
                self.mixer.stop(voice.slot, None)
                del self._slots[voice.slot]
            voice.ring.close()

    def slot_end_frame(self, slot: int) -> int | None:
        """The frame where ``slot``'s clip ends (a loop: its next loop end); None when silent."""
        clip = self._slots.get(int(slot))
        return None if clip is None else clip_end_frame(clip, self._frame)

    def stream(self, slot: int, gain: float = 1.0, launch: str = "now",
               seconds: float | None = None) -> RingBuffer:
        """Open a streaming voice in ``slot``: write [C, N] chunks into the returned ring buffer
        (``write_all``) and ``close()`` it at the end."""
        cap = int((seconds or self.settings.ring_seconds) * self.sample_rate)
        ring = RingBuffer(self.channels, max(cap, 1))
        with self._lock:
            self.mixer.stream(slot, ring, self.launch_frame(launch), gain)
        return ring

    def stop_slot(self, slot: int | None = None, launch: str = "now") -> None:
        """Fade out ``slot`` (every slot when None), now or on the next beat/bar."""
        with self._lock:
            at = None if launch == "now" else self.launch_frame(launch)
            self.mixer.stop(slot, at)
            for s in ([int(slot)] if slot is not None else list(self._slots)):
                self._slots.pop(s, None)

    def set_gain(self, slot: int, gain: float) -> None:
        self.mixer.set_gain(slot, gain)
        clip = self._slots.get(int(slot))
        if clip is not None:
            clip.gain = float(gain)

    def set_bpm(self, bpm: float, beats_per_bar: int | None = None) -> None:
        """Change the tempo; the grid pivots on the current bar so launches stay aligned."""
        bpm = tempo_mod.check_bpm(bpm)
        with self._lock:
            self._origin = tempo_mod.pivot_origin(self._frame, self._bpm, self._beats_per_bar, self.sample_rate,
                                                  self._origin)
            self._bpm = bpm
            if beats_per_bar is not None:
                self._beats_per_bar = int(beats_per_bar)

    def frame_at(self, t: float) -> int:
        """The stream frame that is heard at monotonic time ``t``: from the callbacks' times and
        frames, the stream's output latency and the nominal rate (approximate to about one block
        until the real-time core stamps the stream clock sample-accurately).

        A callback can run late (the GIL, a loaded machine), never early, so the relation used is
        the smallest ``callback time - frame / rate`` of the last ``CLOCK_WINDOW`` callbacks (93 ms
        at 256 frames): one late callback does not move it, while a lasting step (cycles lost to
        xruns: the frames fall behind the wall clock) and a device running off its nominal rate
        (the JACK dummy driver runs 0.16 % slow) are followed within the window."""
        off = self._offset
        if off is None:
            return self._frame
        return int(round((t - self._latency - off) * self.sample_rate))

    def anchor_bar(self, frame: int) -> None:
        """Re-anchor the bar grid: a bar line falls on ``frame`` (and every bar before and after
        it at the current tempo). Launches decided after this use the new grid."""
        with self._lock:
            self._origin = int(frame)

    @property
    def origin(self) -> int:
        """A frame where a bar line of the current grid falls."""
        return self._origin

    def _slot_meters(self) -> tuple[dict[int, float], dict[int, list[int]]]:
        levels: dict[int, float] = {}
        positions: dict[int, list[int]] = {}
        frame = self._frame
        win = int(LEVEL_WINDOW_SECONDS * self.sample_rate)
        for slot, clip in list(self._slots.items()):
            if clip_end_frame(clip, frame) is None and clip.stream is None:
                continue
            pos = frame - clip.start
            if pos < 0:
                continue
            length = clip.length if clip.stream is None else clip.stream.total_written
            positions[slot] = [pos % length if clip.loop and length else pos, length]
            levels[slot] = window_peak(clip.buf, pos - win, pos, clip.loop) * abs(clip.gain)
        return levels, positions

    def stats(self) -> dict[str, Any]:
        levels, positions = self._slot_meters()
        running = self.running
        clock = self._clock
        stalled = bool(running and clock is not None and time.monotonic() - clock[0] > STALL_SECONDS)
        return {
            "backend": "python",
            "callbacks": self._callbacks,
            "frames": self._frame,
            "seconds": self._frame / float(self.sample_rate),
            "underflows": self._underflows,
            "xruns": self._underflows,
            "last_underflow_time": self._last_underflow_time,
            "slot_levels": levels,
            "slot_positions": positions,
            "stalled": stalled,
            "first_underflow_frame": self._first_underflow_frame,
            "last_underflow_frame": self._last_underflow_frame,
            "status_flags": self._status_flags,
            "voices_active": self.mixer.voices_active,
            "voices_stolen": self.mixer.stolen,
            "clipped_blocks": self.mixer.clipped_blocks,
            "non_finite_blocks": self.mixer.non_finite_blocks,
            "slots_playing": self.mixer.slots_playing(),
            "bpm": self._bpm,
            "origin": self._origin,
            "latency": self._latency,
            "running": running,
        }
