"""The generation thread, driven with a small fake engine (a test double for the engine only)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from livegen.engine.worker import (
    CANCELLED,
    DEVICE,
    DONE,
    FAILED,
    FATAL,
    LOADED,
    LOADING,
    PROGRESS,
    QUEUED,
    READY,
    REPLACED,
    STARTED,
    WARMED,
    QueueFull,
    UnknownModel,
    Worker,
    WorkerEvent,
    WorkerOptions,
    generate_kwargs,
)
from livegen.errors import Cancelled
from livegen.request import Request

SR = 1000


class FakeEngine:
    """Same ``generate`` signature as StableAudioPipeline; each step can be held by a gate."""

    sample_rate = SR

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.warmed: list[float] | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.last_seed: int | None = None

    def warmup(self, seconds_list: list[float]) -> None:
        self.warmed = list(seconds_list)

    def generate(self, prompt, seconds, steps=None, cfg_scale=None, sampler=None, seed=None,
                 negative_prompt=None, init_audio=None, init_strength=None, progress=None, cancel=None):
        self.calls.append(dict(prompt=prompt, seconds=seconds, steps=steps, cfg_scale=cfg_scale, seed=seed))
        if prompt == "boom":
            raise ValueError("the engine broke")
        self.entered.set()
        total = steps or 4
        for step in range(total):
            if not self.gate.wait(10):
                raise TimeoutError("test gate never opened")
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            if progress is not None:
                progress(step + 1, total)
        self.last_seed = seed if seed is not None else 1234
        n = int(round(seconds * SR))
        ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
        return np.stack([ramp, -ramp])


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[WorkerEvent] = []
        self.changed = asyncio.Event()

    def notify(self, event: WorkerEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait(self, kind: str, job_id: int | None = None, timeout: float = 10.0) -> WorkerEvent:
        async def find() -> WorkerEvent:
            while True:
                for e in self.events:
                    if e.kind == kind and (job_id is None or e.job_id == job_id):
                        return e
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def kinds(self, job_id: int) -> list[str]:
        return [e.kind for e in self.events if e.job_id == job_id]


def make(engine: FakeEngine, **opts) -> tuple[Worker, Harness]:
    loop = asyncio.get_running_loop()
    h = Harness(loop)
    options = WorkerOptions(**{"queue_size": 4, "warmup_seconds": (1.0,), **opts})
    return Worker({"sa": lambda: engine}, options, h.notify, loop), h


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_load_warm_generate_progress_done():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine)
        worker.start()
        await h.wait(READY)
        assert [e.kind for e in h.events[:5]] == [DEVICE, LOADING, LOADED, WARMED, READY]
        assert "GFLOP/s" in h.events[0].reason and "BLAS" in h.events[0].reason
        from livegen import _blas, device

        if _blas.status()[0] and device.detect().device == "cpu":  # the daemon's realtime thread count
            assert f", {device.default_blas_threads(realtime=True)} BLAS threads" in h.events[0].reason
        assert engine.warmed == [1.0]
        job, replaced = worker.submit(Request("pad", seconds=0.5, steps=3, seed=7))
        assert replaced == []
        done = await h.wait(DONE, job.id)
        assert h.kinds(job.id) == [QUEUED, STARTED, PROGRESS, PROGRESS, PROGRESS, DONE]
        assert [(e.step, e.total) for e in h.events if e.kind == PROGRESS] == [(1, 3), (2, 3), (3, 3)]
        clip = done.clip
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (2, 500)
        assert clip.seed == 7 and clip.model == "sa" and clip.sample_rate == SR and clip.job_id == job.id
        assert engine.calls[0]["seconds"] == pytest.approx(0.5) and engine.calls[0]["steps"] == 3
        # a request without a seed gets one chosen by the worker, and the clip reports it
        job, _ = worker.submit(Request("pad", seconds=0.1, steps=1))
        clip = (await h.wait(DONE, job.id)).clip
        assert engine.calls[1]["seed"] is not None and clip.seed == engine.calls[1]["seed"]
        assert worker.close()
        assert worker.stats()["done"] == 2

    run(main())


def test_priority_order_and_per_slot_coalescing():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine)
        worker.start()
        await h.wait(READY)
        engine.gate.clear()
        first, _ = worker.submit(Request("first", seconds=0.1, steps=1))
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 5)
        old, _ = worker.submit(Request("slot1 old", seconds=0.1, steps=1, slot=1))
        low, _ = worker.submit(Request("low", seconds=0.1, steps=1))
        new, replaced = worker.submit(Request("slot1 new", seconds=0.1, steps=1, slot=1))
        high, _ = worker.submit(Request("high", seconds=0.1, steps=1, priority=5))
        assert [j.id for j in replaced] == [old.id]
        assert (await h.wait(REPLACED, old.id)).reason == f"replaced by job {new.id}"
        engine.gate.set()
        for job in (first, low, new, high):
            await h.wait(DONE, job.id)
        assert [c["prompt"] for c in engine.calls] == ["first", "high", "low", "slot1 new"]
        assert STARTED not in h.kinds(old.id)
        worker.close()

    run(main())


def test_cancel_queued_and_running_jobs():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine)
        worker.start()
        await h.wait(READY)
        engine.gate.clear()
        running, _ = worker.submit(Request("running", seconds=0.1, steps=4, slot=2))
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 5)
        queued, _ = worker.submit(Request("queued", seconds=0.1, steps=1))
        assert worker.cancel(queued.id)
        assert (await h.wait(CANCELLED, queued.id)).reason == "cancelled while queued"
        assert worker.cancel_slot(2) == [running.id]
        engine.gate.set()
        await h.wait(CANCELLED, running.id)
        assert DONE not in h.kinds(running.id)
        assert not worker.cancel(999)
        after, _ = worker.submit(Request("after", seconds=0.1, steps=1))
        await h.wait(DONE, after.id)
        assert [c["prompt"] for c in engine.calls] == ["running", "after"]
        assert worker.stats()["cancelled"] == 2
        worker.close()

    run(main())


def test_a_failing_job_is_reported_and_the_thread_carries_on():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine)
        worker.start()
        bad, _ = worker.submit(Request("boom", seconds=0.1))
        good, _ = worker.submit(Request("fine", seconds=0.1))
        failed = await h.wait(FAILED, bad.id)
        assert "the engine broke" in failed.reason
        await h.wait(DONE, good.id)
        assert worker.stats()["failed"] == 1
        worker.close()

    run(main())


def test_bounded_queue_unknown_model_and_shutdown():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine, queue_size=2)
        worker.start()
        await h.wait(READY)
        engine.gate.clear()
        running, _ = worker.submit(Request("r", seconds=0.1, steps=2))
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 5)
        dropped, _ = worker.submit(Request("dropped", seconds=0.1))
        a, _ = worker.submit(Request("a", seconds=0.1, priority=1))
        b, _ = worker.submit(Request("b", seconds=0.1))  # full: the oldest lowest-priority job drops
        assert "queue full" in (await h.wait(CANCELLED, dropped.id)).reason
        worker.submit(Request("c", seconds=0.1, priority=1))  # drops b
        await h.wait(CANCELLED, b.id)
        with pytest.raises(QueueFull):
            worker.submit(Request("d", seconds=0.1, priority=0))  # every queued job ranks higher
        with pytest.raises(UnknownModel, match="unknown model 'nope'"):
            worker.submit(Request("e", seconds=0.1, model="nope"))
        # shutdown cancels the queue and the running job (finish_running_on_shutdown=False)
        closing = asyncio.get_running_loop().run_in_executor(None, worker.close)
        await h.wait(CANCELLED, a.id)
        engine.gate.set()
        assert await closing
        await h.wait(CANCELLED, running.id)
        with pytest.raises(RuntimeError, match="shutting down"):
            worker.submit(Request("late", seconds=0.1))

    run(main())


def test_shutdown_can_finish_the_running_job():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine, finish_running_on_shutdown=True)
        worker.start()
        await h.wait(READY)
        engine.gate.clear()
        running, _ = worker.submit(Request("r", seconds=0.1, steps=2))
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 5)
        closing = asyncio.get_running_loop().run_in_executor(None, worker.close)
        await asyncio.sleep(0.05)
        engine.gate.set()
        assert await closing
        await h.wait(DONE, running.id)

    run(main())


def test_bar_requests_are_cut_to_exact_bars_and_loops_crossfaded():
    async def main():
        engine = FakeEngine()
        worker, h = make(engine)
        worker.start()
        job, _ = worker.submit(Request("loop", bars=1, bpm=90, steps=1, loop=True))
        clip = (await h.wait(DONE, job.id)).clip
        # 1 bar of 4/4 at 90 bpm = 8/3 s -> 2666.67 frames at 1 kHz, rounded once
        assert clip.audio.shape == (2, 2667)
        # rendered longer than the loop so the continuation can be crossfaded into the head
        assert engine.calls[0]["seconds"] > 2.667
        # the rendered ramp jumps by 1.0 across the loop point; the crossfade removes the jump
        assert abs(float(clip.audio[0, 0] - clip.audio[0, -1])) < 0.05
        assert float(np.abs(np.diff(clip.audio[0, :8])).max()) < 0.35
        worker.close()

    run(main())


def test_a_loader_failure_is_fatal_and_reported():
    async def main():
        loop = asyncio.get_running_loop()
        h = Harness(loop)

        def broken():
            raise FileNotFoundError("no checkpoint at /nowhere")

        worker = Worker({"sa": broken}, WorkerOptions(), h.notify, loop)
        worker.start()
        fatal = await h.wait(FATAL)
        assert "no checkpoint at /nowhere" in fatal.reason
        assert worker.close()
        assert not worker.ready

    run(main())


def test_generate_kwargs_follow_the_engine_signature():
    class MusicGenLike:
        def generate(self, prompt, seconds, top_k=250, top_p=0.0, temperature=1.0, guidance_scale=3.0,
                     seed=None, progress=None, cancel=None):
            raise AssertionError("not called")

    req = Request("x", seconds=2.0, steps=8, cfg_scale=4.0, sampler="euler", seed=3, negative_prompt="noise")
    extra = {"top_k": 50, "temperature": 0.9, "unknown": 1}
    assert generate_kwargs(MusicGenLike(), req, 2.0, extra) == {
        "top_k": 50, "temperature": 0.9, "seconds": 2.0, "seed": 3, "guidance_scale": 4.0}
    sa = generate_kwargs(FakeEngine(), req, 2.0)
    assert sa == {"seconds": 2.0, "seed": 3, "negative_prompt": "noise", "steps": 8, "sampler": "euler",
                  "cfg_scale": 4.0}
    assert generate_kwargs(FakeEngine(), Request("x", seconds=1.0), 1.0) == {"seconds": 1.0}


def test_the_generation_thread_releases_its_mlx_streams_before_it_ends(monkeypatch):
    """MLX's clean-up must run on each thread that used it before the interpreter finalises
    (mx.clear_streams; ml-explore/mlx#4327): `livegen serve` died with -6 ("terminate called without
    an active exception") after a normal stop in CI, twice in one run. The thread calls it last, also
    when loading failed."""
    import threading

    from livegen.engine import worker as wk

    seen: list[str] = []
    monkeypatch.setattr(wk, "release_mlx_streams", lambda: seen.append(threading.current_thread().name))

    async def main():
        worker, h = make(FakeEngine())
        worker.start()
        await h.wait(READY)
        assert seen == []
        assert worker.close()
        assert seen == [worker._thread.name] and seen[0] != threading.current_thread().name

        def broken():
            raise RuntimeError("no weights")

        seen.clear()
        failing = Worker({"sa": broken}, WorkerOptions(), h.notify, asyncio.get_running_loop())
        failing.start()
        await h.wait(FATAL)
        failing.close()
        assert len(seen) == 1

    run(main())


def test_release_mlx_streams_runs_on_a_thread_that_used_mlx():
    import threading

    from livegen.engine.worker import release_mlx_streams

    errors: list[BaseException] = []

    def work() -> None:
        try:
            import mlx.core as mx

            mx.eval(mx.compile(lambda a: a * 2)(mx.ones((8,))))
            release_mlx_streams()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert not errors and not t.is_alive()
