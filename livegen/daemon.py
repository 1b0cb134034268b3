"""The daemon: lifecycle and asyncio wiring of the session, the generation thread, outputs and controls.

What a message means is decided by :class:`livegen.session.Session` (one model for every input);
finished clips go out through :class:`livegen.output.delivery.Delivery`; replies are routed by
:class:`livegen.replies.Replies`. This module starts, connects and stops them.

Start-up stages are logged one line each with their time (mappings, checks, folder, osc, audio
check, midi, load and warmup per model, models, audio), then ``ready in X s`` and an OSC
``/livegen/ready`` push. Everything that can be checked before the (slow) model load is checked
first: settings and mappings against the models' configuration, the folder, the OSC port, the
audio device. The audio stream itself opens after the models are loaded (loading is Python-heavy
and would starve the audio callback). MLX runs only on the worker thread; audio conversion, voice
preparation and WAV writing run on two small thread pools so the loop never blocks.

Shutdown (SIGINT/SIGTERM, or :meth:`Daemon.stop`): intake stops (OSC and MIDI ports close), the
queue is cancelled and the running job cancelled or finished (``engine.finish_running_on_shutdown``,
then its clip is delivered: played and written), WAV writes in flight complete (they are atomic),
the stream closes. The checks, the stages and the shutdown are in :mod:`livegen.daemon_lifecycle`
(a base class of :class:`Daemon`); this module has the inputs, the generation and the replies.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livegen import gc_monitor, preflight, watchdog
from livegen import limits as lim
from livegen.control import osc_verbs as verbs
from livegen.control.osc_verbs import Verb
from livegen.daemon_lifecycle import (  # noqa: F401 (StartupError, freeze_heap: re-exported)
    FINISH_ON_SHUTDOWN_SECONDS,
    DaemonLifecycle,
    StartupError,
    freeze_heap,
)
from livegen.engine import worker as wk
from livegen.engine.loaders import build_loaders
from livegen.engine.pooled import FALLBACK
from livegen.mapping import Mapper, MappingError, MidiEvent
from livegen.output.delivery import Delivery
from livegen.replies import Replies, osc_origin, parse_origin
from livegen.request import Request
from livegen.session import (
    Answer,
    CancelJob,
    ClockNotice,
    Echo,
    Outcome,
    PlaySlot,
    Query,
    Queue,
    Reanchor,
    Refuse,
    Session,
    StopSlot,
    TempoChanged,
)
from livegen.settings import Settings
from livegen.slot_states import SlotState, SlotStates
from livegen.status import daemon_status, status_args

log = logging.getLogger("livegen.daemon")

SWITCH_INTERVAL = 0.0005  # seconds; see Daemon.run


class Daemon(DaemonLifecycle):
    def __init__(self, settings: Settings, loaders: dict[str, Callable[[], Any]] | None = None) -> None:
        self.settings = settings
        self.loaders = loaders if loaders is not None else build_loaders(settings)
        self.session: Session | None = None
        self.worker: wk.Worker | None = None
        self.player: Any = None
        self.folder: Any = None
        self.osc: Any = None
        self.midi: Any = None
        self.prerender: Any = None
        self.prerender_jobs: dict[int, Request] = {}
        self.replies = Replies(None, settings.osc.reply,
                               (settings.osc.status_host, settings.osc.status_port)
                               if settings.osc.status_port is not None else None)
        self.slots = SlotStates(self.replies.push)
        self.delivery = Delivery(self.replies, voices=settings.audio.voices, stopping=lambda: self._stop.is_set())
        self.delivery.on_playing = lambda slot, frame: self.slots.playing(slot, frame) if (
            slot < lim.SLOT_COUNT) else None  # voices of requests without a slot light no pad
        self.exit_code = 0
        self.ready_at: float | None = None
        self.refused = 0
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._fatal: str | None = None
        self._mapping_mtimes: dict[Path, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._t0 = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # shutdown began: intake refused, replies still go out
        self.stop_requested_at: float | None = None  # monotonic time of the first stop() (SIGTERM)
        self.gc_monitor = gc_monitor.GcMonitor()
        self.stuck: list[str] = []  # native calls still running after their bound at shutdown
        self.watchdog: watchdog.Watchdog | None = None
        self.web: Any = None  # the browser control surface (livegen.control.web), when it listens
        self.link: Any = None  # the Ableton Link follower (livegen.link_clock), with tempo.source: link
        self.feedback: Any = None  # the controller's LEDs (livegen.feedback), with MIDI

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self._stop.set()

    def _stage(self, name: str, t0: float, detail: str = "") -> None:
        log.info("stage %-8s %6.2f s  %s", name, time.monotonic() - t0, detail)

    async def run(self) -> int:
        # The audio callback needs the GIL every block (5.8 ms at 256 frames); with Python's default
        # 5 ms switch interval a busy thread can hold it for most of a block.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            return await self._run()
        finally:
            sys.setswitchinterval(switch)

    async def _run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        # SIGTERM/SIGINT end the process even when the loop is stuck: the handlers run on the main
        # thread, ask the loop to stop, and end the process after a grace time (livegen.watchdog).
        grace = FINISH_ON_SHUTDOWN_SECONDS + 5.0 if self.settings.engine.finish_running_on_shutdown else 2.0
        fallback = None
        try:
            fallback = watchdog.install_signal_fallback(self.stop, grace, loop=loop)
        except ValueError:  # not the main thread: the embedding program handles signals
            pass
        self.watchdog = watchdog.Watchdog(loop, on_recover=self._on_stall_end)
        self.watchdog.start()
        try:
            await self._start()
            if self._fatal is None:
                await self._stop.wait()
        finally:
            await self._shutdown()
            self.watchdog.stop()
            # armed until the generation thread has ended: `livegen serve` joins it before the
            # interpreter finalises, and the fallback bounds that wait after a signal
            if fallback is not None and (self.worker is None or not self.worker.alive):
                fallback.disarm()
        return self.exit_code

    def _on_stall_end(self, stall: Any) -> None:  # watchdog thread
        def report() -> None:
            self.replies.push(verbs.ERROR, f"The daemon's event loop was stalled for {stall.duration:.2f} s "
                                           "(see the log for where).")
        try:
            self._loop.call_soon_threadsafe(report)
        except RuntimeError:  # the loop is closed
            pass

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        return daemon_status(self)

    def _status_args(self) -> list[Any]:
        return status_args(self.status())

    async def _follow_playing_slots(self) -> None:
        """Slot states follow the player's voices (a one-shot that ends goes back to idle)."""
        while True:
            await asyncio.sleep(0.2)
            self.slots.follow_player((s for s in self.player.stats().get("slots_playing", ())
                                      if s < lim.SLOT_COUNT), frame=self.player.frame,
                                     grace=self.player.sample_rate // 4)  # a voice shows within 0.25 s

    async def _push_status_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.replies.status_target is not None:
                self.replies.to(self.replies.status_target, verbs.STATUS, *self._status_args())

    # ------------------------------------------------------------------ mappings
    def _remember_mtimes(self) -> None:
        self._mapping_mtimes = {}
        for p in self.settings.mappings:
            try:
                self._mapping_mtimes[Path(p)] = Path(p).stat().st_mtime_ns
            except OSError:
                self._mapping_mtimes[Path(p)] = -1

    async def _watch_mappings(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            before = dict(self._mapping_mtimes)
            self._remember_mtimes()
            if before != self._mapping_mtimes:
                await self.reload(None)

    async def reload(self, origin: str | None) -> bool:
        """Reload the mapping files (read and checked off the loop); an invalid file keeps the old
        mapping and reports why."""
        loop = asyncio.get_running_loop()
        try:
            mapper = await loop.run_in_executor(None, Mapper.from_files, self.settings.mappings)
            found = preflight.check_mapping(mapper, self.settings, self.session.limits)
            if found.errors:
                raise MappingError(found.errors)
        except (MappingError, OSError) as exc:
            errors = getattr(exc, "errors", None) or [str(exc)]
            for line in errors:
                log.warning("mapping reload refused: %s", line)
            self.replies.error(origin, "Mapping reload refused, the old mapping stays: " + "; ".join(errors))
            return False
        for w in found.warnings:
            log.warning("mapping: %s", w)
        before = dict(self.session.state.params)
        source = self.session.tempo_source
        self.session.reload(mapper)
        if self.session.tempo_source != source:
            log.info("tempo source: %s (was %s; the mapping changed)", self.session.tempo_source.value, source.value)
        changed = [k for k, v in self.session.state.params.items() if before.get(k) != v]
        log.info("mappings reloaded: %s%s", ", ".join(str(p) for p in self.settings.mappings),
                 f" (changed: {', '.join(changed)})" if changed else "")
        self.replies.ack(origin, 0, "mappings reloaded")
        for k in changed:
            if k in verbs.SINGLE_VALUES:
                self.replies.echo(origin, k, self.session.value_in_force(k))
        if self.player is not None and ({"bpm", "beats_per_bar"} & set(changed)):
            self.player.set_bpm(self.session.bpm, self.session.beats_per_bar)
        return True

    # ------------------------------------------------------------------ inputs
    async def _watch_clock(self) -> None:
        """Report a followed MIDI clock that stops arriving (and its return: on the next tick)."""
        while True:
            await asyncio.sleep(0.1)
            self._carry_out(self.session.clock_check(time.monotonic()), "midi:clock")

    def _reanchor(self, r: Reanchor) -> None:
        """Put the bar grid's lines where the followed clock's song position says they are."""
        if self.player is None:
            return
        frame = self.player.frame_at(r.time)
        beat = 60.0 * self.player.sample_rate / r.bpm
        self.player.anchor_bar(frame - int(round((r.beats % r.beats_per_bar) * beat)))

    def _on_midi_change(self, sentence: str) -> None:
        """A named MIDI connection went away or came back: tell the subscribers."""
        self.replies.push(verbs.ACK, 0, sentence)

    def _on_malformed(self, sender: tuple[str, int], reason: str) -> None:
        self.replies.error(osc_origin(sender), reason)

    def _on_osc(self, address: str, args: tuple, sender: tuple[str, int]) -> None:
        if self.session is None:
            return
        origin = osc_origin(sender)
        if self._closing:
            self.replies.error(origin, "The daemon is shutting down; nothing new is accepted.")
            return
        self._carry_out(self.session.osc(address, args, origin), origin)

    def _on_midi(self, event: MidiEvent) -> None:
        if self.session is not None and not self._closing:
            origin = f"midi:{event.type}"
            self._carry_out(self.session.midi(event, origin), origin)

    def perform(self, outcomes: list[Outcome], origin: str) -> None:
        """Carry out a session's outcomes for another input (the browser surface)."""
        self._carry_out(outcomes, origin)

    def _carry_out(self, outcomes: list[Outcome], origin: str) -> None:
        for outcome in outcomes:
            try:
                self._carry_out_one(outcome, origin)
            except Exception as exc:  # noqa: BLE001 - one bad action must not stop the daemon
                log.debug("carrying out %r failed", outcome, exc_info=True)
                log.warning("carrying out %s failed: %s", type(outcome).__name__.lower(), exc)
                self.replies.error(origin, f"That could not be done: {exc}")

    def _carry_out_one(self, outcome: Outcome, origin: str) -> None:
        r = self.replies
        if isinstance(outcome, Refuse):
            self.refused += 1
            r.error(origin, outcome.reason)
        elif isinstance(outcome, Echo):
            r.echo(origin, outcome.param, outcome.values)
        elif isinstance(outcome, Answer):  # also to subscribers: Max/Pd/TouchDesigner listen on another port
            r.send(origin, verbs.GET, outcome.param, *outcome.values)
        elif isinstance(outcome, Reanchor):
            self._reanchor(outcome)
        elif isinstance(outcome, ClockNotice):
            if outcome.lost:  # /livegen/error s:sentence to the subscribers and the status port
                log.warning("%s", outcome.sentence)
                r.push(verbs.ERROR, outcome.sentence)
            else:
                log.info("%s", outcome.sentence)
                r.push(verbs.ACK, 0, outcome.sentence)
        elif isinstance(outcome, TempoChanged):
            if self.player is not None:
                self.player.set_bpm(outcome.bpm, outcome.beats_per_bar)
            if self.link is not None:  # proposed to the Link session, the grid back on its bar lines
                self.link.tempo_changed(outcome.bpm, origin)
        elif isinstance(outcome, Queue):
            self.submit(outcome.request)
        elif isinstance(outcome, PlaySlot):
            problem = self.delivery.trigger(outcome.slot, origin)
            if problem:
                self.refused += 1
                r.error(origin, problem)
            else:
                r.ack(origin, 0, f"triggered slot {outcome.slot}")
        elif isinstance(outcome, StopSlot):
            self.delivery.stop(outcome.slot)
            if self.worker is not None:
                self.worker.cancel_slot(outcome.slot)
            self.slots.stopped(outcome.slot)
            r.ack(origin, 0, "stopped" if outcome.slot is None else f"stopped slot {outcome.slot}")
        elif isinstance(outcome, CancelJob):
            self._cancel(outcome.job, origin)
        elif isinstance(outcome, Query):
            self._query(outcome, origin)

    def _cancel(self, job: int | None, origin: str) -> None:
        if self.worker is None:
            self.replies.error(origin, "The models are still loading; nothing to cancel.")
            return
        if job is None:
            ids = [i for i in self.worker.cancel_slot(None) if i not in self.prerender_jobs]
            self.replies.ack(origin, 0, f"cancelled {len(ids)} job(s)")
        elif job in self.prerender_jobs or not self.worker.cancel(job):
            self.replies.error(origin, f"Job {job} is neither queued nor running.")
        else:
            self.replies.ack(origin, job, f"cancelling job {job}")

    def _query(self, q: Query, origin: str) -> None:
        if q.verb is Verb.STATUS:
            self.replies.send(origin, verbs.STATUS, *self._status_args())
        elif q.verb is Verb.RELOAD:
            self._tasks.append(asyncio.ensure_future(self.reload(origin)))
        elif q.verb is Verb.SUBSCRIBE:
            sender = parse_origin(origin)
            if sender is None:
                return
            target = (sender[0], q.port or sender[1])
            self.replies.subscribe(target)
            self.replies.to(target, verbs.ACK, 0, f"subscribed {target[0]}:{target[1]}")
            if self.ready_at is not None:
                self.replies.to(target, verbs.READY)

    # ------------------------------------------------------------------ generation
    def submit(self, request: Request) -> int | None:
        """Queue a complete request (from the session); answers ack or error."""
        origin = request.origin
        if self.worker is None or self.ready_at is None:
            self.refused += 1
            self.replies.error(origin, "The models are still loading; try again after /livegen/ready.")
            return None
        if self.prerender is not None and request.seed is None:
            cached = self.prerender.get(request)
            if cached is not None:
                job = self.worker.reserve_id()
                self.delivery.deliver_cached(request, cached, job)
                self._cached_slot(request)
                return job
        self._preempt_prerender()
        sink = self.delivery.open_stream(request, request.model)  # plays while generated (audio.stream)
        try:
            job, _ = self.worker.submit(request, sink=sink)
        except (wk.QueueFull, wk.UnknownModel, RuntimeError) as exc:
            self.refused += 1
            self.replies.error(origin, str(exc))
            return None
        if sink is not None:
            self.delivery.streaming(job.id, sink)
        self.replies.ack(origin, job.id, f"queued: {request.prompt[:100]}")
        self.slots.set(request.slot, SlotState.QUEUED)
        return job.id

    def _cached_slot(self, request: Request) -> None:
        if self.prerender is not None and request.slot is not None:
            self.slots.cached(request.slot, self.prerender.ready(request) / max(1, self.settings.prerender.variations))

    def _preempt_prerender(self) -> None:
        """A performer's job never waits for a background render: cancel them (requeued later)."""
        for job_id in list(self.prerender_jobs):
            if self.worker.cancel(job_id):
                log.info("pre-render job %d cancelled for a performer's request (requeued when idle)", job_id)

    async def _prerender_when_idle(self) -> None:
        """Keep variations of fixed-prompt pads ready: render what the cache wants while idle."""
        while True:
            await asyncio.sleep(0.25)
            if self.worker is None or not self.worker.idle() or self.prerender_jobs:
                continue
            self.prerender.set_targets(self.session.prerender_requests())
            wanted = self.prerender.wanted()
            if not wanted:
                continue
            request = wanted[0]
            try:  # no slot: a pre-render must never replace a performer's request for that pad
                job, _ = self.worker.submit(request.replace(slot=None, priority=-(2**31), origin="prerender"))
            except (wk.QueueFull, wk.UnknownModel, RuntimeError) as exc:
                log.debug("pre-render not queued: %s", exc)
                continue
            self.prerender_jobs[job.id] = request

    # ------------------------------------------------------------------ worker events
    def _on_worker(self, event: wk.WorkerEvent) -> None:
        if self.web is not None:
            self.web.on_worker(event)
        kind = event.kind
        origin = event.request.origin if event.request is not None else None
        if origin == "prerender" and event.job_id in self.prerender_jobs:
            if kind == wk.DONE:
                request = self.prerender_jobs.pop(event.job_id)
                self.prerender.put(request, event.clip)
                self._cached_slot(request)
                log.info("pre-rendered job %d (%.2f s): %r", event.job_id, event.seconds, event.clip.request.prompt)
            elif kind in (wk.FAILED, wk.CANCELLED, wk.REPLACED):
                self.prerender_jobs.pop(event.job_id, None)
                log.info("pre-render job %d %s: %s", event.job_id, kind, event.reason)
            return
        r = self.replies
        if kind == wk.DEVICE:
            log.info("stage %-8s %6.2f s  %s", "device", event.seconds, event.reason)
        elif kind == wk.LOADING:
            log.info("loading model %s", event.model)
        elif kind == wk.LOADED:
            log.info("stage %-8s %6.2f s  %s", "load", event.seconds, event.model)
        elif kind == wk.WARMED:
            log.info("stage %-8s %6.2f s  %s %s s", "warmup", event.seconds, event.model,
                     ", ".join(f"{x:g}" for x in self.settings.engine.warmup_seconds))
        elif kind == wk.READY:
            self._ready.set()
        elif kind == wk.FATAL:
            self._fatal = event.reason
            self.exit_code = 2
            log.error("the models could not be loaded: %s", event.reason)
            r.push(verbs.ERROR, f"The models could not be loaded: {event.reason}")
            self._stop.set()
        elif kind == FALLBACK:  # engine.kind ray: the pool could not make it, the clip renders here
            r.ack(origin, event.job_id, f"rendering locally: {event.reason}")
        elif kind == wk.STARTED:
            log.info("job %d started: %r", event.job_id, event.request.prompt[:80])
        elif kind == wk.PROGRESS:
            r.send(origin, verbs.PROGRESS, event.job_id, event.step, event.total)
            self.slots.set(event.request.slot, SlotState.RENDERING, event.step / max(1, event.total))
        elif kind in (wk.CANCELLED, wk.REPLACED):
            self.delivery.forget_stream(event.job_id)
            r.error(origin, f"Cancelled: {event.reason}", event.job_id)
            if kind == wk.CANCELLED and self.slots.get(event.request.slot or 0)[0] is not SlotState.PLAYING:
                self.slots.set(event.request.slot, SlotState.IDLE)  # a replaced job's successor is queued
        elif kind == wk.FAILED:
            self.delivery.forget_stream(event.job_id)
            r.error(origin, f"Generation failed: {event.reason}", event.job_id)
            self.slots.set(event.request.slot, SlotState.IDLE)
        elif kind == wk.DONE:
            log.info("job %d done in %.2f s (%.2f s of audio)", event.job_id, event.seconds, event.clip.seconds)
            self.delivery.deliver(event.clip)
            if self.player is None or "play" not in event.clip.request.outputs:
                self.slots.set(event.clip.request.slot, SlotState.IDLE)
