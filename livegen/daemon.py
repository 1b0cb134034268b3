"""The daemon: asyncio wiring of settings, mappings, the generation thread, outputs and controls.

Start-up stages are logged one line each with their time (mappings, folder, osc, midi, load and
warmup per model, models, audio), then ``ready in X s`` and an OSC ``/livegen/ready`` push. The
audio stream opens after the models are loaded (loading is Python-heavy and would starve the
audio callback). With ``folder.path`` set every clip is also written to the folder. The event loop
thread runs the mapper and every decision; MLX runs only on the worker thread; audio conversion,
voice preparation and WAV writing run on two small thread pools so the loop never blocks.

Shutdown (SIGINT/SIGTERM, or :meth:`Daemon.stop`): intake stops (OSC and MIDI ports close), the
queue is cancelled and the running job cancelled or finished (``engine.finish_running_on_shutdown``),
WAV writes in flight complete (they are atomic: temp file + rename), the stream closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livegen.control import osc as osc_mod
from livegen.engine import worker as wk
from livegen.mapping import (
    ClockTick,
    Generate,
    KnobMoved,
    Mapper,
    MappingError,
    MidiEvent,
    OscEvent,
    Reject,
    Reroll,
    SelectBank,
    SetParam,
    State,
    Stop,
    Trigger,
    apply,
)
from livegen.request import Clip, Request, RequestError
from livegen.settings import Settings

log = logging.getLogger("livegen.daemon")

# Request fields a state parameter stands for (the rest share the name).
PARAM_FIELDS = {"cfg": "cfg_scale"}
UNSLOTTED_BASE = 1024  # voices for requests without a slot: 1024 + job id modulo the voice count
EARLY_UNDERFLOW_SECONDS = 0.25  # a fresh stream may flag an underflow while it settles
SWITCH_INTERVAL = 0.0005  # seconds; see Daemon.run


def build_loaders(settings: Settings) -> dict[str, Callable[[], Any]]:
    """Zero-argument engine loaders (run on the worker thread), one per configured model."""
    loaders: dict[str, Callable[[], Any]] = {}
    for name, m in settings.models.items():
        if m.engine == "stable-audio":

            def load(m=m):  # noqa: ANN202
                from livegen.models.stable_audio import StableAudioPipeline

                return StableAudioPipeline.from_pretrained(m.path, t5=m.t5)
        else:

            def load(m=m):  # noqa: ANN202
                from livegen.models.musicgen import MusicGenPipeline

                return MusicGenPipeline.from_pretrained(m.path)

        loaders[name] = load
    return loaders


def engine_defaults(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per-model keyword arguments the engines take besides the request (MusicGen sampling)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in settings.models.items():
        if m.engine == "musicgen":
            out[name] = {"top_k": m.top_k, "top_p": m.top_p, "temperature": m.temperature}
    return out


def parse_origin(origin: str | None) -> tuple[str, int] | None:
    if not origin or not origin.startswith("osc:"):
        return None
    host, _, port = origin[4:].rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        loaders: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.loaders = loaders if loaders is not None else build_loaders(settings)
        self.mapper: Mapper | None = None
        self.state: State = State()
        self.worker: wk.Worker | None = None
        self.player: Any = None
        self.folder: Any = None
        self.osc: osc_mod.OscServer | None = None
        self.midi: Any = None
        self.prerender: Any = None
        self.prerender_jobs: dict[int, Request] = {}
        self.subscribers: set[tuple[str, int]] = set()
        self.slot_clips: dict[int, tuple[np.ndarray, Request]] = {}
        self.slot_requests: dict[int, Request] = {}
        self.jobs: dict[int, Request] = {}
        self.exit_code = 0
        self.ready_at: float | None = None
        self.clips_played = 0
        self.files_written = 0
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._fatal: str | None = None
        self._mapping_mtimes: dict[Path, float] = {}
        self._play_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="livegen-play")
        self._write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="livegen-write")
        self._pending: set[asyncio.Future] = set()
        self._tasks: list[asyncio.Task] = []
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread / Windows
                pass
        try:
            await self._start()
            if self._fatal is None:
                await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self) -> None:
        s = self.settings
        t = time.monotonic()
        self.mapper = Mapper.from_files(s.mappings)
        self.state = self.mapper.initial_state(s.tempo.bpm, s.tempo.beats_per_bar)
        self._remember_mtimes()
        self._stage("mappings", t, ", ".join(str(p) for p in s.mappings))

        if s.folder.path is not None:
            t = time.monotonic()
            from livegen.output.folder import FolderWriter

            self.folder = FolderWriter(s.folder.path, subtype=s.folder.subtype, sidecar=s.folder.sidecar)
            self._stage("folder", t, str(s.folder.path))

        if s.osc.enabled:
            t = time.monotonic()
            self.osc = osc_mod.OscServer(s.osc.host, s.osc.port, self._on_osc, self._on_malformed,
                                         allow=s.osc.allow)
            host, port = await self.osc.start()
            self._stage("osc", t, f"listening on {host}:{port}")

        if s.midi.enabled:
            t = time.monotonic()
            from livegen.control.midi import MidiInput, MidiUnavailable

            midi = MidiInput(asyncio.get_running_loop(), self._on_midi, MidiEvent, virtual=s.midi.virtual,
                             port_name=s.midi.port_name, connect=s.midi.connect, api=s.midi.api)
            try:
                names = midi.open()
                self.midi = midi
                self._stage("midi", t, f"{midi.api}: {', '.join(names) or 'no ports'}")
            except MidiUnavailable as exc:
                midi.close()
                log.warning("MIDI disabled: %s", exc)

        t = time.monotonic()
        options = wk.WorkerOptions(
            queue_size=s.engine.queue_size,
            warmup_seconds=tuple(s.engine.warmup_seconds),
            finish_running_on_shutdown=s.engine.finish_running_on_shutdown,
            fade_seconds=s.audio.fade_ms / 1000.0,
            default_model=s.default_model,
            model_kwargs=engine_defaults(s),
        )
        self.worker = wk.Worker(self.loaders, options, self._on_worker, asyncio.get_running_loop())
        self.worker.start()
        ready = asyncio.ensure_future(self._ready.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        for f in (ready, stop):
            f.cancel()
        if self._fatal is not None or not self._ready.is_set():
            return
        self._stage("models", t, ", ".join(self.worker.models))
        if s.audio.enabled:  # after loading: the loader's Python work would starve the callback
            t = time.monotonic()
            from livegen.output.player import Player

            self.player = Player(s.audio, s.tempo)
            try:
                self.player.start()
            except Exception as exc:  # sounddevice.PortAudioError, ValueError for a bad device
                self.player = None
                raise OSError(f"cannot open the audio output {s.audio.device!r}: {exc} "
                              "(see `livegen devices`; on Linux without sound hardware: bin/livegen-jack-dummy)"
                              ) from exc
            self._stage("audio", t, f"{s.audio.sample_rate} Hz, {s.audio.channels} ch, device {s.audio.device}")
        self.ready_at = time.monotonic()
        log.info("ready in %.2f s", self.ready_at - self._t0)
        self._push(osc_mod.READY)
        self._tasks.append(asyncio.ensure_future(self._watch_mappings()))
        if s.prerender.enabled:
            from livegen.output.prerender import PrerenderCache

            self.prerender = PrerenderCache(s.prerender.memory_mb, s.prerender.disk_mb, s.prerender.directory,
                                            s.prerender.variations, s.tempo.bpm)
            self._tasks.append(asyncio.ensure_future(self._prerender_when_idle()))
        if s.osc.status_port is not None:
            self._tasks.append(asyncio.ensure_future(self._push_status_periodically()))

    async def _shutdown(self) -> None:
        t = time.monotonic()
        for task in self._tasks:
            task.cancel()
        if self.osc is not None:
            self.osc.close()
        if self.midi is not None:
            self.midi.close()
        if self.worker is not None:
            joined = await asyncio.get_running_loop().run_in_executor(None, self.worker.close, None, 1.0)
            if not joined:
                log.warning("the generation thread is still busy; exiting without it")
            for _ in range(3):  # let the worker's last events (a finished clip) reach _deliver
                await asyncio.sleep(0)
        if self._pending:
            await asyncio.wait(self._pending, timeout=0.6)
        self._write_pool.shutdown(wait=True)  # writes are atomic: let the last one finish or clean up
        self._play_pool.shutdown(wait=False, cancel_futures=True)
        if self.player is not None:
            self.player.close()
        log.info("stopped in %.2f s", time.monotonic() - t)

    # ------------------------------------------------------------------ replies
    def _targets(self, origin: str | None) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        addr = parse_origin(origin)
        if addr is not None and self.settings.osc.reply:
            out.append(addr)
        out.extend(sorted(self.subscribers))
        if self.settings.osc.status_port is not None:
            out.append((self.settings.osc.status_host, self.settings.osc.status_port))
        return list(dict.fromkeys(out))

    def _send(self, origin: str | None, address: str, *args: Any) -> None:
        if self.osc is None:
            return
        for target in self._targets(origin):
            self.osc.send(target, address, *args)

    def _push(self, address: str, *args: Any) -> None:
        self._send(None, address, *args)

    def _reply(self, sender: tuple[str, int] | None, address: str, *args: Any) -> None:
        if self.osc is not None and sender is not None and self.settings.osc.reply:
            self.osc.send(sender, address, *args)

    def _error(self, origin: str | None, reason: str, job: int | None = None) -> None:
        log.warning("error%s: %s", f" (job {job})" if job is not None else "", reason)
        if job is None:
            self._send(origin, osc_mod.ERROR, reason)
        else:
            self._send(origin, osc_mod.ERROR, job, reason)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        player = self.player.stats() if self.player is not None else {}
        early = int(EARLY_UNDERFLOW_SECONDS * self.settings.audio.sample_rate)
        underflows = int(player.get("underflows", 0))
        late = underflows if player.get("last_underflow_frame", -1) >= early else 0
        return {
            "ready": self.ready_at is not None,
            "worker": self.worker.stats() if self.worker is not None else {},
            "audio": player,
            "underflows": underflows,
            "underflows_after_start": late,
            "bpm": float(self.state.params.get("bpm") or self.settings.tempo.bpm),
            "bank": self.state.bank,
            "clips_played": self.clips_played,
            "files_written": self.files_written,
            "osc": {"received": self.osc.received, "malformed": self.osc.malformed,
                    "rejected": self.osc.rejected} if self.osc is not None else {},
            "midi": {"api": self.midi.api, "ports": self.midi.port_names,
                     "received": self.midi.received} if self.midi is not None else {},
            "prerender": self.prerender.stats() if self.prerender is not None else {},
            "uptime": time.monotonic() - self._t0,
        }

    def _status_args(self) -> list[Any]:
        st = self.status()
        w = st["worker"]
        running = w.get("running")
        return [int(st["ready"]), int(w.get("queued", 0)), -1 if running is None else int(running),
                int(w.get("done", 0)), int(w.get("failed", 0)), int(st["underflows_after_start"]),
                float(st["bpm"]), json.dumps(st, default=str)]

    async def _push_status_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            port = self.settings.osc.status_port
            if self.osc is not None and port is not None:
                self.osc.send((self.settings.osc.status_host, port), osc_mod.STATUS, *self._status_args())

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
                self.reload(None)

    def reload(self, origin: str | None) -> bool:
        """Reload the mapping files; an invalid file keeps the old mapping and reports why."""
        try:
            mapper = Mapper.from_files(self.settings.mappings)
        except (MappingError, OSError) as exc:
            errors = getattr(exc, "errors", None) or [str(exc)]
            for line in errors:
                log.warning("mapping reload refused: %s", line)
            self._error(origin, "mapping reload refused, the old mapping stays: " + "; ".join(errors))
            return False
        self.mapper = mapper
        fresh = mapper.initial_state(self.state.params.get("bpm"), self.state.params.get("beats_per_bar"))
        for key in fresh.params:  # keep what performers set since start-up
            fresh.params[key] = self.state.params.get(key, fresh.params[key])
        fresh.knobs = self.state.knobs
        fresh.bank = min(self.state.bank, max(0, len(mapper.banks) - 1))
        self.state = fresh
        log.info("mappings reloaded: %s", ", ".join(str(p) for p in self.settings.mappings))
        self._send(origin, osc_mod.ACK, 0, "mappings reloaded")
        return True

    # ------------------------------------------------------------------ inputs
    def _on_malformed(self, sender: tuple[str, int], reason: str) -> None:
        self._error(f"osc:{sender[0]}:{sender[1]}", reason)

    def _on_osc(self, address: str, args: tuple, sender: tuple[str, int]) -> None:
        origin = f"osc:{sender[0]}:{sender[1]}"
        actions = self.mapper.handle(OscEvent(address, args), self.state) if self.mapper else []
        if any(not isinstance(a, Reject) for a in actions):
            self._perform(actions, origin)  # a mapping rule claimed this address
            return
        try:
            command = osc_mod.parse_command(address, args)
        except osc_mod.OscArgError as exc:
            if actions:  # the mapping's own complaint is more specific
                self._perform(actions, origin)
            else:
                self._error(origin, str(exc))
            return
        if command is None:
            if actions:
                self._perform(actions, origin)
            else:
                self._error(origin, f"unknown address {address} (no built-in address or mapping rule matches)")
            return
        self._command(command, origin, sender)

    def _on_midi(self, event: MidiEvent) -> None:
        if self.mapper is not None:
            self._perform(self.mapper.handle(event, self.state), f"midi:{event.type}")

    def _command(self, cmd: osc_mod.Command, origin: str, sender: tuple[str, int]) -> None:
        v = cmd.values
        if cmd.verb == "generate":
            overrides: dict[str, Any] = {"prompt": v["prompt"]}
            if "seed" in v:
                overrides["seed"] = v["seed"] if v["seed"] >= 0 else None  # negative: a random seed
            if "seconds" in v:
                overrides["seconds"] = v["seconds"]
            self.generate(self.request_from_state(**overrides), origin)
        elif cmd.verb == "trigger":
            self._perform([Trigger(v["slot"])], origin)
        elif cmd.verb == "stop":
            self._perform([Stop(v["slot"])], origin)
            self._send(origin, osc_mod.ACK, 0, "stopped" if v["slot"] is None else f"stopped slot {v['slot']}")
        elif cmd.verb == "cancel":
            ids = self.worker.cancel_slot(None) if v["job"] is None else (
                [v["job"]] if self.worker.cancel(v["job"]) else [])
            if v["job"] is not None and not ids:
                self._error(origin, f"job {v['job']} is neither queued nor running")
        elif cmd.verb == "set":
            if v["name"] == "bank":
                self._perform([SelectBank(v["value"])], origin)
            else:
                self._perform([SetParam(v["name"], v["value"])], origin)
        elif cmd.verb == "status":
            self._reply(sender, osc_mod.STATUS, *self._status_args())
        elif cmd.verb == "reload":
            self.reload(origin)
        elif cmd.verb == "subscribe":
            target = (sender[0], v["port"] or sender[1])
            self.subscribers.add(target)
            self._reply(target, osc_mod.ACK, 0, f"subscribed {target[0]}:{target[1]}")
            if self.ready_at is not None:
                self._reply(target, osc_mod.READY)

    # ------------------------------------------------------------------ actions
    def _perform(self, actions: list[Any], origin: str) -> None:
        for action in actions:
            try:
                self._perform_one(action, origin)
            except Exception as exc:  # noqa: BLE001 - one bad action must not stop the daemon
                log.exception("action %r failed", action)
                self._error(origin, f"{type(action).__name__} failed: {exc}")

    def _perform_one(self, action: Any, origin: str) -> None:
        if isinstance(action, (KnobMoved, ClockTick)):
            apply(action, self.state)
        elif isinstance(action, Reject):
            self._error(origin, action.reason)
        elif isinstance(action, SetParam):
            self.set_param(action.name, action.value, origin)
        elif isinstance(action, SelectBank):
            n = len(self.mapper.banks) if self.mapper is not None else 0
            if not 0 <= action.bank < max(n, 1):
                self._error(origin, f"bank {action.bank} does not exist (the mapping has {n})")
                return
            apply(action, self.state)
        elif isinstance(action, Generate):
            self.generate(action.request, origin)
        elif isinstance(action, Trigger):
            self.trigger(action.slot, origin)
        elif isinstance(action, Stop):
            if self.player is not None:
                self.player.stop_slot(action.slot)
            if self.worker is not None:
                self.worker.cancel_slot(action.slot)
        elif isinstance(action, Reroll):
            self.reroll(action.slot, origin)

    def set_param(self, name: str, value: Any, origin: str) -> None:
        field = PARAM_FIELDS.get(name, name)
        if name == "negative_prompt" and value == "":
            value = None
        if name == "seed" and isinstance(value, int) and value < 0:
            value = None  # a negative seed means "a new random seed every time"
        if name in ("seconds", "bars") and value == 0:
            value = None  # 0 clears a duration (then the other one, or the model's default, applies)
        if value is not None and field in {f.name for f in dataclasses.fields(Request)} and field != "prompt":
            try:  # check the value alone against the daemon's limits before keeping it
                Request("check", **{field: value}).validate(self.settings.engine)
            except RequestError as exc:
                self._error(origin, str(exc))
                return
            except TypeError:
                pass
        if name == "prompt" and isinstance(value, str) and len(value) > self.settings.engine.max_prompt_chars:
            self._error(origin, f"The prompt has {len(value)} characters; the limit is "
                                f"{self.settings.engine.max_prompt_chars}.")
            return
        apply(SetParam(name, value), self.state)
        if name in ("bpm", "beats_per_bar") and self.player is not None:
            self.player.set_bpm(float(self.state.params.get("bpm") or self.settings.tempo.bpm),
                                int(self.state.params.get("beats_per_bar") or self.settings.tempo.beats_per_bar))

    def request_from_state(self, **overrides: Any) -> Request:
        p = self.state.params
        fields: dict[str, Any] = {
            "prompt": p.get("prompt") or "",
            "model": p.get("model") or "default",
            "negative_prompt": p.get("negative_prompt") or None,
            "seed": p.get("seed") if (p.get("seed") is None or p.get("seed") >= 0) else None,
            "seconds": p.get("seconds"),
            "bars": p.get("bars"),
            "bpm": p.get("bpm"),
            "beats_per_bar": int(p.get("beats_per_bar") or self.settings.tempo.beats_per_bar),
            "steps": p.get("steps"),
            "cfg_scale": p.get("cfg"),
            "sampler": p.get("sampler"),
            "loop": bool(p.get("loop")),
            "gain": float(p.get("gain") if p.get("gain") is not None else 1.0),
            "launch": p.get("launch") or "bar",
            "priority": int(p.get("priority") or 0),
        }
        if "seconds" in overrides:
            fields["bars"] = None
        elif fields["seconds"] is not None and fields["bars"] is not None:
            fields["seconds"] = None  # bars follow the tempo
        fields.update(overrides)
        return Request(**fields)

    def complete(self, request: Request, origin: str) -> Request:
        """Fill what the request leaves open from the model's settings and the tempo."""
        s = self.settings
        try:
            name = s.default_model if request.model in ("", "default") else request.model
            m = s.model(name)
        except KeyError as exc:
            raise RequestError(str(exc.args[0])) from None
        changes: dict[str, Any] = {"model": name, "origin": origin}
        if request.seconds is None and request.bars is None:
            changes["seconds"] = m.seconds
        if request.bpm is None:
            changes["bpm"] = float(self.state.params.get("bpm") or s.tempo.bpm)
        for field, default in (("steps", m.steps), ("cfg_scale", m.cfg_scale), ("sampler", m.sampler),
                               ("negative_prompt", m.negative_prompt)):
            if getattr(request, field) is None and default is not None:
                changes[field] = default
        if self.folder is not None and "folder" not in request.outputs:
            changes["outputs"] = (*request.outputs, "folder")  # folder.path set: every clip is kept
        elif "folder" in request.outputs and self.folder is None:
            raise RequestError("This request asks for the folder output but folder.path is not set.")
        out = request.replace(**changes)
        out.validate(s.engine)
        return out

    def generate(self, request: Request, origin: str) -> int | None:
        if self.worker is None or self.ready_at is None:
            self._error(origin, "the models are still loading; try again after /livegen/ready")
            return None
        try:
            request = self.complete(request, origin)
            if self.prerender is not None and request.seed is None:
                cached = self.prerender.get(request)
                if cached is not None:
                    return self._deliver_cached(request, cached)
            job, _ = self.worker.submit(request)
        except (RequestError, wk.QueueFull, wk.UnknownModel, RuntimeError) as exc:
            self._error(origin, str(exc))
            return None
        self.jobs[job.id] = request
        if request.slot is not None:
            self.slot_requests[request.slot] = request
        self._send(origin, osc_mod.ACK, job.id, f"queued: {request.prompt[:100]}")
        return job.id

    def _deliver_cached(self, request: Request, cached: Clip) -> int:
        job = self.worker.reserve_id()
        clip = dataclasses.replace(cached, request=request.replace(seed=cached.seed), job_id=job,
                                   created=time.time(), render_seconds=0.0)
        if request.slot is not None:
            self.slot_requests[request.slot] = request
        self.jobs[job] = clip.request
        log.info("job %d served from the pre-render cache: %r", job, request.prompt[:80])
        self._send(request.origin, osc_mod.ACK, job, f"cached: {request.prompt[:100]}")
        self._deliver(clip)
        return job

    async def _prerender_when_idle(self) -> None:
        """Keep variations of fixed-prompt pads ready: render what the cache wants while idle."""
        while True:
            await asyncio.sleep(0.25)
            if self.worker is None or self.mapper is None or not self.worker.idle() or self.prerender_jobs:
                continue
            targets = []
            for r in self.mapper.fixed_requests(self.state):
                try:
                    targets.append(self.complete(r, "prerender"))
                except RequestError as exc:
                    log.debug("no pre-rendering for %r: %s", r.prompt, exc)
            self.prerender.set_targets(targets)
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

    def trigger(self, slot: int, origin: str) -> None:
        if slot in self.slot_clips and self.player is not None:
            audio, request = self.slot_clips[slot]
            self._play_async(slot, audio, request)
            self._send(origin, osc_mod.ACK, 0, f"triggered slot {slot}")
        elif slot in self.slot_clips:
            self._error(origin, "audio output is disabled (audio.enabled: false)")
        else:
            self._error(origin, f"slot {slot} has no clip yet; generate one for it first")

    def reroll(self, slot: int | None, origin: str) -> None:
        if slot is None:
            if not self.jobs:
                self._error(origin, "nothing to reroll yet")
                return
            request = self.jobs[max(self.jobs)]
        elif slot in self.slot_requests:
            request = self.slot_requests[slot]
        else:
            self._error(origin, f"slot {slot} has no request to reroll yet")
            return
        self.generate(request.replace(seed=None), origin)

    # ------------------------------------------------------------------ worker events
    def _on_worker(self, event: wk.WorkerEvent) -> None:
        kind = event.kind
        origin = event.request.origin if event.request is not None else None
        if origin == "prerender" and event.job_id in self.prerender_jobs:
            if kind == wk.DONE:
                self.prerender.put(self.prerender_jobs.pop(event.job_id), event.clip)
                log.info("pre-rendered job %d (%.2f s): %r", event.job_id, event.seconds, event.clip.request.prompt)
            elif kind in (wk.FAILED, wk.CANCELLED, wk.REPLACED):
                self.prerender_jobs.pop(event.job_id, None)
                log.info("pre-render job %d %s: %s", event.job_id, kind, event.reason)
            return
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
            self.exit_code = 1
            log.error("the models could not be loaded: %s", event.reason)
            self._push(osc_mod.ERROR, f"the models could not be loaded: {event.reason}")
            self._stop.set()
        elif kind == wk.STARTED:
            log.info("job %d started: %r", event.job_id, event.request.prompt[:80])
        elif kind == wk.PROGRESS:
            self._send(origin, osc_mod.PROGRESS, event.job_id, event.step, event.total)
        elif kind in (wk.CANCELLED, wk.REPLACED):
            self._error(origin, f"cancelled: {event.reason}", event.job_id)
        elif kind == wk.FAILED:
            self._error(origin, f"generation failed: {event.reason}", event.job_id)
        elif kind == wk.DONE:
            log.info("job %d done in %.2f s (%.2f s of audio)", event.job_id, event.seconds, event.clip.seconds)
            self._deliver(event.clip)

    def _deliver(self, clip: Clip) -> None:
        request = clip.request
        loop = asyncio.get_running_loop()
        if "play" in request.outputs and self.player is not None and not self._stop.is_set():
            slot = request.slot if request.slot is not None else (
                UNSLOTTED_BASE + clip.job_id % max(1, self.settings.audio.voices))
            fut = loop.run_in_executor(self._play_pool, self._prepare_and_play, slot, clip)
            self._track(fut, request.origin, clip.job_id)
        if "folder" in request.outputs and self.folder is not None:
            fut = loop.run_in_executor(self._write_pool, self._write, clip)
            self._track(fut, request.origin, clip.job_id, done_reply=True, clip=clip)
        else:
            self._send(request.origin, osc_mod.DONE, clip.job_id, "", float(clip.seconds))

    def _track(self, fut: asyncio.Future, origin: str | None, job: int, done_reply: bool = False,
               clip: Clip | None = None) -> None:
        self._pending.add(fut)

        def finished(f: asyncio.Future) -> None:
            self._pending.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._error(origin, f"{type(exc).__name__}: {exc}", job)
            elif done_reply and clip is not None:
                self._send(origin, osc_mod.DONE, job, str(f.result()), float(clip.seconds))

        fut.add_done_callback(finished)

    def _stream_audio(self, clip: Clip) -> np.ndarray:
        from livegen.audio_io import match_channels, resample

        audio = clip.audio
        if clip.sample_rate != self.player.sample_rate:
            audio = resample(audio, clip.sample_rate, self.player.sample_rate)
        return np.ascontiguousarray(match_channels(audio, self.player.channels), dtype=np.float32)

    # play pool thread
    def _prepare_and_play(self, slot: int, clip: Clip) -> int:
        audio = self._stream_audio(clip)
        start = self.player.schedule(slot, audio, loop=clip.request.loop, gain=clip.request.gain,
                                     launch=clip.request.launch)
        if clip.request.slot is not None:
            self.slot_clips[clip.request.slot] = (audio, clip.request)
        self.clips_played += 1
        return start

    def _play_async(self, slot: int, audio: np.ndarray, request: Request) -> None:
        fut = asyncio.get_running_loop().run_in_executor(
            self._play_pool, lambda: self.player.schedule(slot, audio, loop=request.loop, gain=request.gain,
                                                          launch=request.launch))
        self._track(fut, request.origin, 0)

    # write pool thread
    def _write(self, clip: Clip) -> Path:
        path = self.folder.write(clip)
        self.files_written += 1
        return path
