"""Real-time playback: a :class:`~livegen.output.mixer.Mixer` inside a sounddevice callback.

The callback only mixes from buffers that were prepared earlier and counts what happened:
clip conversion and copying run on the caller's thread (:meth:`Player.schedule`), and the hand
over is a command on a lock-free deque that the next callback applies. Launch times are frames
on the stream's own clock, quantised to the beat/bar grid of the current tempo.

``sounddevice`` is imported in :meth:`Player.start` (PortAudio scans its host APIs at import,
so a JACK server must already be running by then).
"""

from __future__ import annotations

import threading
import time
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

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()

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
        if status:
            if status.output_underflow:
                self._underflows += 1
                if self._first_underflow_frame < 0:
                    self._first_underflow_frame = self._frame
                self._last_underflow_frame = self._frame
            self._status_flags += 1
        now = time.monotonic()
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
                 launch: str = "bar", sample_rate: int | None = None) -> int:
        """Play ``audio`` [C, N] float32 in ``slot``; returns the start frame.

        ``sample_rate`` is the clip's rate (None: already at the stream rate; otherwise it is
        resampled here). The clip is copied into a voice buffer here, in chunks, before the
        callback sees it; a clip already in ``slot`` is crossfaded out at the start frame.
        """
        if audio.ndim != 2 or audio.shape[1] == 0:
            raise ValueError(f"audio must be [channels, frames] with frames > 0, got {audio.shape}")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            audio = resample(audio, int(sample_rate), self.sample_rate)
        buf = self.mixer.prepare(np.asarray(audio, dtype=np.float32))
        with self._lock:
            start = self.launch_frame(launch)
            self.mixer.schedule(slot, buf, start, loop=loop, gain=gain)
        return start

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

    def set_gain(self, slot: int, gain: float) -> None:
        self.mixer.set_gain(slot, gain)

    def set_bpm(self, bpm: float, beats_per_bar: int | None = None) -> None:
        """Change the tempo; the grid pivots on the current bar so launches stay aligned."""
        if not 20.0 <= bpm <= 400.0:
            raise ValueError(f"bpm must be between 20 and 400, not {bpm!r}")
        with self._lock:
            self._origin = tempo_mod.last_boundary_frame(self._frame, "bar", self._bpm, self._beats_per_bar,
                                                         self.sample_rate, self._origin)
            self._bpm = float(bpm)
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

    def stats(self) -> dict[str, Any]:
        return {
            "callbacks": self._callbacks,
            "frames": self._frame,
            "seconds": self._frame / float(self.sample_rate),
            "underflows": self._underflows,
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
            "running": self.running,
        }
