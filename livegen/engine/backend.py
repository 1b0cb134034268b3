"""The engine interface the daemon talks to, and the choice of implementation.

:class:`EngineBackend` is what :class:`livegen.daemon.Daemon` calls on ``self.worker``; the local
generation thread (:class:`livegen.engine.worker.Worker`) satisfies it as it is, and so does
:class:`livegen.engine.pooled.PooledEngine`: a Ray Serve pool in front of that local worker
(``engine.kind: ray``), which falls back to it when the pool is unreachable, overloaded or late.

Events: every implementation reports through the ``notify`` callable it was built with, one
:class:`~livegen.engine.worker.WorkerEvent` at a time, always on the daemon's asyncio loop; a job
id is unique among the jobs of one backend and every job ends with exactly one of DONE, FAILED,
CANCELLED or REPLACED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from livegen.engine import worker as wk
from livegen.request import Request


@runtime_checkable
class EngineBackend(Protocol):
    """What the daemon needs from whatever renders its clips."""

    @property
    def ready(self) -> bool: ...  # the models are loaded (READY was emitted)

    @property
    def models(self) -> list[str]: ...

    @property
    def engines(self) -> dict[str, Any]: ...  # the loaded local engines (their attributes only)

    @property
    def alive(self) -> bool: ...  # the generation thread still runs

    def start(self) -> None: ...

    def submit(self, request: Request, sink: Any = None) -> tuple[wk.Job, list[wk.Job]]: ...

    def cancel(self, job_id: int) -> bool: ...

    def cancel_slot(self, slot: int | None) -> list[int]: ...

    def reserve_id(self) -> int: ...

    def idle(self) -> bool: ...

    def busy(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self, finish_running: bool | None = None, timeout: float = 1.5) -> bool: ...

    def join(self, timeout: float | None = None) -> bool: ...


def build_backend(settings: Any, loaders: dict[str, Callable[[], Any]], options: wk.WorkerOptions,
                  notify: Callable[[wk.WorkerEvent], None], loop: Any,
                  launch_time: Callable[[str, float], float] | None = None) -> EngineBackend:
    """The backend ``engine.kind`` asks for. ``ray`` needs the ``livegen[ray]`` extra; the pool is
    connected in the background, so a cluster that is down delays nothing (clips render here).
    ``launch_time(launch, t)``: the time of the first launch point at or after ``t`` (a remote job's
    deadline is the launch point it is meant for)."""
    if settings.engine.kind == "ray":
        from livegen.engine.pooled import PooledEngine

        return PooledEngine(settings, loaders, options, notify, loop, launch_time)
    return wk.Worker(loaders, options, notify, loop)
