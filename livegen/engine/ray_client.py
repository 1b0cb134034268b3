"""The caller's side of the Ray Serve render pool (livegen.engine.ray_pool).

:class:`RayPool` connects to a cluster, finds one application per model and renders requests
there. Everything Ray does for it runs on a thread and event loop of its own ("livegen-ray"), so a
slow, overloaded or vanished cluster never blocks the caller: :meth:`RayPool.submit` returns a
:class:`concurrent.futures.Future` at once, and the job's deadlines turn into exceptions:

* :class:`PoolUnavailable`: no cluster or no application for the model (connecting failed);
* :class:`PoolOverloaded`: the pool did not start the job within ``start_timeout``;
* :class:`PoolLate`: the clip was not complete by ``deadline``;
* :class:`PoolLost`: the replica died and the retry (same job key) failed too.

A sink passed with a job gets the audio chunks as they arrive (``begin``/``write``/``end``),
before the clip is complete; the future's :class:`~livegen.request.Clip` holds the whole clip.
:class:`RayRenderer` is ``livegen render --ray``'s renderer on top of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from livegen.engine.host import RenderFailed
from livegen.engine.ray_pool import CHUNK_FRAMES, DEPLOYMENT, app_name, ray_env
from livegen.errors import Cancelled
from livegen.request import Clip, Request

log = logging.getLogger("livegen.ray")

RETRIES = 1  # a job whose replica died is sent again once (same key), then reported
RETRY_START_TIMEOUT = 20.0  # the retry must start this soon (Serve may route it to the dead replica's slot)


class PoolError(RuntimeError):
    """The pool could not deliver the clip (the sentence says why)."""


class PoolUnavailable(PoolError):
    pass


class PoolOverloaded(PoolError):
    pass


class PoolLate(PoolError):
    pass


class PoolLost(PoolError):
    pass


@dataclass
class RemoteEvent:
    """What the pool tells a job's listener: ``started`` (pid), ``progress`` (step, total)."""

    kind: str
    step: int = 0
    total: int = 0
    pid: int | None = None


def request_dict(request: Request) -> dict[str, Any]:
    d = request.to_dict()
    d.pop("source_job", None)
    return d


class RayPool:
    """A connection to the pool (see the module doc). Thread-safe."""

    def __init__(self, address: str = "auto", name: str = "livegen", namespace: str = "livegen") -> None:
        self.address = address
        self.name = name
        self.namespace = namespace
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="livegen-ray", daemon=True)
        self._thread.start()
        self._handles: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._ids = itertools.count(1)
        self.connected = False
        self.error: str | None = None
        self.started_ray = False
        self.counts = {"done": 0, "failed": 0, "retried": 0, "lost": 0}

    # ---- connection ----------------------------------------------------------------------
    def connect(self, models: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Connect (blocking, at most ``timeout`` s) and look up the models' applications; returns
        each model's replica info. Raises :class:`PoolUnavailable` with a sentence."""
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(self._connect(models), timeout), self._loop)
        try:
            return future.result(timeout + 1.0)
        except (TimeoutError, asyncio.TimeoutError, cf.TimeoutError):
            future.cancel()
            self.error = f"the Ray pool at {self.address} did not answer within {timeout:g} s"
        except PoolUnavailable as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any Ray failure is "unavailable", in one sentence
            self.error = f"cannot reach the Ray pool at {self.address}: {' '.join(str(exc).split())[:300]}"
        raise PoolUnavailable(self.error)

    async def _connect(self, models: list[str] | None) -> dict[str, dict[str, Any]]:
        ray_env()
        import ray
        from ray import serve

        if not ray.is_initialized():
            await asyncio.to_thread(ray.init, address=self.address, namespace=self.namespace,
                                    log_to_driver=False, logging_level=logging.WARNING)
            self.started_ray = True
        apps = await asyncio.to_thread(lambda: serve.status().applications)
        prefix = f"{self.name}-"
        available = {n[len(prefix):]: n for n in apps if n.startswith(prefix)}
        wanted = models if models is not None else list(available)
        missing = [m for m in wanted if m not in available]
        if missing or not wanted:
            raise PoolUnavailable(f"the Ray pool has no application for {', '.join(missing) or 'any model'} "
                                  f"(found {', '.join(apps) or 'none'}; start it with `livegen serve-pool`)")
        for model in wanted:
            handle = serve.get_deployment_handle(DEPLOYMENT, app_name=available[model])
            self._handles[model] = handle
            self._info[model] = await handle.info.remote()
        self.connected = True
        self.error = None
        return dict(self._info)

    def info(self, model: str) -> dict[str, Any]:
        return self._info[model]

    def replicas(self, model: str) -> int:
        """Running replicas of ``model``'s deployment (from Serve's status)."""
        from ray import serve

        status = serve.status().applications[app_name(self.name, model)]
        dep = status.deployments[DEPLOYMENT]
        return int(dep.replica_states.get("RUNNING", 0))

    # ---- jobs ----------------------------------------------------------------------------
    def submit(self, request: Request, key: str | None = None, sink: Any = None,
               on_event: Callable[[RemoteEvent], None] | None = None, start_timeout: float | None = None,
               deadline: float | None = None) -> tuple[str, cf.Future]:
        """Render ``request`` (its seed set) on the pool; returns (job key, future of the clip).
        ``deadline``: ``time.monotonic()`` by which the clip must be complete."""
        key = key or f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{next(self._ids)}"
        future: cf.Future = cf.Future()

        def start() -> None:
            task = self._loop.create_task(self._run(request, key, sink, on_event, start_timeout, deadline))
            self._tasks[key] = task

            def finished(t: asyncio.Task) -> None:
                self._tasks.pop(key, None)
                if t.cancelled():
                    future.set_exception(Cancelled("cancelled"))
                elif t.exception() is not None:
                    future.set_exception(t.exception())
                else:
                    future.set_result(t.result())

            task.add_done_callback(finished)

        self._loop.call_soon_threadsafe(start)
        return key, future

    def cancel(self, key: str) -> None:
        """Cancel a job (the replica's engine stops it); its future fails with Cancelled."""
        def stop() -> None:
            task = self._tasks.get(key)
            if task is not None:
                task.cancel()

        self._loop.call_soon_threadsafe(stop)

    def close(self, shutdown: bool | None = None) -> None:
        """Cancel every job and stop the thread; ``shutdown``: also ``ray.shutdown()`` (default:
        when this pool connected Ray)."""
        for key in list(self._tasks):
            self.cancel(key)
        if shutdown if shutdown is not None else self.started_ray:
            try:
                import ray

                asyncio.run_coroutine_threadsafe(asyncio.to_thread(ray.shutdown), self._loop).result(15)
            except Exception:  # noqa: BLE001 - nothing more to do at close
                log.debug("ray.shutdown failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _run(self, request: Request, key: str, sink: Any, on_event: Callable[[RemoteEvent], None] | None,
                   start_timeout: float | None, deadline: float | None) -> Clip:
        if request.model not in self._handles:
            raise PoolUnavailable(self.error or f"the Ray pool has no application for model {request.model!r}")
        for attempt in range(RETRIES + 1):
            limit = start_timeout if attempt == 0 else min(start_timeout or RETRY_START_TIMEOUT, RETRY_START_TIMEOUT)
            try:
                return await self._attempt(request, key, sink, on_event, limit, deadline)
            except PoolOverloaded as exc:
                if attempt == 0:
                    raise
                self.counts["lost"] += 1
                raise PoolLost(f"the pool's replica died rendering the clip, and the retry did not start ({exc})"
                               ) from None
            except _ReplicaDied as exc:
                if attempt == RETRIES or exc.streamed:
                    self.counts["lost"] += 1
                    raise PoolLost(f"the pool's replica died rendering the clip ({exc.reason})") from None
                self.counts["retried"] += 1
                log.warning("job %s: the replica died (%s); sending it again", key, exc.reason)
        raise AssertionError("unreachable")

    async def _attempt(self, request: Request, key: str, sink: Any, on_event: Callable[[RemoteEvent], None] | None,
                       start_timeout: float | None, deadline: float | None) -> Clip:
        import ray.exceptions as rex

        handle = self._handles[request.model]
        gen = handle.options(stream=True).render.remote(request_dict(request), key, sink is not None, CHUNK_FRAMES)
        t0 = time.monotonic()
        started = False
        chunks: list[np.ndarray] = []
        began = False
        try:
            while True:
                limit = None
                if not started and start_timeout is not None:
                    limit = t0 + start_timeout
                if deadline is not None:
                    limit = deadline if limit is None else min(limit, deadline)
                wait = None if limit is None else max(0.0, limit - time.monotonic())
                # not asyncio.wait_for: it waits for the cancelled read to finish, and a read from a
                # replica that is gone may never finish
                nxt = asyncio.ensure_future(gen.__anext__())
                done, _ = await asyncio.wait({nxt}, timeout=wait)
                if not done:
                    nxt.cancel()
                    if not started and start_timeout is not None and time.monotonic() >= t0 + start_timeout:
                        raise PoolOverloaded(f"the pool did not start the clip within {start_timeout:g} s")
                    raise PoolLate("the pool's clip was not ready by its deadline")
                try:
                    message = nxt.result()
                except StopAsyncIteration:
                    raise PoolLost("the pool's reply ended without the clip") from None
                kind = message[0]
                if kind == "started":
                    started = True
                    if on_event is not None:
                        on_event(RemoteEvent("started", pid=message[1]))
                elif kind == "progress":
                    started = True
                    if on_event is not None:
                        on_event(RemoteEvent("progress", message[1], message[2]))
                elif kind == "begin":
                    began = True
                    if sink is not None:
                        sink.begin(message[1], message[2])
                elif kind == "chunk":
                    chunks.append(message[1])
                    if sink is not None:
                        sink.write(message[1])
                elif kind == "done":
                    meta = message[1]
                    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
                    if sink is not None:
                        sink.end(True)
                    self.counts["done"] += 1
                    return Clip(request=request, audio=np.ascontiguousarray(audio, dtype=np.float32),
                                sample_rate=int(meta["sample_rate"]), seed=int(meta["seed"]), model=meta["model"],
                                job_id=0, render_seconds=float(meta["render_seconds"]), levels=meta["levels"])
                elif kind == "failed":
                    self.counts["failed"] += 1
                    raise RenderFailed(message[1])
                elif kind == "cancelled":
                    raise Cancelled(message[1])
        except (rex.RayActorError, rex.ActorUnavailableError) as exc:
            if sink is not None and began:
                sink.end(False)
            raise _ReplicaDied(exc.__class__.__name__, streamed=began and sink is not None) from None
        except BaseException:
            if sink is not None and began:
                sink.end(False)
            gen.cancel()  # the replica's engine stops the job
            raise


class _ReplicaDied(Exception):
    def __init__(self, reason: str, streamed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.streamed = streamed


class RayRenderer:
    """``livegen render --ray``: clips spread over the pool's replicas (Serve routes each call to
    a replica with room; ``capacity`` keeps every replica busy with one queued behind)."""

    def __init__(self, pool: RayPool, model_names: list[str], cluster: Any = None) -> None:
        self.pool = pool
        self.models = model_names
        self.cluster = cluster
        self.capacity = max(2, 2 * sum(max(1, pool.replicas(m)) for m in model_names))

    @classmethod
    def connect(cls, settings: Any, address: str, replicas: int = 2) -> RayRenderer:
        """``address`` ``local``: a private cluster for this run (stopped by :meth:`close`), with
        ``replicas`` replicas per model; otherwise a running pool (``livegen serve-pool``)."""
        from livegen.cli import UsageError

        models = list(settings.models)
        cluster = None
        if address == "local":
            from livegen.engine.ray_pool import deploy

            cluster = LocalCluster(replicas=replicas)
            cluster.start()
            deploy(settings, settings.engine.deployment, models, replicas=replicas,
                   num_cpus=cluster.cpus_per_replica)
            address = "auto"
        pool = RayPool(address, settings.engine.deployment)
        try:
            pool.connect(models)
        except PoolUnavailable as exc:
            pool.close()
            if cluster is not None:
                cluster.stop()
            raise UsageError(str(exc)) from None
        return cls(pool, models, cluster)

    def describe(self) -> str:
        return ", ".join(f"{m}: {self.pool.replicas(m)} replica(s)" for m in self.models)

    def caps(self) -> dict[str, Any]:
        return {m: self.pool.info(m)["caps"] for m in self.models}

    def submit(self, request: Request) -> cf.Future:
        return self.pool.submit(request)[1]

    def close(self) -> None:
        self.pool.close(shutdown=False)
        if self.cluster is not None:
            self.cluster.stop()


class LocalCluster:
    """A private Ray cluster in this process (``ray.init()``), stopped with ``ray.shutdown()``."""

    def __init__(self, replicas: int = 2) -> None:
        self.replicas = replicas
        cpus = os.cpu_count() or 2
        self.cpus_per_replica = max(0.1, min(1.0, (cpus - 0.5) / max(1, replicas)))

    def start(self) -> None:
        ray_env()
        import ray

        ray.init(namespace="livegen", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, num_cpus=max(os.cpu_count() or 2, self.replicas + 1))

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
