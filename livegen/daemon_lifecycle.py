"""The daemon's start-up checks, start-up stages and shutdown (:class:`DaemonLifecycle`, a base
class of :class:`livegen.daemon.Daemon`; see that module's doc for the order of the stages)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time

from livegen import gc_monitor, preflight, watchdog
from livegen import limits as lim
from livegen.control import osc_verbs as verbs
from livegen.engine.backend import build_backend
from livegen.engine.loaders import check_audio_device, worker_options
from livegen.mapping import Mapper, MidiEvent
from livegen.output.stream_delivery import launch_time_at_or_after
from livegen.session import Session

log = logging.getLogger("livegen.daemon")

PLAYER_CLOSE_SECONDS = 0.8  # the longest wait for the audio stream to close at shutdown (a dead JACK)
FINISH_ON_SHUTDOWN_SECONDS = 120.0  # engine.finish_running_on_shutdown: the longest wait for the clip


def freeze_heap() -> int:
    """Collect once, then move every object alive now (imports, loaded models) out of the cyclic
    collector's view (``gc.freeze``); returns how many. A full collection then scans only what was
    made since: before, each one walked the whole process (torch, transformers, MLX modules) and held
    the GIL 110-175 ms, so in a request storm the loop's replies waited that long
    (docs/reliability.md, status latency)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class StartupError(Exception):
    """A problem found before the models load (settings, mappings, device); one sentence per line."""


class DaemonLifecycle:
    """check, the start-up stages (``_start``) and ``_shutdown``; the state is the Daemon's."""

    def check(self) -> list[str]:
        """Every problem with the settings and mappings that can be found before loading (also
        ``--dry-run``); raises :class:`MappingError` for an invalid mapping file."""
        return self._check()[0]

    def _check(self) -> tuple[list[str], Mapper, dict[str, lim.ModelCaps]]:
        s = self.settings
        mapper = Mapper.from_files(s.mappings)
        caps = lim.caps_from_settings(s)
        limits = lim.Limits.from_settings(s, caps)
        problems = preflight.check_settings(s, limits)
        if s.tempo.source == "link":
            from livegen.link_clock import link_problems

            problems += link_problems()
        found = preflight.check_mapping(mapper, s, limits)
        for w in found.warnings:
            log.warning("mapping: %s", w)
        return problems + found.errors, mapper, caps

    async def _start(self) -> None:
        s = self.settings
        t = time.monotonic()
        problems, mapper, caps = self._check()
        if problems:
            raise StartupError("\n".join(problems))
        self.session = Session(s, mapper, caps)
        self.session.slot_sources = self.delivery.slot_sources  # extend and vary read the slots' clips
        self._remember_mtimes()
        self._stage("mappings", t, ", ".join(str(p) for p in s.mappings))
        log.info("tempo source: %s", self.session.tempo_source.value)
        if s.tempo.source == "link":  # early: the other peers see the daemon while the models load
            from livegen.link_clock import start_link

            self.link = start_link(self)

        if s.folder.path is not None:
            t = time.monotonic()
            from livegen.output.folder import FolderWriter

            self.folder = FolderWriter(s.folder.path, subtype=s.folder.subtype, sidecar=s.folder.sidecar)
            self.delivery.folder = self.folder
            self._stage("folder", t, str(s.folder.path))

        if s.osc.enabled:
            t = time.monotonic()
            from livegen.control.osc import OscServer

            self.osc = OscServer(s.osc.host, s.osc.port, self._on_osc, self._on_malformed, allow=s.osc.allow)
            host, port = await self.osc.start()
            self.replies._send = lambda target, address, args: self.osc.send(target, address, *args)
            self._stage("osc", t, f"listening on {host}:{port}")

        if s.web.enabled:  # early: the page shows the loading too
            t = time.monotonic()
            from livegen.control.web import WebSurface

            web = WebSurface(self)
            if await web.start() is not None:
                self.web = web
                self._stage("web", t, web.url)

        if s.audio.enabled:  # the device is checked now; the stream opens after the models load
            t = time.monotonic()
            check_audio_device(s)
            self._stage("audio", t, f"device {s.audio.device if s.audio.device is not None else '(default)'} "
                                    "can open")

        if s.midi.enabled:
            t = time.monotonic()
            from livegen.control.midi import MidiInput, MidiUnavailable

            midi = MidiInput(asyncio.get_running_loop(), self._on_midi, MidiEvent, virtual=s.midi.virtual,
                             port_name=s.midi.port_name, connect=s.midi.connect, api=s.midi.api,
                             on_change=self._on_midi_change)
            try:
                names = midi.open()
                self.midi = midi
                self._stage("midi", t, f"{midi.api}: {', '.join(names) or 'no ports'}")
            except MidiUnavailable as exc:
                midi.close()
                log.warning("MIDI disabled: %s", exc)
            from livegen.feedback import start_feedback

            self.feedback = start_feedback(self)  # opens the output when the mapping has a feedback section

        t = time.monotonic()
        options = worker_options(s)  # the same as `livegen render`'s and the pool replicas': the same clips
        self.worker = build_backend(s, self.loaders, options, self._on_worker, asyncio.get_running_loop(),
                                    launch_time=lambda launch, at: launch_time_at_or_after(self.player, at, launch))
        self.worker.start()
        ready = asyncio.ensure_future(self._ready.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        for f in (ready, stop):
            f.cancel()
        if self._fatal is not None or not self._ready.is_set():
            return
        self._use_loaded_caps()
        self._stage("models", t, ", ".join(self.worker.models))
        t = time.monotonic()
        frozen = freeze_heap()  # before the stream opens: the one full collection holds the GIL
        threshold = gc_monitor.tune()
        self.gc_monitor.install()  # every collection's pause, in the status JSON (gc)
        if (every := gc_monitor.forced_interval()) is not None:  # the soak benchmark's forced collections
            gc_monitor.collect_every(asyncio.get_running_loop(), every)
        self._stage("gc", t, f"{frozen} objects frozen, thresholds {threshold}")
        if s.audio.enabled:  # after loading: the loader's Python work would starve the callback
            t = time.monotonic()
            from livegen.output.rt_player import make_player

            self.player = make_player(s.audio, s.tempo)  # audio.backend: rtmixer (C callback) or python
            push = functools.partial(asyncio.get_running_loop().call_soon_threadsafe, self.replies.push)
            self.player.on_fault = lambda text: push(verbs.ERROR, text)  # the stream guard's reports
            self.player.on_recover = lambda text: push(verbs.ACK, 0, text)
            self.player.set_bpm(self.session.bpm, self.session.beats_per_bar)
            try:
                self.player.start()
            except Exception as exc:  # sounddevice.PortAudioError, ValueError for a bad device
                self.player = None
                raise OSError(f"cannot open the audio output {s.audio.device!r}: {exc} "
                              "(see `livegen devices`; on Linux without sound hardware: bin/livegen-jack-dummy)"
                              ) from None
            self.delivery.player = self.player
            self.delivery.stream = bool(s.audio.stream)
            self.delivery.stream_chunks = {"chunk_latents": s.audio.stream_tile_latents,
                                           "chunk_seconds": s.audio.stream_burst_seconds}
            self._stage("audio", t, f"{s.audio.sample_rate} Hz, {s.audio.channels} ch, device {s.audio.device}, "
                        f"{s.audio.backend} {' '.join(getattr(self.player, 'ports', []))}".rstrip())
        if s.prerender.enabled:  # before ready: the clips of `livegen render` are served from the first press
            from livegen.output.prerender import PrerenderCache

            t = time.monotonic()
            self.prerender = PrerenderCache(s.prerender.memory_mb, s.prerender.disk_mb, s.prerender.directory,
                                            s.prerender.variations, s.tempo.bpm)
            kept = await asyncio.get_running_loop().run_in_executor(None, self.prerender.scan)
            self._stage("cache", t, f"{kept} rendered clips in {self.prerender.directory}")
            self._tasks.append(asyncio.ensure_future(self._prerender_when_idle()))
        self.ready_at = time.monotonic()
        log.info("ready in %.2f s", self.ready_at - self._t0)
        self.replies.push(verbs.READY)
        self._tasks.append(asyncio.ensure_future(self._watch_mappings()))
        self._tasks.append(asyncio.ensure_future(self._watch_clock()))
        if s.osc.status_port is not None:
            self._tasks.append(asyncio.ensure_future(self._push_status_periodically()))
        if self.player is not None:
            self._tasks.append(asyncio.ensure_future(self._follow_playing_slots()))

    def _use_loaded_caps(self) -> None:
        """The loaded models' real capabilities replace those read from configuration; a setting
        or mapping they refuse is reported now (the daemon keeps running: intake refuses it)."""
        caps = {name: lim.ModelCaps.from_engine(name, engine, self.settings.models.get(name))
                for name, engine in self.worker.engines.items()}
        self.session.set_caps(caps)
        for name, c in caps.items():
            log.info("model %s: %s, %d Hz, window %s, samplers %s, default steps %s, cfg %g", name, c.engine.value,
                     c.sample_rate, f"{c.max_seconds:.2f} s" if c.max_seconds else "unbounded",
                     ", ".join(c.samplers) or "none", c.default_steps, c.default_cfg)
        for problem in preflight.check_settings(self.settings, self.session.limits):
            log.warning("settings: %s", problem)
        found = preflight.check_mapping(self.session.mapper, self.settings, self.session.limits)
        for line in found.errors + found.warnings:
            log.warning("mapping: %s", line)

    async def _shutdown(self) -> None:
        t = time.monotonic()
        for task in self._tasks:
            task.cancel()
        # intake stops now; the OSC socket stays open until the last clip's done (or error) is sent
        self._closing = True
        if self.web is not None:
            await self.web.close()
        if self.midi is not None:
            self.midi.close()
        if self.feedback is not None:  # the LEDs go idle, then the port closes
            await asyncio.get_running_loop().run_in_executor(None, self.feedback.close)
        if self.worker is not None:
            finish = self.settings.engine.finish_running_on_shutdown and self.worker.busy()
            wait = FINISH_ON_SHUTDOWN_SECONDS if finish else 1.0
            joined = await asyncio.get_running_loop().run_in_executor(None, self.worker.close, None, wait)
            if not joined:
                log.warning("the generation thread is still busy; exiting without it")
            for _ in range(3):  # let the worker's last events (a finished clip) reach the delivery
                await asyncio.sleep(0)
        await self.delivery.drain(timeout=5.0 if self.settings.engine.finish_running_on_shutdown else 0.6)
        self.delivery.close()
        if self.osc is not None:
            self.osc.close()
        if self.link is not None:
            self.link.close()
        if self.player is not None and not watchdog.bounded_call(self.player.close, PLAYER_CLOSE_SECONDS,
                                                                  "livegen-player-close"):
            log.warning("the audio stream did not close within %.1f s (audio server gone?); exiting without it",
                        PLAYER_CLOSE_SECONDS)
            self.stuck.append("the audio stream's close")  # PortAudio's exit handler would hang on it
        self.gc_monitor.uninstall()
        log.info("stopped in %.2f s", time.monotonic() - t)
