"""Real-time playback with no Python in the audio thread: rtmixer's C callback mixes actions.

:class:`RtPlayer` has the interface of :class:`livegen.output.player.Player` (the Python reference
player). The difference is where the work happens: the audio callback is rtmixer's, compiled C
(``_rtmixer``: it adds buffers and ring buffers into the output at their start times and applies
cancels), so a GIL held by the models, the event loop or a garbage collection cannot delay it.
Every voice is prepared in Python and handed over finished (:mod:`livegen.output.rt_voices`): the
frames gained and faded, crossfades and choke tails computed, loops and long clips fed through
ring buffers by the feeder thread seconds ahead (:mod:`livegen.output.feeder`). Nothing is
allocated or freed by the callback: buffers stay referenced until rtmixer reports their action
done, then Python drops them.

The stream clock (:mod:`livegen.output.rt_clock`): frame ``F`` is heard at stream time
``t0 + (F - base) / rate``; with the exact clock (:mod:`livegen.output.exact_mixer`, livegen's C
callback around rtmixer's) rtmixer's times are frames / rate, so start times land on their frame. A launch ``now`` on a silent slot is queued
for the next callback (offset 0 of its block, as soon as possible) and its frame is read back from
the action's stamp; everything that must meet another action exactly (a choke, a stop, a splice)
is given an explicit frame at least one block ahead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from livegen import tempo as tempo_mod
from livegen.audio_io import resample
from livegen.output.feeder import (
    LEAD_SECONDS,
    STREAM_MARGIN_SECONDS,
    STREAM_SILENCE_SECONDS,
    Feeder,
    feed_clip,
    feed_stream,
)
from livegen.output.mixer import Mixer
from livegen.output.player import LEVEL_WINDOW_SECONDS, TempoSource, window_peak
from livegen.output.rt_clock import StreamClock
from livegen.output.rt_voices import (
    RING_SECONDS_MIN,
    RtStreamVoice,
    RtVoice,
    buffer_action,
    cancel_action,
    enqueue_chain,
    is_done,
    pow2_at_least,
    ramps,
    ring_action,
)
from livegen.output.stream_guard import StreamGuard, abandon_portaudio, close_bounded
from livegen.settings import AudioSettings, TempoSettings

log = logging.getLogger("livegen.audio")

ACTION_QUEUE = 1024  # rtmixer's action and result queues (a power of two)
MASTER_CEILING = 1.0  # the master safety: nothing beyond full scale leaves the callback (as mixer.py)


class RtPlayer(StreamClock):
    def __init__(self, settings: AudioSettings | None = None, tempo: TempoSource | None = None,
                 mixer: Any = None) -> None:
        """``mixer``: an already running rtmixer-like mixer (an :class:`OfflineMixer` in tests);
        None opens an ``rtmixer.Mixer`` on ``settings.device`` in :meth:`start`."""
        self.settings = settings or AudioSettings()
        t = tempo or TempoSettings()
        self.sample_rate = int(self.settings.sample_rate)
        self.channels = int(self.settings.channels)
        self.blocksize = int(self.settings.blocksize) or 256
        self._bpm = float(t.bpm)
        self._beats_per_bar = int(t.beats_per_bar)
        self._origin = 0
        self.fade = max(1, int(round(self.settings.fade_ms * self.sample_rate / 1000.0)))
        self._up, self._down = ramps(self.fade)
        self._prep = Mixer(self.channels, 1, self.fade)  # its prepare(): channel matching, NaN guard
        self._lead = int(LEAD_SECONDS * self.sample_rate)
        self._ring_size = pow2_at_least(max(int(RING_SECONDS_MIN * self.sample_rate), 2 * self._lead))
        self._silence = int(STREAM_SILENCE_SECONDS * self.sample_rate)
        self._margin = max(2 * self.blocksize, int(STREAM_MARGIN_SECONDS * self.sample_rate))
        self._m: Any = mixer
        self._external = mixer is not None
        self._t0 = 0.0  # stream (DAC) time of frame ``_base``: the latest clock probe
        self._base = 0
        self._stream_base = 0  # the frame of this stream's first block (frames go on over a reopen)
        self._blocks_total = 0  # blocks the callback rendered on this stream
        self._clock_exact = int(self.settings.blocksize) > 0  # fixed blocks: frame = blocks x blocksize
        self._last_frame = 0
        self._last_frame_time = time.monotonic()
        self._probe: Any = None
        self._anchors: list[float] = []  # DAC time of the stream's first frame, one per probe
        self._mono_anchors: list[float] = []  # the exact clock: monotonic time of frame 0, one per read
        self._block_clock: tuple[int, float, float] | None = None
        self._latency = 0.0
        self._voices: list[RtVoice] = []  # voices whose action the callback may still hold
        self._slots: dict[int, RtVoice] = {}  # the current voice of each slot
        self._lock = threading.RLock()
        self._feeder: Feeder | None = None
        self._callbacks = 0
        self._underflows = 0
        self._last_underflow_time: float | None = None
        self._last_underflow_frame = -1
        self._stats_act: Any = None
        self._stats_at = 0.0
        self.misses = 0  # voices whose ring ran dry (restarted)
        self.stolen = 0  # clips faded out for a new one past audio.voices
        self.stalled = False  # set by the stream guard
        self.guard: Any = None
        self.stream_errors = 0
        self.ports: list[str] = []  # the JACK ports (empty elsewhere)
        self.on_fault: Any = None  # called (from the guard's thread) with a sentence when the stream fails
        self.on_recover: Any = None
        self.dead_text: str | None = None  # the guard's report of a dead stream (None: its own)
        self._stats_posted = 0.0  # when the outstanding counters fetch was posted (monotonic)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._m is not None:
            if self._external:
                self._m.start()
                self._start_feeder_if_real()
            return
        self._open()
        self._start_feeder_if_real()
        self.guard = StreamGuard(self, self.on_fault, self.on_recover)
        self.guard.start()

    def _start_feeder_if_real(self) -> None:
        if not self._external and self._feeder is None:
            self._feeder = Feeder(self.pump)
            self._feeder.start()

    def _open(self) -> None:
        """Open and start the rtmixer stream and stamp the stream clock (see the module doc)."""
        import rtmixer

        from livegen.output.stream_guard import jack_output_ports, rename_new_ports, set_jack_client_name

        set_jack_client_name(getattr(self.settings, "client_name", None))
        before = jack_output_ports()
        from livegen.output import exact_mixer

        kw = dict(channels=self.channels, samplerate=self.sample_rate, blocksize=self.blocksize,
                  device=self.settings.device, latency=self.settings.latency, qsize=ACTION_QUEUE)
        if exact_mixer.available():  # the exact frame clock and the master safety in C
            m = exact_mixer.ExactMixer(ceiling=MASTER_CEILING, **kw)
        else:
            log.warning("audio: rtmixer's callback without the exact clock (%s): launches land a few frames "
                        "off and the master safety is not applied", exact_mixer.unavailable_reason())
            m = rtmixer.Mixer(**kw)
        m.start()
        self.ports = rename_new_ports(before, self.channels)
        try:
            items = self._clock_probe()
            enqueue_chain(m, items)
            deadline = time.monotonic() + 2.0
            while not is_done(m, self._stats_act) or self._probe.actual_time <= 0.0:
                if time.monotonic() > deadline or not m.active:
                    raise OSError("the audio stream started but its callback never ran")
                time.sleep(0.001)
        except BaseException:
            close_bounded(m, 1.0)
            raise
        with self._lock:
            old = self._m is not None or self._blocks_total > 0
            gap = int((time.monotonic() - self._last_frame_time) * self.sample_rate) if old else 0
            self._stream_base = self._last_frame + gap if old else 0
            self._blocks_total = 0
            self._anchors = []
            self._mono_anchors = []
            self._block_clock = None
            self._latency = float(m.latency)
            self._m = m
            self._voices = []
            self._slots = {}
            self._collect_stats()

    def close(self, timeout: float = 1.0) -> None:
        """Stop feeding and close the stream, in ``timeout`` seconds at most (a dead JACK server can
        hang PortAudio's stop: it is then left to a helper thread)."""
        t_end = time.monotonic() + max(0.0, timeout)
        if self.guard is not None:
            self.guard.stop(max(0.0, t_end - time.monotonic()) / 2)
        if self._feeder is not None:
            self._feeder.stop(max(0.0, t_end - time.monotonic()) / 2)
            self._feeder = None
        m, self._m = self._m, None
        if m is not None and not close_bounded(m, max(0.0, t_end - time.monotonic())):
            log.warning("the audio stream did not close in %.1f s (a dead audio server?); left behind", timeout)
            abandon_portaudio()

    def __enter__(self) -> RtPlayer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        m = self._m
        return m is not None and bool(m.active) and not self.stalled

    # ------------------------------------------------------------------ the grid (the clock: rt_clock.py)
    @property
    def bpm(self) -> float:
        return self._bpm

    @property
    def origin(self) -> int:
        return self._origin

    def launch_frame(self, launch: str) -> int:
        if launch == "now":
            return self.frame
        return tempo_mod.next_launch_frame(self.frame + self.blocksize, launch, self._bpm, self._beats_per_bar,
                                           self.sample_rate, self._origin)

    def _exact_soon(self) -> int:
        """The first frame that a command posted now reaches for sure (one block of margin)."""
        return self.frame + self.blocksize

    def set_bpm(self, bpm: float, beats_per_bar: int | None = None) -> None:
        bpm = tempo_mod.check_bpm(bpm)
        with self._lock:
            self._origin = tempo_mod.pivot_origin(self.frame, self._bpm, self._beats_per_bar, self.sample_rate,
                                                  self._origin)
            self._bpm = bpm
            if beats_per_bar is not None:
                self._beats_per_bar = int(beats_per_bar)

    def anchor_bar(self, frame: int) -> None:
        with self._lock:
            self._origin = int(frame)

    # ------------------------------------------------------------------ voices
    def _new_voice(self, slot: int, buf: np.ndarray, start: int, loop: bool, gain: float, fade_in: bool,
                   offset: int = 0, ramp_from: float | None = None, approx: bool = False,
                   stream: RtStreamVoice | None = None) -> tuple[RtVoice, tuple[Any, Any]]:
        import rtmixer

        v = RtVoice(slot, buf, start, loop, gain, fade_in, self._up, offset=offset, ramp_from=ramp_from)
        memory = np.zeros((self._ring_size, self.channels), np.float32)
        v.ring = rtmixer.RingBuffer(4 * self.channels, buffer=memory)
        v.approx = approx
        if stream is not None:
            v.stream = stream
            v.mirror = memory
            stream.voice = v
            feed_stream(stream, v, self._silence, self._margin, self._up, near=False)  # not yet enqueued: unread
        else:
            feed_clip(v, self._lead)
        # "now" on a silent slot: a time already past, so the next callback starts it at offset 0
        t = self._time_of(start) - (self.blocksize / self.sample_rate if approx else 0.0)
        item = ring_action(v.ring, self.channels, t)
        v.action = item[0]
        return v, item

    def _refine(self, v: RtVoice) -> None:
        if v.approx and v.action is not None and v.action.actual_time > 0.0:
            v.start = self._frame_of(float(v.action.actual_time))
            v.approx = False

    def _cut(self, v: RtVoice, at: int, tail: bool = True) -> list[tuple[Any, Any]]:
        """Actions that end ``v`` at frame ``at`` with a fade-out tail (none if it has not started)."""
        self._refine(v)
        if v.cut_at is not None and v.cut_at <= at:
            return []
        if at <= v.start:
            v.cut_at = v.start
            return [cancel_action(v.action, 0.0)]
        items = []
        if tail:
            data = v.render(at - v.start, self.fade)
            if data.shape[0]:
                np.multiply(data, self._down[:data.shape[0]], out=data)
                items.append(buffer_action(data, self._time_of(at)))
        items.append(cancel_action(v.action, self._time_of(at)))
        v.cut_at = at
        return items

    def _steal_for(self, slot: int, start: int) -> list[tuple[Any, Any]]:
        """``audio.voices`` at most sound at once: a new clip in ``slot`` from ``start`` takes the
        place of the oldest other slot's clip still sounding then, which fades out from ``start``
        (a cut with its tail, never a click; counted in ``voices_stolen``)."""
        order = {id(v): i for i, v in enumerate(self._voices)}  # a slot's voice whose action is done is not here
        others = [v for s, v in self._slots.items()
                  if s != slot and v.cut_at is None and id(v) in order and _sounds_at(v, start)]
        items: list[tuple[Any, Any]] = []
        while others and len(others) + 1 > int(self.settings.voices):
            victim = min(others, key=lambda v: order[id(v)])
            items += self._cut(victim, start)
            self._slots.pop(victim.slot, None)
            others.remove(victim)
            self.stolen += 1
            log.info("voice limit (%d): slot %d's clip fades out for slot %d's", self.settings.voices, victim.slot,
                     slot)
        return items

    def _sounding(self, slot: int) -> list[RtVoice]:
        return [v for v in self._voices if v.slot == slot]

    def schedule(self, slot: int, audio: np.ndarray, loop: bool = False, gain: float = 1.0,
                 launch: str = "bar", sample_rate: int | None = None, at_frame: int | None = None) -> int:
        """Play ``audio`` [C, N] in ``slot`` (see :meth:`Player.schedule`); returns the start frame."""
        if audio.ndim != 2 or audio.shape[1] == 0:
            raise ValueError(f"audio must be [channels, frames] with frames > 0, got {audio.shape}")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            audio = resample(audio, int(sample_rate), self.sample_rate)
        buf = self._prep.prepare(np.asarray(audio, dtype=np.float32))
        with self._lock:
            return self._schedule(int(slot), buf, bool(loop), float(gain), launch, at_frame)

    def _schedule(self, slot: int, buf: np.ndarray, loop: bool, gain: float, launch: str,
                  at_frame: int | None, stream: RtStreamVoice | None = None) -> int:
        playing = [v for v in self._sounding(slot) if v.cut_at is None]
        approx = False
        if at_frame is not None:
            start = max(int(at_frame), self.frame)
        elif launch == "now":
            start = self._exact_soon() if playing else self.frame
            approx = not playing
        else:
            start = self.launch_frame(launch)
        items: list[tuple[Any, Any]] = []
        choked = False
        for old in self._sounding(slot):
            self._refine(old)
            if old.cut_at is None or old.cut_at > start:
                if old.start >= start:
                    items += self._cut(old, start, tail=False)  # pending, never heard: dropped
                elif _ends_at(old, start):  # it ends (or wraps) where the new clip starts: a seamless join
                    if old.loop:
                        items += self._cut(old, start, tail=False)  # cancelled on its loop end, no tail
                else:
                    items += self._cut(old, start)
                    choked = True
            else:
                choked = choked or old.cut_at + self.fade > start
        items += self._steal_for(slot, start)
        v, item = self._new_voice(slot, buf, start, loop, gain, choked, approx=approx, stream=stream)
        enqueue_chain(self._m, [item] + items)
        self._voices.append(v)
        self._slots[slot] = v
        return start

    def open_stream(self, slot: int, gain: float = 1.0, capacity_frames: int | None = None) -> RtStreamVoice:
        cap = int(capacity_frames or self.settings.ring_seconds * self.sample_rate)
        return RtStreamVoice(self, slot, gain, cap)

    def _start_stream(self, sv: RtStreamVoice, launch: str, at_frame: int | None) -> int:
        with self._lock:
            return self._schedule(sv.slot, np.zeros((0, self.channels), np.float32), False, 1.0, launch,
                                  at_frame, stream=sv)

    def _voice_start(self, sv: RtStreamVoice) -> int | None:
        with self._lock:
            v = sv.voice
            if v is None:
                return None
            self._refine(v)
            return None if v.approx else int(v.start)

    def _cancel_stream(self, sv: RtStreamVoice) -> None:
        with self._lock:
            v = sv.voice
            if v is None or v.action is None:
                return
            enqueue_chain(self._m, self._cut(v, self._exact_soon()))
            if self._slots.get(sv.slot) is v:
                del self._slots[sv.slot]

    def stop_slot(self, slot: int | None = None, launch: str = "now") -> None:
        """Fade out ``slot`` (every slot when None), now or on the next beat/bar."""
        with self._lock:
            at = self._exact_soon() if launch == "now" else self.launch_frame(launch)
            items: list[tuple[Any, Any]] = []
            for v in list(self._voices):
                if slot is None or v.slot == int(slot):
                    items += self._cut(v, at)
            if items:
                enqueue_chain(self._m, items)
            for s in ([int(slot)] if slot is not None else list(self._slots)):
                self._slots.pop(s, None)

    def set_gain(self, slot: int, gain: float) -> None:
        """A new gain for ``slot``'s clip: spliced one block ahead with a ramp over the fade length
        (a stream voice: applied to what is written from now on)."""
        gain = float(gain)
        with self._lock:
            v = self._slots.get(int(slot))
            if v is None or v.cut_at is not None or v.gain == gain:
                return
            if v.stream is not None:
                v.stream.gain = gain
                return
            self._refine(v)
            at = max(self._exact_soon(), v.start)
            p = at - v.start
            if v.total is not None and p >= v.total:
                return
            offset = v.offset + p
            if v.loop:
                offset %= v.length
            nv, item = self._new_voice(v.slot, v.buf, at, v.loop, gain, v.fade_in and p == 0, offset=offset,
                                       ramp_from=None if p == 0 else v.gain)
            items = [item] + self._cut(v, at, tail=False)
            enqueue_chain(self._m, items)
            self._voices.append(nv)
            self._slots[v.slot] = nv

    def slot_end_frame(self, slot: int) -> int | None:
        """The frame where ``slot``'s clip ends (a loop: its next loop end); None when silent."""
        with self._lock:
            v = self._slots.get(int(slot))
            if v is None or v.cut_at is not None:
                return None
            self._refine(v)
            now = self.frame
            if v.loop:
                q = v.offset + max(0, now - v.start)
                return v.start + (q // v.length + 1) * v.length - v.offset
            total = v.total
            if total is None:
                return None
            end = v.start + total
            return end if end > now else None

    # ------------------------------------------------------------------ the feeder's pass
    def pump(self) -> None:
        """One pass of the feeder: retire finished voices, restart one whose ring ran dry, top up
        every ring, collect the callback's counters."""
        with self._lock:
            m = self._m
            if m is None:
                return
            now = self.frame
            self._last_frame, self._last_frame_time = now, time.monotonic()
            for v in list(self._voices):
                self._refine(v)
                if is_done(m, v.action):
                    self._voices.remove(v)
                    self._restart_if_dry(v, now)
                    continue
                if v.stream is not None:
                    feed_stream(v.stream, v, self._silence, self._margin, self._up,
                                near=now + self._margin >= v.start)
                else:
                    feed_clip(v, self._lead)
            self._collect_stats()

    def _restart_if_dry(self, v: RtVoice, now: int) -> None:
        done = int(v.action.done_frames)
        total = v.total
        ended = (v.cut_at is not None and now >= v.cut_at) or (total is not None and done >= total)
        if v.stream is not None:
            ended = ended or v.stream.cancelled or (v.stream.closed and v.stream.queued_frames == 0
                                                    and done >= v.written)
        if ended or self._slots.get(v.slot) is not v:
            return
        self.misses += 1
        at = self._exact_soon()
        p = at - v.start
        log.warning("slot %d: its ring ran dry (the feeder was late); restarted at frame %d", v.slot, at)
        if v.stream is not None:
            v.stream.misses += 1
            nv, item = self._new_voice(v.slot, v.buf, at, False, 1.0, False, stream=v.stream)
        else:
            if total is not None and p >= total:
                return
            offset = (v.offset + p) % v.length if v.loop else v.offset + p
            nv, item = self._new_voice(v.slot, v.buf, at, v.loop, v.gain, True, offset=offset)
        enqueue_chain(self._m, [item])
        self._voices.append(nv)
        self._slots[v.slot] = nv

    def detach_stream(self) -> Any:
        """Take the (dead) stream away from the player: the feeder stops touching it."""
        with self._lock:
            m, self._m = self._m, None
            self._voices = []
            self._slots = {}
            self._stats_act = None
            return m

    def reopen(self) -> None:
        """Open a new stream (after a failure); the frame clock goes on from where it was."""
        self._open()

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, Any]:
        with self._lock:
            frame = self.frame
            win = int(LEVEL_WINDOW_SECONDS * self.sample_rate)
            levels: dict[int, float] = {}
            positions: dict[int, list[int]] = {}
            playing = []
            for slot, v in self._slots.items():
                if v.cut_at is not None or v not in self._voices:
                    continue
                p = frame - v.start
                total = v.total
                if p < 0 or (total is not None and p >= total):
                    continue
                playing.append(slot)
                q = v.offset + p
                length = v.length if v.stream is None else (total or v.written)
                positions[slot] = [q % v.length if v.loop else q, length]
                if v.stream is None:
                    levels[slot] = window_peak(v.buf, q - win, q, v.loop) * abs(v.gain)
                else:
                    seen = v.render(max(0, p - win), min(win, p))
                    levels[slot] = float(np.abs(seen).max()) if seen.size else 0.0
            voices = len(self._voices)
        return {
            "backend": "rtmixer",
            "callbacks": self._callbacks,
            "frames": frame,
            "seconds": frame / float(self.sample_rate),
            "underflows": self._underflows,
            "xruns": self._underflows,
            "last_underflow_time": self._last_underflow_time,
            "last_underflow_frame": self._last_underflow_frame,
            "slots_playing": sorted(playing),
            "slot_levels": levels,
            "slot_positions": positions,
            "voices_active": voices,
            "voices_stolen": self.stolen,
            "misses": self.misses,
            "stream_errors": self.stream_errors,
            "ports": list(self.ports),
            "bpm": self._bpm,
            "origin": self._origin,
            "latency": self._latency,
            "running": self.running,
            "stalled": bool(self.stalled),
            **self._clock_stats(),
        }

def make_player(settings: AudioSettings, tempo: TempoSource | None = None) -> Any:
    """The player ``settings.backend`` names: ``rtmixer`` (the default) an :class:`RtPlayer` in a
    child process (:class:`~livegen.output.audio_host.HostedPlayer`: it survives a restart of the
    audio server), ``rtmixer-inprocess`` an :class:`RtPlayer` in this process, ``python`` the
    Python reference :class:`~livegen.output.player.Player`."""
    backend = getattr(settings, "backend", "rtmixer")
    if backend == "python":
        from livegen.output.player import Player

        return Player(settings, tempo)
    if backend == "rtmixer-inprocess":
        return RtPlayer(settings, tempo)
    from livegen.output.audio_host import HostedPlayer

    return HostedPlayer(settings, tempo)


def _sounds_at(v: RtVoice, frame: int) -> bool:
    """Whether ``v`` still sounds at ``frame`` (a loop or a stream: until it is cut)."""
    return v.loop or v.stream is not None or v.start + v.length - v.offset > frame


def _ends_at(v: RtVoice, frame: int) -> bool:
    """A buffer voice whose one-shot ends by ``frame``, or whose loop wraps exactly at ``frame``."""
    if v.stream is not None or v.length <= 0:
        return False
    if v.loop:
        return (v.offset + frame - v.start) % v.length == 0
    return v.start + v.length - v.offset <= frame
