"""Delivery of finished clips: the player, the DAW folder, the slots, and the ``done`` reply.

Runs on the event loop; the two blocking parts run on small thread pools so the loop never
waits: preparing a clip for the stream (resampling, channel matching) and scheduling it on the
player (the play pool), and writing the WAV and its sidecar (the write pool). A clip is written
only when its request lists the ``folder`` output (the session fills that from the settings when
a message is silent). ``/livegen/done`` follows the file (its path) or, without the folder, the
clip. A stop bumps the slot's epoch: a clip of that slot still on its way to the player (being
resampled, or waiting for the play pool) is dropped instead of starting after the stop; one whose
scheduling was under way when the stop came is stopped right after it is scheduled (the epoch is
read again then), and one already queued in the player for a later launch is cancelled by the
player's ``stop_slot``. The delivery's state (epochs, slot clips, counters) changes on the event
loop only; the pools read it and hand their results back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livegen import musical
from livegen.control import osc_verbs as verbs
from livegen.output.stream_delivery import StreamDelivery, StreamStats, supports_streaming
from livegen.replies import Replies
from livegen.request import Clip, Request

log = logging.getLogger("livegen.daemon")

UNSLOTTED_BASE = 1024  # voices for requests without a slot: 1024 + job id modulo the voice count


class Delivery:
    def __init__(self, replies: Replies, player: Any = None, folder: Any = None, voices: int = 16,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.replies = replies
        self.player = player
        self.folder = folder
        self.voices = voices
        self._stopping = stopping
        self.slot_clips: dict[int, tuple[np.ndarray, Request]] = {}
        # each slot's last clip at its model's rate, as rendered (extend and vary start from it)
        self.slot_sources: dict[int, musical.SlotSource] = {}
        self.late_extensions: set[int] = set()  # jobs of extensions that came too late to join seamlessly
        self.slot_epochs: dict[int, int] = {}
        self.clips_played = 0
        self.files_written = 0
        self._play_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="livegen-play")
        self._write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="livegen-write")
        self._pending: set[asyncio.Future] = set()
        # a slot's clip was scheduled to start at a frame (on the loop): (slot, start frame)
        self.on_playing: Callable[[int, int], None] | None = None
        self.stream = True  # audio.stream: uncached play requests sound while generated (stream_delivery)
        self.streams: dict[int, StreamDelivery] = {}  # job id -> its sink, until DONE or the job ends
        self.stream_stats = StreamStats()
        self.stream_chunks: dict[str, Any] = {}  # generate_stream's chunk sizes (audio.stream_*)
        self.slot_owner: dict[int, Any] = {}  # what last started in a slot (a streamed loop's hand-over checks it)
        self._unslotted = 0

    # ---- loop side ----------------------------------------------------------------------
    def open_stream(self, request: Request, model_key: str = "") -> StreamDelivery | None:
        """A sink that plays ``request`` while it is generated, or None when it should not stream
        (audio.stream off, a player that cannot, no play output); register it with ``streaming``."""
        if not (self.stream and "play" in request.outputs and supports_streaming(self.player)) or self._stopping():
            return None
        if request.action == "extend":  # joins the slot's clip at its end frame: the buffered path
            return None
        slot = request.slot
        if slot is None:
            self._unslotted += 1
            slot = UNSLOTTED_BASE + self._unslotted % max(1, self.voices)
        loop = asyncio.get_running_loop()
        epoch = self.slot_epochs.get(slot, 0)
        sink: StreamDelivery | None = None

        def started(s: int, frame: int) -> None:  # on the generation thread
            self.slot_owner[s] = sink
            if self.on_playing is not None:
                loop.call_soon_threadsafe(self.on_playing, s, frame)

        def defer(delay: float, fn: Callable[[], None]) -> None:  # a loop's hand-over, on the play pool
            loop.call_soon_threadsafe(loop.call_later, delay, self._play_pool.submit, fn)

        def still_owner() -> bool:
            return self.slot_epochs.get(slot, 0) == epoch and self.slot_owner.get(slot) is sink

        sink = StreamDelivery(self.player, slot, request, self.stream_stats, on_start=started, model_key=model_key,
                              chunk_options=self.stream_chunks, defer=defer, still_owner=still_owner)
        return sink

    def streaming(self, job: int, sink: StreamDelivery) -> None:
        sink.job_id = job
        self.streams[job] = sink

    def forget_stream(self, job: int | None) -> None:
        """The job ended without a clip (cancelled, replaced, failed): its sink is gone."""
        if job is not None:
            self.streams.pop(job, None)

    def deliver(self, clip: Clip) -> None:
        request = clip.request
        loop = asyncio.get_running_loop()
        if request.slot is not None:
            self.slot_sources[request.slot] = musical.SlotSource(clip.audio, clip.sample_rate, request, clip.model,
                                                                 clip.seed, clip.job_id)
        sink = self.streams.pop(clip.job_id, None)
        if sink is not None and (sink.ok or sink.stopped):  # it sounded while generated (or was stopped)
            if sink.ok and sink.audio is not None:
                if request.slot is not None:
                    self.slot_clips[request.slot] = (sink.audio, request)  # what played, for re-triggers
                self.clips_played += 1
        elif "play" in request.outputs and self.player is not None and not self._stopping():
            slot = request.slot if request.slot is not None else UNSLOTTED_BASE + clip.job_id % max(1, self.voices)
            epoch = self.slot_epochs.get(slot, 0)
            fut = loop.run_in_executor(self._play_pool, self._prepare_and_play, slot, clip, epoch)
            self._track(fut, request.origin, clip.job_id, slot=slot, keep=request)
        if "folder" in request.outputs and self.folder is not None:
            fut = loop.run_in_executor(self._write_pool, self._write, clip)
            self._track(fut, request.origin, clip.job_id, clip=clip)
        else:
            self.replies.send(request.origin, verbs.DONE, clip.job_id, "", float(clip.seconds))

    def deliver_cached(self, request: Request, cached: Clip, job: int) -> None:
        clip = dataclasses.replace(cached, request=request.replace(seed=cached.seed), job_id=job,
                                   created=time.time(), render_seconds=0.0)
        log.info("job %d served from the pre-render cache: %r", job, request.prompt[:80])
        self.replies.ack(request.origin, job, f"cached: {request.prompt[:100]}")
        self.deliver(clip)

    def trigger(self, slot: int, origin: str | None) -> str | None:
        """Play the slot's last clip again; returns a sentence when it cannot."""
        if slot not in self.slot_clips:
            return f"Slot {slot} has no clip yet; generate one for it first."
        if self.player is None:
            return "Audio output is disabled (audio.enabled: false)."
        audio, request = self.slot_clips[slot]
        epoch = self.slot_epochs.get(slot, 0)
        fut = asyncio.get_running_loop().run_in_executor(
            self._play_pool, self._schedule_audio, slot, audio, request, epoch)
        self._track(fut, origin, 0, slot=slot)
        return None

    def stop(self, slot: int | None) -> None:
        """Silence ``slot`` (every slot when None), including clips still on their way."""
        slots = list(self.slot_epochs) + list(self.slot_clips) if slot is None else [slot]
        if slot is None:
            slots += [UNSLOTTED_BASE + i for i in range(self.voices)]
        for s in set(slots):
            self.slot_epochs[s] = self.slot_epochs.get(s, 0) + 1
        for sink in list(self.streams.values()):  # streams sounding or about to: silent now
            if slot is None or sink.slot == slot:
                sink.stop()
        if self.player is not None:
            self.player.stop_slot(slot)

    def _track(self, fut: asyncio.Future, origin: str | None, job: int, clip: Clip | None = None,
               slot: int | None = None, keep: Request | None = None) -> None:
        """Follow a pool's future on the loop. Play futures give ``(start frame or None, audio)``;
        with ``keep`` (a delivered clip's request) the prepared audio becomes the slot's clip."""
        self._pending.add(fut)

        def finished(f: asyncio.Future) -> None:
            self._pending.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                what = "writing the clip" if clip is not None else "playing the clip"
                log.debug("%s failed", what, exc_info=exc)
                self.replies.error(origin, f"{what} failed: {exc}", job)
            elif clip is not None:
                self.files_written += 1
                self.replies.send(origin, verbs.DONE, job, str(f.result()), float(clip.seconds))
            elif slot is not None:
                start, audio = f.result()
                if keep is not None and keep.slot is not None:
                    self.slot_clips[keep.slot] = (audio, keep)  # for re-triggers, even if stopped on its way
                if start is not None:
                    self.clips_played += 1
                    if self.on_playing is not None:
                        self.on_playing(slot, int(start))  # scheduled (not dropped by a stop on its way)
            if job in self.late_extensions:
                self.late_extensions.discard(job)
                self.replies.ack(origin, job, f"extension of slot {slot} came after its clip ended: it starts on "
                                              "the launch grid instead of seamlessly")

        fut.add_done_callback(finished)

    async def drain(self, timeout: float) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=timeout)

    def close(self) -> None:
        self._write_pool.shutdown(wait=True)  # writes are atomic: let the last one finish or clean up
        self._play_pool.shutdown(wait=False, cancel_futures=True)

    # ---- play pool thread ---------------------------------------------------------------
    def _stream_audio(self, clip: Clip) -> np.ndarray:
        from livegen.audio_io import match_channels, resample

        audio = clip.audio
        if clip.sample_rate != self.player.sample_rate:
            audio = resample(audio, clip.sample_rate, self.player.sample_rate)
        return np.ascontiguousarray(match_channels(audio, self.player.channels), dtype=np.float32)

    def _prepare_and_play(self, slot: int, clip: Clip, epoch: int) -> tuple[int | None, np.ndarray]:
        audio = self._stream_audio(clip)
        at_frame = None
        if clip.request.action == "extend" and self.slot_epochs.get(slot, 0) == epoch:
            at_frame = self._extension_frame(slot, clip)  # from the slot's clip before this one replaces it
        return self._schedule(slot, audio, clip.request, epoch, at_frame), audio

    def _schedule_audio(self, slot: int, audio: np.ndarray, request: Request,
                        epoch: int) -> tuple[int | None, np.ndarray]:
        return self._schedule(slot, audio, request, epoch), audio

    def _extension_frame(self, slot: int, clip: Clip) -> int | None:
        """Where the slot's clip ends (livegen.musical.extension_frame); None: late, on the grid."""
        current = self.slot_clips.get(slot)
        loop_frames = current[0].shape[1] if current is not None and current[1].loop else None
        at = musical.extension_frame(self.player, slot, loop_frames)
        if at is None:
            self.late_extensions.add(clip.job_id)
            log.warning("job %d: the extension of slot %d came after its clip ended; launched on %r instead",
                        clip.job_id, slot, clip.request.launch)
        return at

    def _schedule(self, slot: int, audio: np.ndarray, request: Request, epoch: int,
                  at_frame: int | None = None) -> int | None:
        if self.slot_epochs.get(slot, 0) != epoch:
            log.info("slot %d was stopped while its clip was on its way: not played", slot)
            return None
        extra = {} if at_frame is None else {"at_frame": at_frame}  # an extension joins the slot's clip
        start = self.player.schedule(slot, audio, loop=request.loop, gain=request.gain, launch=request.launch,
                                     **extra)
        self.slot_owner[slot] = request  # a streamed loop of this slot no longer hands over to its buffer
        if self.slot_epochs.get(slot, 0) != epoch:  # the stop came while it was being scheduled
            self.player.stop_slot(slot)  # (a later clip of the slot waits behind this one in the pool)
            log.info("slot %d was stopped while its clip was being scheduled: stopped", slot)
            return None
        return start

    # ---- write pool thread --------------------------------------------------------------
    def _write(self, clip: Clip) -> Path:
        return self.folder.write(clip)
