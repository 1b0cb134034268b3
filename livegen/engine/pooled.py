"""``engine.kind: ray``: clips render on a Ray Serve pool, and here when the pool cannot make it.

:class:`PooledEngine` is an :class:`~livegen.engine.backend.EngineBackend` in front of the local
generation worker (which loads the models as always). A request goes to the pool when the pool is
connected (through the bridge process, livegen.engine.ray_bridge: the daemon never imports Ray),
with its seed chosen here, so a clip rendered here instead is the very clip the pool would have
made. A remote job has a deadline: the launch point it is meant for, the first one of the
request's launch (now/beat/bar, on the player's grid) at or after ``engine.remote_deadline``
seconds from the trigger (a clip complete by then sounds at that point, exactly when one that came
in earlier within the same beat or bar would); without a player (a folder-only daemon) or for
``launch: now`` the deadline is the trigger plus ``engine.remote_deadline``. A remote job also has
a start limit, ``engine.remote_start``; when the pool is unreachable, does not start the job in time
(overloaded), is late, or loses the job (a replica or the whole cluster gone), the job is
rendered by the local worker, under the same job id, and the daemon is told (a ``fallback``
event: an ack to the requester saying why, a warning in the log, counts in the status). Nothing
on the event loop waits for the pool: commands go out on a socket, answers come back on the
bridge's reader thread, and a timer on the loop enforces the deadline even if the bridge hangs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from livegen.engine import worker as wk
from livegen.request import Clip, Request

log = logging.getLogger("livegen.pool")

FALLBACK = "fallback"  # event: a job goes to the local worker; ``reason`` says why
RECONNECT_SECONDS = 10.0  # after the pool was lost, the next try
CONNECT_TIMEOUT = 30.0


@dataclass
class _RemoteJob:
    job: wk.Job
    key: str
    started: bool = False
    began: bool = False  # the sink got audio: a fallback renders without it
    timer: Any = None
    done: bool = False
    deadline: float = 0.0  # time.monotonic() by which the clip must be complete
    meant_for: str = ""  # the launch point the deadline is, in words


class PooledEngine:
    """See the module doc. Public methods are called on the daemon's loop (as the Worker's are)."""

    def __init__(self, settings: Any, loaders: dict[str, Any], options: wk.WorkerOptions, notify: Any,
                 loop: Any, launch_time: Callable[[str, float], float] | None = None) -> None:
        self.settings = settings
        self._launch_time = launch_time  # (launch, t) -> the time of the first launch point >= t
        self._notify = notify
        self._loop = loop
        self.local = wk.Worker(loaders, options, self._on_local, loop)
        self._remote: dict[int, _RemoteJob] = {}
        self._by_key: dict[str, _RemoteJob] = {}
        self._fallback_ids: dict[int, int] = {}  # the local worker's id -> the job's id
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = itertools.count(1)
        self._bridge: Any = None
        self._bridges: list[Any] = []  # every bridge started: none may outlive the daemon
        self._generation = 0  # the current bridge's number: messages of earlier ones are ignored
        self._lock = threading.Lock()
        self.state = "connecting"  # connecting, connected, unavailable, closed
        self.error: str | None = None
        self.replicas: dict[str, int] = {}
        self.counts = {"remote": 0, "fallbacks": 0, "remote_failed": 0}
        self.last_fallback: str | None = None
        self._retry_at = 0.0

    # ---- the EngineBackend surface (delegated to the local worker where it is about it) -----
    @property
    def ready(self) -> bool:
        return self.local.ready

    @property
    def models(self) -> list[str]:
        return self.local.models

    @property
    def engines(self) -> dict[str, Any]:
        return self.local.engines

    @property
    def alive(self) -> bool:
        return self.local.alive

    def resolve_model(self, name: str) -> str:
        return self.local.resolve_model(name)

    def reserve_id(self) -> int:
        return self.local.reserve_id()

    def join(self, timeout: float | None = None) -> bool:
        return self.local.join(timeout)

    def start(self) -> None:
        self.local.start()
        self._connect()

    def idle(self) -> bool:
        return self.local.idle() and not self._remote

    def busy(self) -> bool:
        return self.local.busy() or bool(self._remote)

    def submit(self, request: Request, sink: Any = None) -> tuple[wk.Job, list[wk.Job]]:
        model = self.local.resolve_model(request.model)  # raises UnknownModel as the worker does
        if self.state != "connected" or request.action != "generate" or model not in self.replicas:
            if self.state == "unavailable" and time.monotonic() >= self._retry_at:
                self._connect()
            return self.local.submit(request, sink=sink)
        replaced = self._replace_slot(request.slot)
        if request.seed is None:  # chosen here: a fallback renders the clip the pool would have
            request = request.replace(seed=secrets.randbelow(2**31))
        request = request.replace(model=model)
        job = wk.Job(id=self.local.reserve_id(), request=request, submitted=time.monotonic(), sink=sink)
        remote = _RemoteJob(job, f"{self._prefix}-{job.id}-{next(self._seq)}")
        e = self.settings.engine
        remote.deadline, remote.meant_for = self.deadline(request.launch, job.submitted)
        seconds = max(0.0, remote.deadline - time.monotonic())
        message = ("submit", remote.key, _request_dict(request), sink is not None, e.remote_start, seconds)
        if not self._bridge.send(message):
            self._lost("the Ray bridge process is gone")
            return self.local.submit(request, sink=sink)
        self._remote[job.id] = remote
        self._by_key[remote.key] = remote
        remote.timer = self._loop.call_later(seconds + 1.0, self._overdue, remote)
        self.counts["remote"] += 1
        self._emit(wk.WorkerEvent(wk.QUEUED, job.id, request))
        return job, replaced

    def cancel(self, job_id: int) -> bool:
        remote = self._remote.get(job_id)
        if remote is not None:
            self._bridge.send(("cancel", remote.key))
            self._end(remote)
            self._emit(wk.WorkerEvent(wk.CANCELLED, job_id, remote.job.request, reason="cancelled"))
            return True
        local = next((lid for lid, jid in self._fallback_ids.items() if jid == job_id), job_id)
        return self.local.cancel(local)

    def cancel_slot(self, slot: int | None) -> list[int]:
        ids = [j for j, r in list(self._remote.items()) if slot is None or r.job.request.slot == slot]
        out = [j for j in ids if self.cancel(j)]
        return out + [self._fallback_ids.get(i, i) for i in self.local.cancel_slot(slot)]

    def deadline(self, launch: str, submitted: float) -> tuple[float, str]:
        """A remote job's deadline (``time.monotonic()``) and the launch point it is, in words:
        the first ``launch`` point at or after ``engine.remote_deadline`` seconds from ``submitted``."""
        budget = float(self.settings.engine.remote_deadline)
        earliest = submitted + budget
        at = earliest
        if self._launch_time is not None and launch != "now":
            try:
                at = max(earliest, float(self._launch_time(launch, earliest)))
            except Exception:  # noqa: BLE001 - no grid to go by: the budget alone
                log.debug("no launch point for the deadline", exc_info=True)
        if at > earliest:
            return at, f"its {launch} {at - submitted:.1f} s after the trigger"
        return at, f"{budget:g} s after the trigger (engine.remote_deadline)"

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        pool = {"kind": "ray", "state": self.state, "address": self.settings.engine.address,
                "deployment": self.settings.engine.deployment, "replicas": dict(self.replicas),
                "error": self.error, "remote_running": len(self._remote), **self.counts,
                "last_fallback": self.last_fallback,
                "deadlines": {str(j): round(r.deadline - now, 2) for j, r in self._remote.items()}}
        return {**self.local.stats(), "pool": pool}

    def close(self, finish_running: bool | None = None, timeout: float = 1.5) -> bool:
        self.state = "closed"
        for job_id in list(self._remote):
            self.cancel(job_id)
        for bridge in self._bridges:  # asked to leave, then ended by PID (this is off the loop)
            bridge.close(timeout=0.5)
        return self.local.close(finish_running, timeout)

    # ---- the pool ------------------------------------------------------------------------
    def _connect(self) -> None:
        from livegen.engine.ray_bridge import BridgeClient

        self.state = "connecting"
        self._retry_at = time.monotonic() + RECONNECT_SECONDS
        self._drop_bridge()  # one bridge at a time (and a new generation number for the next)
        try:
            self._bridge = BridgeClient(functools.partial(self._from_bridge, self._generation))
            self._bridges = [b for b in self._bridges if b.proc.poll() is None] + [self._bridge]
        except OSError as exc:
            self.state, self.error = "unavailable", f"cannot start the Ray bridge: {exc}"
            return
        e = self.settings.engine
        self._bridge.send(("connect", e.address, e.deployment, list(self.local.models), CONNECT_TIMEOUT))

    def _from_bridge(self, generation: int, message: tuple | None) -> None:  # the bridge's reader thread
        try:
            self._loop.call_soon_threadsafe(self._on_bridge, message, generation)
        except RuntimeError:  # the loop is closed
            pass

    def _on_bridge(self, message: tuple | None, generation: int) -> None:
        if generation != self._generation:
            return  # a bridge given up (dropped after "unavailable" or a loss): its last words
        if message is None:
            if self.state != "closed":
                self._lost("the Ray bridge process ended (the cluster may be gone)")
            return
        op = message[0]
        if op == "connected":
            self.state, self.error, self.replicas = "connected", None, dict(message[1])
            log.info("render pool connected at %s: %s", self.settings.engine.address,
                     ", ".join(f"{m} x{n}" for m, n in self.replicas.items()))
            return
        if op == "unavailable":
            self.state, self.error = "unavailable", message[1]
            log.warning("render pool unavailable, clips render here: %s", message[1])
            self._drop_bridge()  # the next try starts a new one: this one must not linger
            return
        remote = self._by_key.get(message[1])
        if remote is None or remote.done:
            return
        job = remote.job
        if op == "started":
            remote.started = True
            self._emit(wk.WorkerEvent(wk.STARTED, job.id, job.request, model=job.request.model))
        elif op == "progress":
            self._emit(wk.WorkerEvent(wk.PROGRESS, job.id, job.request, step=message[2], total=message[3]))
        elif op == "begin":
            remote.began = True
            self._sink_call(remote, "begin", message[2], message[3])
        elif op == "chunk":
            self._sink_call(remote, "write", message[2])
        elif op == "done":
            meta, audio = message[2], message[3]
            self._end(remote)
            self._sink_call(remote, "end", True)
            clip = Clip(request=job.request, audio=np.ascontiguousarray(audio, dtype=np.float32),
                        sample_rate=int(meta["sample_rate"]), seed=int(meta["seed"]), model=meta["model"],
                        job_id=job.id, render_seconds=time.monotonic() - job.submitted, levels=meta["levels"])
            self._emit(wk.WorkerEvent(wk.DONE, job.id, job.request, clip=clip, model=clip.model,
                                      seconds=clip.render_seconds))
        elif op == "error":
            kind, reason = message[2], message[3]
            if kind == "cancelled":
                self._end(remote)
                self._emit(wk.WorkerEvent(wk.CANCELLED, job.id, job.request, reason=reason))
            elif kind == "failed":  # the engine refused it: it would fail here as well
                self._end(remote)
                self.counts["remote_failed"] += 1
                self._emit(wk.WorkerEvent(wk.FAILED, job.id, job.request, reason=reason, model=job.request.model))
            else:
                if kind == "late":
                    reason = f"{reason}, {remote.meant_for}"
                self._fall_back(remote, reason)
                if kind in ("unavailable", "lost") and self.state == "connected":
                    self._lost(reason)

    def _sink_call(self, remote: _RemoteJob, name: str, *args: Any) -> None:
        sink = remote.job.sink
        if sink is None:
            return
        try:  # a sink never blocks long (contract); this is the loop, so keep it so
            getattr(sink, name)(*args)
        except Exception:  # noqa: BLE001 - a sink's failure must not lose the clip
            log.debug("stream sink %s failed", name, exc_info=True)

    def _overdue(self, remote: _RemoteJob) -> None:
        if not remote.done:  # the bridge did not answer in time (hung, or a cluster in trouble)
            self._bridge.send(("cancel", remote.key))
            self._fall_back(remote, f"the pool's clip was not ready by its deadline, {remote.meant_for}")

    def _lost(self, reason: str) -> None:
        self.state, self.error = "unavailable", reason
        self._retry_at = time.monotonic() + RECONNECT_SECONDS
        for remote in list(self._remote.values()):
            self._fall_back(remote, reason)
        self._drop_bridge()
        log.warning("render pool lost, clips render here: %s", reason)

    def _drop_bridge(self) -> None:
        """Close the current bridge process off the loop (it may wait on a dead cluster)."""
        bridge, self._bridge = self._bridge, None
        self._generation += 1  # whatever it still says (its end, above all) is not about the pool now
        if bridge is not None:
            threading.Thread(target=bridge.close, name="livegen-ray-close", daemon=True).start()

    def _fall_back(self, remote: _RemoteJob, reason: str) -> None:
        """Render the job here under its own id (same request, same seed)."""
        if remote.done:
            return
        self._end(remote)
        job = remote.job
        self.counts["fallbacks"] += 1
        self.last_fallback = reason
        log.warning("job %d renders here: %s", job.id, reason)
        self._emit(wk.WorkerEvent(FALLBACK, job.id, job.request, reason=reason))
        if remote.began:
            self._sink_call(remote, "end", False)
        try:
            local, _ = self.local.submit(job.request, sink=None if remote.began else job.sink)
        except (wk.QueueFull, RuntimeError) as exc:
            self._emit(wk.WorkerEvent(wk.FAILED, job.id, job.request, reason=f"{reason}; and here: {exc}"))
            return
        self._fallback_ids[local.id] = job.id

    def _end(self, remote: _RemoteJob) -> None:
        remote.done = True
        if remote.timer is not None:
            remote.timer.cancel()
        self._remote.pop(remote.job.id, None)
        self._by_key.pop(remote.key, None)

    def _replace_slot(self, slot: int | None) -> list[wk.Job]:
        """A newer request for a slot replaces its remote job that has not started yet."""
        if slot is None:
            return []
        out = []
        for remote in [r for r in self._remote.values() if r.job.request.slot == slot and not r.started]:
            self._bridge.send(("cancel", remote.key))
            self._end(remote)
            out.append(remote.job)
            self._emit(wk.WorkerEvent(wk.REPLACED, remote.job.id, remote.job.request, reason="replaced"))
        return out

    # ---- events --------------------------------------------------------------------------
    def _emit(self, event: wk.WorkerEvent) -> None:
        self._loop.call_soon(self._notify, event)

    def _on_local(self, event: wk.WorkerEvent) -> None:  # the loop: the local worker's events
        job_id = self._fallback_ids.get(event.job_id) if event.job_id is not None else None
        if job_id is not None:
            if event.kind == wk.QUEUED:
                return  # the daemon saw it queued already
            if event.kind in (wk.DONE, wk.FAILED, wk.CANCELLED, wk.REPLACED):
                del self._fallback_ids[event.job_id]
            clip = replace(event.clip, job_id=job_id) if event.clip is not None else None
            event = replace(event, job_id=job_id, clip=clip)
        self._notify(event)


def _request_dict(request: Request) -> dict[str, Any]:
    d = request.to_dict()
    d.pop("source_job", None)
    return d
