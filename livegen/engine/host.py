"""A generation worker outside the daemon: the same :class:`~livegen.engine.worker.Worker` (so the
same loading, rendering, loudness normalisation and cut as the daemon's), on an event loop of its
own, with one :class:`concurrent.futures.Future` per job.

Used by ``livegen render`` (local engine) and by the Ray Serve replicas (livegen.engine.ray_pool):
both must give the daemon's clip for a request and seed, sample for sample, and the only way to be
sure is to run the daemon's code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from livegen.engine import worker as wk
from livegen.errors import Cancelled
from livegen.request import Request


class RenderFailed(RuntimeError):
    """The engine could not render the request; the message is the worker's sentence."""


@dataclass
class _Pending:
    future: Future
    on_event: Callable[[wk.WorkerEvent], None] | None


class WorkerHost:
    """Owns a loop thread and a :class:`Worker`; :meth:`render` returns a future of the clip.

    ``on_event`` (per job) sees every event of that job (started, progress) on the host's loop
    thread; keep it short. Thread-safe.
    """

    def __init__(self, loaders: dict[str, Callable[[], Any]], options: wk.WorkerOptions) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="livegen-host-loop", daemon=True)
        self._thread.start()
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.fatal: str | None = None
        self.device: str = ""
        self.worker = wk.Worker(loaders, options, self._notify, self._loop)
        self.worker.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the models are loaded; raises :class:`RenderFailed` if they cannot be."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the models did not load in time")
        if self.fatal is not None:
            raise RenderFailed(f"the models could not be loaded: {self.fatal}")

    def render(self, request: Request, on_event: Callable[[wk.WorkerEvent], None] | None = None,
               sink: Any = None) -> tuple[int, Future]:
        """Queue ``request``; returns (job id, future of the :class:`Clip`). The future fails with
        :class:`RenderFailed` or :class:`~livegen.errors.Cancelled`. ``sink``: a
        :class:`~livegen.output.stream_sink.ChunkSink` fed while the clip is generated (the
        worker's streaming path, as the daemon's for a played request)."""
        future: Future = Future()
        with self._lock:  # the QUEUED event may arrive before submit returns: register first
            job, _ = self.worker.submit(request, sink=sink)
            self._pending[job.id] = _Pending(future, on_event)
        return job.id, future

    def cancel(self, job_id: int) -> bool:
        return self.worker.cancel(job_id)

    def close(self, timeout: float = 1.5) -> None:
        self.worker.close(timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    # ---- host loop thread ------------------------------------------------------------------
    def _notify(self, event: wk.WorkerEvent) -> None:
        if event.kind == wk.DEVICE:
            self.device = event.reason
        elif event.kind == wk.READY:
            self._ready.set()
        elif event.kind == wk.FATAL:
            self.fatal = event.reason
            self._ready.set()
        if event.job_id is None:
            return
        with self._lock:
            pending = self._pending.get(event.job_id)
            if pending is not None and event.kind in (wk.DONE, wk.FAILED, wk.CANCELLED, wk.REPLACED):
                del self._pending[event.job_id]
        if pending is None:
            return
        if pending.on_event is not None:
            try:
                pending.on_event(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the result
                pass
        if event.kind == wk.DONE:
            pending.future.set_result(event.clip)
        elif event.kind == wk.FAILED:
            pending.future.set_exception(RenderFailed(event.reason))
        elif event.kind in (wk.CANCELLED, wk.REPLACED):
            pending.future.set_exception(Cancelled(event.reason or "cancelled"))
