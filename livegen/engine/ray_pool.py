"""The render pool on Ray Serve: one deployment per model, each replica holding the pipeline warm.

A replica (:class:`PoolReplica`) runs the daemon's own generation worker
(:class:`livegen.engine.host.WorkerHost`, the settings' worker options), so a clip rendered there
equals the daemon's local render of the same request and seed, sample for sample. Its ``render``
method is a generator called with ``stream=True``; it yields small tuples:

* ``("started", pid)`` when the engine starts the job (``pid``: the replica's process),
* ``("progress", step, total)`` per sampler step,
* ``("begin", sample_rate, frames)`` then ``("chunk", array [C, N] float32)`` ... : the clip's audio,
  in order; for a streamed job (``stream=True``, the daemon's path for a played request) as the
  engine produces it, otherwise the finished clip cut into ``chunk_frames`` pieces,
* then exactly one of ``("done", meta)`` (seed, model, render seconds, levels), ``("failed",
  sentence)`` or ``("cancelled", sentence)``.

Job keys are idempotent: a call with the key of a job the replica is rendering follows that job
(from its first message), and one with the key of a recently finished job replays it; nothing is
rendered twice. A caller that goes away (the handle's generator cancelled) cancels the engine's
job once nobody else follows it.

``deploy`` starts the applications (``<name>-<model>``, deployment ``LivegenModel``) on a cluster
the caller is connected to; :func:`ray_env` sets what every Ray process here needs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
from typing import Any

import numpy as np

from livegen.engine import worker as wk

DEPLOYMENT = "LivegenModel"
CHUNK_FRAMES = 32768
KEEP_FINISHED = 4  # finished jobs a replica can replay (their audio is held)
PASSED_ENV = ("LIVEGEN_CACHE", "LIVEGEN_CPU_THREADS", "LIVEGEN_BLAS", "HF_HUB_OFFLINE", "HF_HOME")


def ray_env() -> None:
    """Ray settings for every process of ours: no token auth (a token left by one cluster turns
    auth on for the next), no usage reporting."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def app_name(name: str, model: str) -> str:
    return f"{name}-{model}"


class _Record:
    """Every message of one job, followed by any number of callers (on the replica's loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: list[tuple] = []
        self.finished = False
        self.followers = 0
        self.job_id: int | None = None
        self.streamed = False
        self._wake = asyncio.Event()

    def add(self, message: tuple) -> None:
        if message[0] == "begin":
            self.streamed = True
        self.messages.append(message)
        self._wake.set()

    def add_threadsafe(self, message: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.add, message)
        except RuntimeError:  # the replica is going away
            pass

    async def follow(self):  # noqa: ANN201 - an async generator of messages
        i = 0
        while True:
            while i < len(self.messages):
                yield self.messages[i]
                i += 1
            if self.finished:
                return
            self._wake.clear()
            await self._wake.wait()


class _ForwardSink:
    """The worker's streaming sink inside a replica: chunks go to the job's record."""

    def __init__(self, record: _Record) -> None:
        self.record = record

    def begin(self, sample_rate: int, total_frames: int) -> None:
        self.record.add_threadsafe(("begin", int(sample_rate), int(total_frames)))

    def write(self, chunk: np.ndarray) -> None:
        self.record.add_threadsafe(("chunk", np.array(chunk, dtype=np.float32, copy=True)))

    def end(self, ok: bool) -> None:  # the job's outcome follows as its own message
        pass


class PoolReplica:
    """The body of the ``LivegenModel`` deployment (see the module doc)."""

    def __init__(self, settings: Any, model: str) -> None:
        from livegen import _blas

        _blas.preload()  # the daemon's BLAS (livegen.cli does it there), before anything imports MLX
        from livegen.engine.host import WorkerHost
        from livegen.engine.loaders import build_loaders, worker_options

        one = dataclasses.replace(settings, models={model: settings.models[model]}, default_model=model)
        self.settings = one
        self.model = model
        self.pid = os.getpid()
        self.host = WorkerHost(build_loaders(one), worker_options(one, render_nice=0))
        self.host.wait_ready()
        self._records: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self.rendered = 0

    def info(self) -> dict[str, Any]:
        from livegen.limits import ModelCaps

        engine = self.host.worker.engines[self.model]
        return {"model": self.model, "pid": self.pid, "device": self.host.device, "rendered": self.rendered,
                "caps": ModelCaps.from_engine(self.model, engine, self.settings.models.get(self.model))}

    async def render(self, request: dict[str, Any], key: str, stream: bool = False,
                     chunk_frames: int = CHUNK_FRAMES):  # noqa: ANN201 - an async generator
        record = self._records.get(key)
        if record is None:
            record = self._start(request, key, stream, chunk_frames)
        record.followers += 1
        try:
            async for message in record.follow():
                yield message
        finally:
            record.followers -= 1
            if not record.finished and record.followers == 0 and record.job_id is not None:
                self.host.cancel(record.job_id)  # the caller went away: the engine stops

    def __del__(self) -> None:
        host = getattr(self, "host", None)
        if host is not None:
            host.close(timeout=1.0)

    # ---- internals (the replica's loop) ------------------------------------------------------
    def _start(self, request: dict[str, Any], key: str, stream: bool, chunk_frames: int) -> _Record:
        from livegen.output.prerender import request_from_dict

        loop = asyncio.get_running_loop()
        record = _Record(loop)
        self._records[key] = record

        def on_event(event: wk.WorkerEvent) -> None:  # the host's loop thread
            if event.kind == wk.STARTED:
                record.add_threadsafe(("started", self.pid))
            elif event.kind == wk.PROGRESS:
                record.add_threadsafe(("progress", event.step, event.total))

        req = request_from_dict(request).replace(slot=None, priority=0)
        job_id, future = self.host.render(req, on_event, sink=_ForwardSink(record) if stream else None)
        record.job_id = job_id
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, record, f, chunk_frames))
        return record

    def _finish(self, record: _Record, future: Any, chunk_frames: int) -> None:
        from livegen.errors import Cancelled

        try:
            clip = future.result()
        except Cancelled as exc:
            record.add(("cancelled", str(exc) or "cancelled"))
        except Exception as exc:  # noqa: BLE001 - the engine's sentence goes back to the caller
            record.add(("failed", str(exc) or exc.__class__.__name__))
        else:
            if not record.streamed:
                audio = clip.audio
                record.add(("begin", int(clip.sample_rate), int(audio.shape[1])))
                step = max(1, int(chunk_frames))
                for a in range(0, audio.shape[1], step):
                    record.add(("chunk", audio[:, a:a + step]))
            self.rendered += 1
            record.add(("done", {"seed": int(clip.seed), "model": clip.model, "sample_rate": int(clip.sample_rate),
                                 "render_seconds": float(clip.render_seconds), "levels": clip.levels,
                                 "frames": int(clip.audio.shape[1]), "pid": self.pid}))
        record.finished = True
        while len(self._records) > KEEP_FINISHED:
            oldest = next((k for k, r in self._records.items() if r.finished), None)
            if oldest is None:
                break
            del self._records[oldest]


def build_app(settings: Any, model: str, replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
              max_ongoing: int = 2) -> Any:
    """The Serve application of one model: ``replicas`` replicas, each with ``num_cpus`` CPUs and
    ``num_gpus`` GPUs (a GPU box: 1, with ``mlx[cuda]`` installed on it)."""
    from ray import serve

    # what decides a clip's samples besides the request travels with the replicas: the BLAS and its
    # thread count (a different count sums GEMMs in another order: clips ~1e-5 apart), the cache
    passed = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    actor = {"num_cpus": num_cpus, "num_gpus": num_gpus,
             "runtime_env": {"env_vars": {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **passed}}}
    dep = serve.deployment(PoolReplica, name=DEPLOYMENT, num_replicas=replicas, ray_actor_options=actor,
                           max_ongoing_requests=max_ongoing, health_check_period_s=2.0,
                           graceful_shutdown_timeout_s=2.0)
    return dep.bind(settings, model)


def deploy(settings: Any, name: str = "livegen", models: list[str] | None = None, replicas: int = 1,
           num_cpus: float = 1.0, num_gpus: float = 0.0) -> list[str]:
    """Start (or update) one application per model on the connected cluster; returns their names.
    Blocks until every replica has loaded its model."""
    from ray import serve

    names = []
    for model in models or list(settings.models):
        if model not in settings.models:
            raise ValueError(f"there is no model {model!r} in the settings (have {', '.join(settings.models)})")
        app = app_name(name, model)
        serve.run(build_app(settings, model, replicas, num_cpus, num_gpus), name=app, route_prefix=None)
        names.append(app)
    return names
