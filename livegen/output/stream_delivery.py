"""The daemon's streaming sink: a job's chunks into a player voice while the job is generated.

:class:`StreamDelivery` is the :class:`~livegen.output.stream_sink.ChunkSink` the daemon gives an
uncached play request. Its methods run on the thread that produces the chunks (the generation
thread); the event loop only creates it, asks for its stats and stops it.

- **Resampling** is chunk-wise with ``soxr.ResampleStream`` (very high quality, the same filter as
  :func:`livegen.audio_io.resample`): its output continues exactly across chunks and equals the
  one-shot resample of the whole clip. The frames written are kept: they are the slot's clip for a
  re-trigger and a loop's buffer, so what sounds again is what sounded.
- **When it starts**: at the first launch point of the request (``now``/``beat``/``bar``) that the
  stream can fill without running dry. The production rate (model frames per second of wall time)
  is remembered from the last streams of the same model (a running mean), so a warm daemon can
  decide on the first chunk; a model's first stream waits for ``MEASURE_CHUNKS`` chunks, and from
  then on every stream uses its own rate (between its 2nd and last chunk). With ``r`` that rate,
  ``n`` the frames still to come and ``N`` the clip, the voice must start
  ``max(0, SAFETY * n / r - N / rate + MARGIN_SECONDS)`` from now at the earliest (0: the
  request's launch point, as a buffered clip would get it), and not before ``MARGIN_SECONDS`` of
  audio are buffered. A start further ahead than the next chunk is not committed: the next chunk
  decides again, knowing more. If the estimate misses, the voice plays silence until data arrives
  (the player's StreamVoice counts each miss) and the misses are in ``stats()``.
- **Loops**: the first pass is the stream; at its end the finished clip is written once more after
  it (and a little of its head), and a looping buffer voice is scheduled on the frame where that
  next pass begins. The player crossfades the stream voice out and the loop in over its fade, with
  the same samples on both sides (equal-gain ramps), so the seam is exact. The buffer voice is
  scheduled ``HANDOVER_SECONDS`` before that frame (``defer``), not at once: the rtmixer player
  reads the crossfade's tail from what its feeder has already placed in the stream voice's ring.
- **Stop**: ``stop()`` (event loop) silences the slot through the player at once (within one period
  plus the fade) and makes every later call a no-op; the daemon cancels the job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livegen import tempo as tempo_mod
from livegen.audio_io import match_channels, resampled_length

log = logging.getLogger("livegen.stream")

SAFETY = 1.25  # production is assumed this much slower than measured
MEASURE_CHUNKS = 4  # a model's first stream: its rate is measured from the 2nd to the 4th chunk
MARGIN_SECONDS = 0.1  # plus this much of lead, and buffered at the start (jitter, a GIL stall)
HEAD_SECONDS = 0.05  # a loop's stream carries this much of the next pass's head past the switch
HANDOVER_SECONDS = 0.5  # a loop's buffer voice is scheduled about this long before the pass it takes
MIN_DEFER_SECONDS = 0.1  # and never sooner than this after the stream's last write (the player's
# feeder must have placed the stream's continuation in its ring: the crossfade's tail is read there)


@dataclass
class StreamStats:
    """Counters over all streams of a daemon (``/livegen/status`` -> ``streaming``)."""

    streams: int = 0
    started: int = 0
    finished: int = 0
    stopped: int = 0
    failed: int = 0
    misses: int = 0  # the voices' misses (it would have run dry), summed when each voice ends
    last_lead_seconds: float | None = None  # the lead chosen for the last stream
    last_first_chunk_seconds: float | None = None  # begin -> first chunk of the last stream
    rates: dict[str, float] = field(default_factory=dict)  # model -> measured frames/s (model rate)
    live: list[Any] = field(default_factory=list)  # sinks whose voice may still play (their misses count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sink: Any) -> None:
        with self.lock:
            self.live.append(sink)

    def retire(self, sink: Any) -> None:
        """The sink's voice is over: its misses join the total."""
        with self.lock:
            if sink in self.live:
                self.live.remove(sink)
                self.misses += int(getattr(sink.voice, "misses", 0) or 0)

    def as_dict(self) -> dict[str, Any]:
        for sink in list(self.live):
            if sink.played_out():
                self.retire(sink)
        with self.lock:
            live_misses = sum(int(getattr(s.voice, "misses", 0) or 0) for s in self.live if s.voice is not None)
        return {"streams": self.streams, "started": self.started, "finished": self.finished,
                "stopped": self.stopped, "failed": self.failed, "misses": self.misses + live_misses,
                "active": len(self.live), "last_lead_seconds": self.last_lead_seconds,
                "last_first_chunk_seconds": self.last_first_chunk_seconds,
                "rates": {k: round(v, 1) for k, v in self.rates.items()}}


def lead_seconds(rate: float, remaining: int, total: int, sample_rate: int) -> float:
    """Seconds from now after which a clip of ``total`` frames (``sample_rate``), of which
    ``remaining`` are still to be produced at ``rate`` frames/s, plays without running dry."""
    if remaining <= 0:
        return 0.0
    if not rate > 0:
        return math.inf
    written = (total - remaining) / float(sample_rate)  # at least MARGIN_SECONDS buffered when it starts
    return max(0.0, SAFETY * remaining / rate - total / float(sample_rate) + MARGIN_SECONDS, MARGIN_SECONDS - written)


def launch_at_or_after(player: Any, frame: int, launch: str) -> int:
    """The first ``launch`` point (now/beat/bar of the player's grid) at or after ``frame``; never
    earlier than ``player.launch_frame(launch)`` (what a buffered clip launched now would get)."""
    earliest = int(player.launch_frame(launch))
    if frame <= earliest:
        return earliest
    if launch not in ("beat", "bar"):
        return frame
    bpb = int(getattr(player, "beats_per_bar", None) or getattr(player, "_beats_per_bar", 4))
    return tempo_mod.next_launch_frame(frame, launch, float(player.bpm), bpb, int(player.sample_rate),
                                       int(getattr(player, "origin", 0)))


def launch_time_at_or_after(player: Any, t: float, launch: str) -> float:
    """The monotonic time of the first ``launch`` point heard at or after monotonic time ``t``
    (``t`` itself for ``now``, without a player or when the player cannot tell)."""
    if player is None or launch == "now":
        return t
    try:
        frame = int(player.frame_at(t))
        at = launch_at_or_after(player, frame, launch)
        return t + max(0, at - frame) / float(player.sample_rate)
    except Exception:  # noqa: BLE001 - an audio process gone or restarting: no grid to go by
        log.debug("no launch grid for %s", launch, exc_info=True)
        return t


def _block(player: Any) -> int:
    settings = getattr(player, "settings", None)
    return max(1, int(getattr(settings, "blocksize", 256) or 256))


def open_voice(player: Any, slot: int, gain: float, capacity_frames: int) -> Any:
    return player.open_stream(slot, gain=gain, capacity_frames=int(capacity_frames))


def supports_streaming(player: Any) -> bool:
    return player is not None and hasattr(player, "open_stream")


class StreamDelivery:
    """The ChunkSink for one job (see the module docstring)."""

    def __init__(self, player: Any, slot: int, request: Any, stats: StreamStats,
                 on_start: Callable[[int, int], None] | None = None, model_key: str = "",
                 chunk_options: dict[str, Any] | None = None,
                 defer: Callable[[float, Callable[[], None]], None] | None = None,
                 still_owner: Callable[[], bool] | None = None) -> None:
        self.player = player
        self.defer = defer  # (seconds, fn): run fn later off this thread (None: at once, here)
        self.still_owner = still_owner  # False once the slot was stopped or got another clip
        self.slot = int(slot)
        self.request = request
        self.stats = stats
        self.on_start = on_start  # (slot, start frame), called on the producer thread
        self.model_key = model_key or str(getattr(request, "model", ""))
        self.chunk_options = chunk_options or {}
        self.voice: Any = None
        self.job_id: int | None = None
        self.start_frame: int | None = None
        self.audio: np.ndarray | None = None  # at the player's rate, once ended ok: what played
        self.ok: bool | None = None
        self.first_chunk_at: float | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._resampler: Any = None
        self._in_rate = 0
        self._total_in = 0
        self._total_out = 0
        self._written_in = 0
        self._written_out = 0
        self._times: list[tuple[float, int]] = []  # (monotonic, frames in) at each write
        self._chunks: list[np.ndarray] = []
        self._t_begin = 0.0
        stats.streams += 1

    # ---- loop side ----------------------------------------------------------------------
    def stop(self) -> None:
        """Silence now and drop everything that still comes (called on the event loop)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.stats.stopped += 1
        self.player.stop_slot(self.slot)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def started(self) -> bool:
        return self.start_frame is not None

    def played_out(self) -> bool:
        """The voice is over: ended or stopped, and (when it played) past its last streamed frame."""
        if self.ok is None and not self._stopped.is_set():
            return False
        if self.start_frame is None or self.audio is None or self._stopped.is_set():
            return True
        passes = 2 if self.request.loop else 1  # a loop's stream hands over after its second pass at most
        return int(self.player.frame) > self.start_frame + passes * self.audio.shape[1] + 4 * _block(self.player)

    # ---- producer thread: the ChunkSink ---------------------------------------------------
    def begin(self, sample_rate: int, total_frames: int) -> None:
        self._t_begin = time.monotonic()
        self._in_rate = int(sample_rate)
        self._total_in = int(total_frames)
        out_rate = int(self.player.sample_rate)
        self._total_out = resampled_length(self._total_in, self._in_rate, out_rate)
        if self._in_rate != out_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self._in_rate, out_rate, int(self.player.channels),
                                                  dtype="float32", quality="VHQ")
        n = self._total_out
        head = min(n, int(HEAD_SECONDS * out_rate))
        capacity = (3 * n + head if self.request.loop else n) + 4 * _block(self.player)
        if self._stopped.is_set():
            return
        self.voice = open_voice(self.player, self.slot, float(self.request.gain), capacity)
        self.stats.add(self)

    def write(self, chunk: np.ndarray) -> None:
        if self._stopped.is_set() or self.voice is None:
            return
        now = time.monotonic()
        if self.first_chunk_at is None:
            self.first_chunk_at = now
            self.stats.last_first_chunk_seconds = now - self._t_begin
        x = match_channels(np.asarray(chunk, dtype=np.float32), int(self.player.channels))
        self._written_in += x.shape[1]
        self._times.append((now, self._written_in))
        last = self._written_in >= self._total_in
        out = self._resample(x, last)
        self._push(out)
        if not self.started:
            self._maybe_start(now, final=last)
        if self._written_out >= self._total_out and self.audio is None:
            self._finalize()

    def end(self, ok: bool) -> None:
        voice = self.voice
        if voice is None:
            self.ok = False
            return
        if not ok or self._stopped.is_set():
            self.ok = False
            if not ok:
                self.stats.failed += 1
            voice.cancel()
            self.stats.retire(self)
            return
        if self.audio is None:  # the producer wrote fewer frames than announced: padded
            if self._written_in < self._total_in:
                self._push(self._resample(np.zeros((int(self.player.channels), 0), np.float32), True))
            self._finalize()
        self._remember_rate()
        self.ok = True
        self.stats.finished += 1
        rate = self._measured_rate()
        log.info("slot %d: stream written (%d chunks in %.3f s from the first, %s frames/s overall; %d misses so far)",
                 self.slot, len(self._times), self._times[-1][0] - self._times[0][0] if self._times else 0.0,
                 f"{rate:.0f}" if rate is not None else "-", int(getattr(voice, "misses", 0) or 0))

    def _finalize(self) -> None:
        """Every frame is written: close the voice at once (a loop: after its next pass and the
        buffer voice that takes over), so the voice never waits for data that will not come."""
        voice = self.voice
        audio = np.concatenate(self._chunks, axis=1) if self._chunks else np.zeros(
            (int(self.player.channels), 0), np.float32)
        audio = _fit(audio, self._total_out)
        if audio.shape[1] > self._written_out:  # padding of a short stream
            voice.write(audio[:, self._written_out:])
            self._written_out = audio.shape[1]
        self.audio = audio
        if not self.started:
            self._start(launch_at_or_after(self.player, self.player.launch_frame(self.request.launch),
                                           self.request.launch), 0.0)
        if self.request.loop and audio.shape[1] > 0:
            self._continue_loop(voice, audio)
        voice.close()

    # ---- internals ------------------------------------------------------------------------
    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return x
        out = self._resampler.resample_chunk(np.ascontiguousarray(x.T), last=last)
        return np.ascontiguousarray(out.T)

    def _push(self, out: np.ndarray) -> None:
        room = self._total_out - self._written_out
        out = out[:, :max(0, room)]
        if out.shape[1] == 0:
            return
        self._chunks.append(out)
        self._written_out += out.shape[1]
        self.voice.write(out)

    def _measured_rate(self, first: int = 0) -> float | None:
        """Frames per second (model rate) between write ``first`` and the last one."""
        if len(self._times) < first + 2:
            return None
        (t0, w0), (t1, w1) = self._times[first], self._times[-1]
        return (w1 - w0) / (t1 - t0) if t1 > t0 else math.inf

    def _maybe_start(self, now: float, final: bool) -> None:
        """Decide the start with what is known at this chunk: the stream's own rate once it has
        MEASURE_CHUNKS chunks (between its 2nd and last: the first tiles of a stream also compile
        the decoder's kernels), before that the rate of the model's last streams (none: wait).
        A start further ahead than the next chunk (its expected interval, with SAFETY, plus the
        margin) is not committed yet: the next chunk decides again, knowing more, so a stream never
        starts later than its rate needs. Nor is a start that production SAFETY times faster than
        measured would reach after the stream's end (a stream far slower than real time, where
        SAFETY puts the start near or past the last chunk; an end that comes faster, as a decoder's
        flush does): the last chunk starts such a stream at once, so it does not sound later than
        the buffered clip would."""
        remaining = self._total_in - self._written_in
        remembered = self.stats.rates.get(self.model_key)
        if final:
            rate = math.inf
        elif len(self._times) >= MEASURE_CHUNKS:
            rate = self._measured_rate(first=1) or math.inf
        elif remembered:
            rate = remembered
        else:
            return  # measure on the next chunks
        lead = lead_seconds(rate, remaining, self._total_in, self._in_rate)
        if not math.isfinite(lead):
            return
        if not final and lead > remaining / rate / SAFETY:
            # not before the stream would be complete if production ran SAFETY times faster than
            # measured (a decoder's flush at the end comes at once): the last chunk starts it
            return
        sr = int(self.player.sample_rate)
        frame = int(self.player.frame) + int(math.ceil(lead * sr)) if lead > 0 else 0
        frame = launch_at_or_after(self.player, frame, self.request.launch)
        if not final:  # when the next chunk is due: the last interval, or this chunk's length at the rate
            if len(self._times) >= 2:
                gap = self._times[-1][0] - self._times[-2][0]
            else:
                gap = self._times[-1][1] / rate
            if (frame - int(self.player.frame)) / sr > SAFETY * gap + MARGIN_SECONDS:
                return  # the next chunk comes before this start is due
        self._start(frame, lead)

    def _start(self, frame: int, lead: float) -> None:
        if self._stopped.is_set():
            return
        self.start_frame = int(self.voice.start(self.request.launch, at_frame=int(frame)))
        self.stats.started += 1
        self.stats.last_lead_seconds = lead
        rate = self._measured_rate()
        log.info("slot %d: streaming from frame %d (%d frames ahead; lead %.3f s, %d of %d frames in, "
                 "rate %s frames/s)", self.slot, self.start_frame, self.start_frame - int(self.player.frame), lead,
                 self._written_in, self._total_in, f"{rate:.0f}" if rate is not None else "remembered")
        if self.on_start is not None:
            self.on_start(self.slot, self.start_frame)

    def _remember_rate(self) -> None:
        rate = self._measured_rate()
        if rate is not None and math.isfinite(rate) and rate > 0:
            old = self.stats.rates.get(self.model_key)
            self.stats.rates[self.model_key] = rate if old is None else 0.5 * (old + rate)

    def _continue_loop(self, voice: Any, audio: np.ndarray) -> None:
        """Write the next pass(es) after the stream and hand the loop to a buffer voice on the frame
        where a pass begins (the player crossfades identical samples: an exact seam)."""
        n = audio.shape[1]
        # the frame the stream voice really started on (a launch "now" on a silent slot: a block or
        # two after the one asked for): the loop's passes are counted from there
        actual = getattr(self.voice, "started_at", None)
        start = int(actual if actual is not None else self.start_frame or 0)
        guard = int(self.player.frame) + 4 * _block(self.player)
        k = 1
        while start + k * n < guard and k < 2:
            k += 1
        for _ in range(k - 1):
            voice.write(audio)
        head = min(n, int(HEAD_SECONDS * int(self.player.sample_rate)))
        voice.write(audio[:, :head])
        at = start + k * n
        if self.defer is None:
            schedule_at(self.player, self.slot, audio, float(self.request.gain), at)
            return
        sr = float(self.player.sample_rate)
        delay = max(MIN_DEFER_SECONDS, (at - int(self.player.frame)) / sr - HANDOVER_SECONDS)
        self.defer(delay, lambda: self._handover(audio, at))

    def _handover(self, audio: np.ndarray, at: int) -> None:
        """The buffer voice takes the loop over at frame ``at`` (run by ``defer``)."""
        if self._stopped.is_set() or (self.still_owner is not None and not self.still_owner()):
            return
        late = int(self.player.frame) + 2 * _block(self.player) - at
        if late > 0:  # the stream ends before the buffer could join it: a gap, then the loop on its grid
            n = audio.shape[1]
            log.warning("slot %d: the loop's buffer came %d frames late; it resumes on the next pass", self.slot, late)
            at += (late // n + 1) * n
        schedule_at(self.player, self.slot, audio, float(self.request.gain), at)


def schedule_at(player: Any, slot: int, audio: np.ndarray, gain: float, frame: int) -> int:
    """A looping buffer voice in ``slot`` from ``frame`` (audio at the player's rate)."""
    return int(player.schedule(slot, audio, loop=True, gain=gain, launch="now", at_frame=int(frame)))


def _fit(audio: np.ndarray, frames: int) -> np.ndarray:
    have = audio.shape[1]
    if have >= frames:
        return np.ascontiguousarray(audio[:, :frames])
    return np.pad(audio, ((0, 0), (0, frames - have)))
