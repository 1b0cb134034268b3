"""The generation thread: the only thread in the daemon that runs MLX.

It loads the configured engines (through zero-argument loader callables, called on this thread),
evaluates their weights, warms them up, then serves a bounded priority queue:

- higher ``Request.priority`` first, then first come first served;
- per-slot coalescing: a newer request for a slot replaces an older one that is still queued;
- cancellation of queued jobs (removed at once) and of the running one (through the ``cancel``
  callable the engine checks between sampler steps);
- one job's failure is reported and the thread carries on.

Everything the thread reports reaches the asyncio loop as a :class:`WorkerEvent` through
``loop.call_soon_threadsafe``; audio crosses the thread boundary as numpy only.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from livegen.errors import Cancelled
from livegen.musical import source_kwargs
from livegen.output.loudness import normalize
from livegen.output.loudness import preload as preload_levels
from livegen.request import Clip, Request
from livegen.tempo import fit_to_length

log = logging.getLogger("livegen.worker")

# Event kinds, in the order a job meets them.
LOADING, LOADED, WARMED, READY, FATAL = "loading", "loaded", "warmed", "ready", "fatal"
DEVICE = "device"
QUEUED, REPLACED, STARTED, PROGRESS = "queued", "replaced", "started", "progress"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"


class Engine(Protocol):
    sample_rate: int

    def generate(self, prompt: str, seconds: float, **kwargs: Any) -> np.ndarray: ...


class QueueFull(RuntimeError):
    """The queue holds ``queue_size`` jobs already."""


class UnknownModel(ValueError):
    """A request names a model the worker has not loaded."""


@dataclass(frozen=True)
class WorkerEvent:
    kind: str
    job_id: int | None = None
    request: Request | None = None
    step: int = 0
    total: int = 0
    clip: Clip | None = None
    reason: str = ""
    model: str | None = None
    seconds: float = 0.0  # stage duration (loaded/warmed/ready) or render time (done)


@dataclass
class Job:
    id: int
    request: Request
    submitted: float
    state: str = QUEUED
    cancel_event: threading.Event = field(default_factory=threading.Event)
    decoded: tuple[int, int] | None = None  # (pieces done, total) once the engine decodes
    sink: Any = None  # a livegen.output.stream_sink.ChunkSink: the job plays while it is generated


def _render_nice() -> int:
    """``LIVEGEN_RENDER_NICE`` (0-19) if set, else 10: see lower_thread_priority and
    docs/benchmarks.md (under other load the drop costs the render its share of the CPU)."""
    env = os.environ.get("LIVEGEN_RENDER_NICE", "").strip()
    if not env:
        return 10
    if not env.isdigit() or int(env) > 19:
        raise ValueError(f"LIVEGEN_RENDER_NICE must be a whole number from 0 to 19, got {env!r}")
    return int(env)


RENDER_NICE = _render_nice()


def lower_thread_priority(increment: int) -> int | None:
    """Lower the calling thread's CPU priority by ``increment`` nice levels (Linux only); returns
    the new nice value, or None when nothing changed.

    Why: on a machine with few cores, rendering (MLX's compute thread keeps a core busy through a
    request storm) and the event loop compete for the CPU at the same priority, and the loop's
    replies wait behind it (status p99 56-91 ms in 30 s storms of 1,000 msg/s on 2 cores; 16-55 ms with
    the render 10 levels lower, docs/reliability.md). Threads the calling thread starts afterwards
    inherit the value; MLX starts its compute thread at the first evaluation, on this thread. A
    higher nice value never needs privileges. Elsewhere nothing is done: macOS's ``setpriority``
    acts on processes, not threads.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("could not lower the generation thread's priority: %s", exc)
        return None
    return nice


def release_mlx_streams() -> None:
    """Destroy the MLX streams the calling thread created (``mx.clear_streams``), if MLX is loaded.

    MLX asks for this at the end of every thread that used it and of the main thread: left to the
    thread-local destructors, its clean-up runs after the interpreter has finalised and the process
    dies with "terminate called without an active exception" (SIGABRT) or a segfault
    (ml-explore/mlx#4327, #4110; seen here as exit status -6 of `livegen serve` and 139 of pytest)."""
    mx = sys.modules.get("mlx.core")
    clear = getattr(mx, "clear_streams", None)
    if clear is not None:
        try:
            clear()
        except Exception:  # noqa: BLE001 - at teardown a failed clean-up must not mask the exit status
            log.debug("mx.clear_streams failed", exc_info=True)


@dataclass(frozen=True)
class WorkerOptions:
    queue_size: int = 8
    warmup_seconds: Sequence[float] = ()
    finish_running_on_shutdown: bool = False
    fade_seconds: float = 0.005
    default_model: str | None = None  # used for Request.model == "default"; else the first loaded
    # per-model keyword arguments for ``generate`` besides the request's (e.g. MusicGen's top_k)
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Linux: the generation thread (and MLX's compute thread, which it starts) runs this many nice
    # levels below the rest of the daemon, see lower_thread_priority; 0 keeps it equal
    render_nice: int = RENDER_NICE
    levels: Any = None  # a LevelsSettings (livegen.settings); None or normalize false: clips as rendered
    # the audio callback runs Python (audio.backend: python): generation keeps the compromises of
    # livegen.device.realtime(); False (rtmixer's C callback, or no audio): full speed
    python_audio: bool = True


def generate_kwargs(engine: Any, request: Request, seconds: float,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Map a Request (plus the model's ``extra`` settings) onto what ``engine.generate`` accepts.

    Only parameters the engine names are passed (Stable Audio takes ``steps``/``cfg_scale``/
    ``sampler``, MusicGen ``guidance_scale``); ``None`` values are left to the engine's defaults.
    """
    params = inspect.signature(engine.generate).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted: dict[str, Any] = {
        **(extra or {}),
        "seconds": seconds,
        "seed": request.seed,
        "negative_prompt": request.negative_prompt,
        "steps": request.steps,
        "sampler": request.sampler,
        **source_kwargs(engine, request, seconds),  # extend / vary: the slot's clip (livegen.musical)
    }
    if "cfg_scale" in params or accepts_any:
        wanted["cfg_scale"] = request.cfg_scale
    elif "guidance_scale" in params:
        wanted["guidance_scale"] = request.cfg_scale
    out: dict[str, Any] = {}
    for name, value in wanted.items():
        if value is None and name != "seconds":
            continue
        if name in params or accepts_any:
            out[name] = value
    return out


def describe_error(exc: BaseException) -> str:
    """One sentence for a user: livegen's own errors carry one; others get their text (the
    traceback goes to the log at debug level)."""
    from livegen.errors import LivegenError

    text = str(exc).strip() or exc.__class__.__name__.lower()
    if isinstance(exc, LivegenError):
        return text
    if isinstance(exc, MemoryError):
        return "out of memory while rendering"
    return text if text.endswith(".") else text + "."


def _eval_weights(engine: Any) -> None:
    """Evaluate every lazily loaded MLX parameter the engine holds (on this thread)."""
    import mlx.core as mx
    import mlx.nn as nn

    modules = [v for v in vars(engine).values() if isinstance(v, nn.Module)]
    for module in modules:
        mx.eval(module.parameters())


class Worker:
    """A generation thread serving a bounded priority queue (see the module docstring).

    ``loaders`` maps a model name to a zero-argument callable returning the engine; it is called
    on the worker thread. ``notify`` receives every :class:`WorkerEvent` on the asyncio loop.
    Public methods may be called from any thread; events always arrive on the loop.
    """

    def __init__(
        self,
        loaders: dict[str, Callable[[], Engine]],
        options: WorkerOptions,
        notify: Callable[[WorkerEvent], None],
        loop: Any,
    ) -> None:
        if not loaders:
            raise ValueError("at least one model must be configured")
        self._loaders = dict(loaders)
        self._options = options
        self._notify = notify
        self._loop = loop
        self._engines: dict[str, Engine] = {}
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Job]] = []
        self._queued: dict[int, Job] = {}
        self._running: Job | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._stopping = False
        self._ready = False
        # Not a daemon thread: it is joined at shutdown (``close``/``join``). A daemon thread still
        # inside ``mx.eval`` when the interpreter finalises is ended by CPython from under
        # nanobind's noexcept GIL release, and the process aborts (std::terminate); the running
        # job is cancelled instead and polls its cancel between sampler steps and decode tiles.
        self._thread = threading.Thread(target=self._run, name="livegen-generation", daemon=False)
        self._counts_lock = threading.Lock()
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "replaced": 0}
        self.last_render_seconds: float | None = None

    # ---- loop side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def models(self) -> list[str]:
        return list(self._loaders)

    def resolve_model(self, name: str) -> str:
        if name in ("", "default"):
            return self._options.default_model or next(iter(self._loaders))
        if name not in self._loaders:
            known = ", ".join(self._loaders)
            raise UnknownModel(f"unknown model {name!r}: the daemon has {known}")
        return name

    @property
    def engines(self) -> dict[str, Engine]:
        """The loaded engines (complete once READY was emitted); read their attributes only."""
        return dict(self._engines)

    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    def reserve_id(self) -> int:
        """A job id for a result that does not need rendering (e.g. a pre-rendered clip)."""
        return next(self._ids)

    def idle(self) -> bool:
        with self._cond:
            return self._ready and self._running is None and not self._queued

    def submit(self, request: Request, sink: Any = None) -> tuple[Job, list[Job]]:
        """Queue a request; returns the job and the queued jobs it replaced (same slot).

        When the queue is full the oldest of the lowest-priority queued jobs is dropped (reported
        as cancelled); :class:`QueueFull` is raised only when every queued job ranks higher.
        Raises :class:`UnknownModel`, and ``RuntimeError`` while stopping.
        """
        self.resolve_model(request.model)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the daemon is shutting down")
            replaced: list[Job] = []
            dropped: list[Job] = []
            if request.slot is not None:
                replaced = [j for j in self._queued.values() if j.request.slot == request.slot]
                for old in replaced:
                    self._remove_queued(old, REPLACED)
            if len(self._queued) >= self._options.queue_size:
                # full: the oldest of the lowest-priority jobs drops, unless the newcomer ranks lower
                victim = min(self._queued.values(), key=lambda j: (j.request.priority, j.id))
                if victim.request.priority > request.priority:
                    raise QueueFull(
                        f"the generation queue is full ({self._options.queue_size} jobs of higher priority)"
                    )
                self._remove_queued(victim, CANCELLED)
                dropped.append(victim)
            job = Job(id=next(self._ids), request=request, submitted=time.monotonic(), sink=sink)
            self._queued[job.id] = job
            heapq.heappush(self._heap, (-request.priority, next(self._seq), job))
            self._cond.notify_all()
        for old in replaced:
            self._count("replaced")
            self._emit(WorkerEvent(REPLACED, old.id, old.request, reason=f"replaced by job {job.id}"))
        for old in dropped:
            self._count("cancelled")
            reason = f"dropped for job {job.id}: queue full"
            self._emit(WorkerEvent(CANCELLED, old.id, old.request, reason=reason))
        self._emit(WorkerEvent(QUEUED, job.id, request))
        return job, replaced

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; True if it was found."""
        with self._cond:
            job = self._queued.get(job_id)
            if job is not None:
                self._remove_queued(job, CANCELLED)
            elif self._running is not None and self._running.id == job_id:
                self._running.cancel_event.set()
                return True
            else:
                return False
        self._count("cancelled")
        self._emit(WorkerEvent(CANCELLED, job.id, job.request, reason="cancelled while queued"))
        return True

    def cancel_slot(self, slot: int | None) -> list[int]:
        """Cancel every queued/running job of ``slot`` (all jobs when ``slot`` is None)."""
        with self._cond:
            ids = [j.id for j in self._queued.values() if slot is None or j.request.slot == slot]
            if self._running is not None and (slot is None or self._running.request.slot == slot):
                ids.append(self._running.id)
        return [i for i in ids if self.cancel(i)]

    def stats(self) -> dict[str, Any]:
        with self._cond:
            running = self._running.id if self._running is not None else None
            decoded = self._running.decoded if self._running is not None else None
            queued = len(self._queued)
        return {"queued": queued, "queue_size": self._options.queue_size, "running": running,
                "decoding": list(decoded) if decoded is not None else None,
                "ready": self._ready, **self.counts,
                "last_render_seconds": self.last_render_seconds}

    def close(self, finish_running: bool | None = None, timeout: float = 1.5) -> bool:
        """Stop intake, cancel queued jobs, finish or cancel the running one; True if joined."""
        if finish_running is None:
            finish_running = self._options.finish_running_on_shutdown
        with self._cond:
            self._stopping = True
            queued = list(self._queued.values())
            for job in queued:
                self._remove_queued(job, CANCELLED)
            if self._running is not None and not finish_running:
                self._running.cancel_event.set()
            self._cond.notify_all()
        for job in queued:
            self._count("cancelled")
            self._emit(WorkerEvent(CANCELLED, job.id, job.request, reason="the daemon is shutting down"))
        if not self._thread.is_alive():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the generation thread to end (after ``close``); True when it has."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self.counts[name] += 1

    def _remove_queued(self, job: Job, state: str) -> None:
        # caller holds self._cond; the heap entry is skipped lazily when popped
        job.state = state
        self._queued.pop(job.id, None)

    # ---- worker thread ---------------------------------------------------------------------
    def _emit(self, event: WorkerEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._notify, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            release_mlx_streams()  # this thread's MLX streams, before it ends (see release_mlx_streams)

    def _serve(self) -> None:
        lower_thread_priority(self._options.render_nice)  # before MLX starts its threads from here
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which exits
            log.debug("model loading failed", exc_info=True)
            self._emit(WorkerEvent(FATAL, reason=describe_error(exc)))
            with self._cond:
                self._stopping = True
            return
        self._ready = True
        while True:
            with self._cond:
                job = self._next_job()
                if job is None:
                    return
                self._running = job
                job.state = "running"
            try:
                self._execute(job)
            finally:
                with self._cond:
                    self._running = None

    def _next_job(self) -> Job | None:
        # caller holds self._cond
        while True:
            while self._heap:
                _, _, job = heapq.heappop(self._heap)
                if job.id in self._queued:
                    del self._queued[job.id]
                    return job
            if self._stopping:
                return None
            self._cond.wait()

    def _load(self) -> None:
        start_all = time.monotonic()
        # Which MLX backend and BLAS this thread computes with, and what they deliver (a small GEMM,
        # measured here because this is the thread that runs MLX).
        from livegen import device

        info = device.detect()
        # audio from a Python callback: one core stays free and MLX keeps its small cache (see
        # livegen.device.configure_mlx); a C callback (rtmixer) or no audio: the batch settings
        python_audio = self._options.python_audio
        applied = device.configure_mlx(realtime=python_audio, daemon=not python_audio, force=True)
        gflops = device.gemm_gflops(n=512, repeats=2)
        threads = applied.get("blas_threads")
        threads_note = f", {threads} BLAS threads" if threads else ""
        cache = applied.get("cache_limit")
        threads_note += f", MLX cache {int(cache) >> 20} MiB" if cache else ", MLX cache default"
        threads_note += f" ({device.profile()})"
        self._emit(WorkerEvent(DEVICE, reason=f"{info.describe()}; fp32 GEMM {gflops:.0f} GFLOP/s{threads_note}",
                               seconds=time.monotonic() - start_all))
        if self._options.levels is not None and self._options.levels.normalize:
            preload_levels()  # now, not with the first clip while the stream plays (imports hold the GIL)
        for name, loader in self._loaders.items():
            if self._stopping:
                return
            self._emit(WorkerEvent(LOADING, model=name))
            t0 = time.monotonic()
            engine = loader()
            _eval_weights(engine)
            self._engines[name] = engine
            self._emit(WorkerEvent(LOADED, model=name, seconds=time.monotonic() - t0))
            if self._options.warmup_seconds and hasattr(engine, "warmup"):
                t0 = time.monotonic()
                window = getattr(engine, "max_seconds", None)
                lengths = [min(float(x), float(window)) if window else float(x)
                           for x in self._options.warmup_seconds]
                engine.warmup(lengths)
                self._emit(WorkerEvent(WARMED, model=name, seconds=time.monotonic() - t0))
        self._emit(WorkerEvent(READY, seconds=time.monotonic() - start_all))

    def _execute(self, job: Job) -> None:
        request = job.request
        model = self.resolve_model(request.model)
        engine = self._engines[model]
        self._emit(WorkerEvent(STARTED, job.id, request, model=model))
        t0 = time.monotonic()

        def progress(step: int, total: int) -> None:
            self._emit(WorkerEvent(PROGRESS, job.id, request, step=int(step), total=int(total)))

        def cancel() -> bool:
            return job.cancel_event.is_set()

        def decode_progress(done: int, total: int) -> None:
            if job.decoded is None:
                log.info("job %d decoding (%d pieces)", job.id, total)
            job.decoded = (int(done), int(total))

        try:
            sr = int(engine.sample_rate)
            fade = max(1, int(round(self._options.fade_seconds * sr)))
            # exact length: bars are rounded once on the whole length (the DAW sees whole bars)
            target = request.duration_samples(sr)
            # render a little more, so a loop's natural continuation can be crossfaded into its head
            seconds = (target + (2 * fade if request.loop else 0)) / sr
            window = getattr(engine, "max_seconds", None)
            if window is not None and request.loop:
                seconds = min(seconds, max(float(window), target / sr))
            # choose the seed here when the request leaves it open, so every clip's seed is known
            seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
            kwargs = generate_kwargs(engine, request.replace(seed=seed), seconds,
                                     self._options.model_kwargs.get(model))
            if job.cancel_event.is_set():
                raise Cancelled("cancelled before it started")
            levels = None
            lv = self._options.levels
            streamed = job.sink is not None and hasattr(engine, "generate_stream")
            if streamed:  # played while generated; the clip is what the sink got (livegen.engine.stream_exec)
                from livegen.engine.stream_exec import render_stream

                audio, levels = render_stream(engine, request.prompt, kwargs, job.sink, target, fade, request.loop,
                                              lv, progress, cancel)
            else:
                if "decode_progress" in inspect.signature(engine.generate).parameters:
                    kwargs["decode_progress"] = decode_progress
                audio = engine.generate(request.prompt, progress=progress, cancel=cancel, **kwargs)
            if job.cancel_event.is_set():
                raise Cancelled("cancelled while running")
            audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32))
            if audio.ndim == 1:
                audio = audio[None, :]
            if lv is not None and lv.normalize and not streamed:  # on the raw render, before the cut and the fades
                audio, levels = normalize(audio, sr, lv.target_lufs, lv.true_peak_dbtp, lv.max_gain_db,
                                          lv.max_limit_db)
                if levels.non_finite:
                    log.warning("job %d: the model produced %d non-finite samples (set to 0)", job.id,
                                levels.non_finite)
            if not streamed and (audio.shape[1] != target or request.loop):
                audio = fit_to_length(audio, target, fade, loop=request.loop)
            render = time.monotonic() - t0
            clip = Clip(request=request, audio=audio, sample_rate=sr, seed=int(seed), model=model,
                        job_id=job.id, created=time.time(), render_seconds=render, levels=levels)
        except Cancelled as exc:
            job.state = CANCELLED
            self._count("cancelled")
            self._emit(WorkerEvent(CANCELLED, job.id, request, reason=str(exc) or "cancelled", model=model))
            return
        except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the thread
            job.state = FAILED
            self._count("failed")
            log.debug("job %d failed:\n%s", job.id, traceback.format_exc())
            reason = describe_error(exc)
            log.warning("job %d failed: %s", job.id, reason)
            self._emit(WorkerEvent(FAILED, job.id, request, reason=reason, model=model))
            return
        job.state = DONE
        self._count("done")
        self.last_render_seconds = render
        self._emit(WorkerEvent(DONE, job.id, request, clip=clip, model=model, seconds=render))
