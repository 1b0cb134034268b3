"""The Ray Serve render pool on a real local cluster: ``ray.init()`` in this process (a private
cluster, stopped with ``ray.shutdown()``), the tiny checkpoints deployed with Ray Serve.

Every remote clip is compared with the daemon's local render (the same worker, same settings) for
the same request and seed: sample for sample.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_or_skip
from tests.integration.conftest import free_port, write_settings

pytestmark = pytest.mark.realtime


def _need_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as exc:
        require_or_skip("LIVEGEN_REQUIRE_RAY", f"ray[serve] is not installed (pip install -e .[ray]): {exc}")
    return ray


def pool_settings(tmp: Path, model: dict):
    from livegen.settings import load_settings

    mapping = tmp / "mapping.yaml"
    mapping.write_text("name: pool\nparams:\n  seconds: 0.2\n")
    config = tmp / "livegen.yaml"
    write_settings(config, model, free_port(), free_port(), None, mapping, audio=False, midi=False, musicgen=True)
    return config, load_settings(config)


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    """A private cluster with the pool deployed: Stable Audio x2 replicas, MusicGen x1."""
    ray = _need_ray()
    from livegen.engine.ray_pool import deploy

    os.environ["LIVEGEN_CACHE"] = str(tiny_model["cache"])
    # the replicas and this process's reference worker with the same BLAS thread count: a different
    # count sums GEMMs in another order (clips ~1e-5 apart); the replicas get the variable from deploy
    threads = os.environ.get("LIVEGEN_CPU_THREADS")
    os.environ["LIVEGEN_CPU_THREADS"] = "1"
    config, settings = pool_settings(tmp_path_factory.mktemp("pool"), tiny_model)
    ray.init(namespace="livegen", include_dashboard=False, log_to_driver=False, num_cpus=4)
    try:
        deploy(settings, "lgtest", ["default"], replicas=2, num_cpus=0.5)
        deploy(settings, "lgtest", ["mg"], replicas=1, num_cpus=0.5)
        yield {"settings": settings, "config": config}
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        if threads is None:
            os.environ.pop("LIVEGEN_CPU_THREADS", None)
        else:
            os.environ["LIVEGEN_CPU_THREADS"] = threads


@pytest.fixture(scope="module")
def pool(cluster):
    from livegen.engine.ray_client import RayPool

    p = RayPool("auto", "lgtest")
    info = p.connect(["default", "mg"])
    assert set(info) == {"default", "mg"}
    yield p
    p.close(shutdown=False)


@pytest.fixture(scope="module")
def local(cluster):
    """The daemon's worker with the same settings, in this process: the reference renders."""
    from livegen.engine.host import WorkerHost
    from livegen.engine.loaders import build_loaders, worker_options

    host = WorkerHost(build_loaders(cluster["settings"]), worker_options(cluster["settings"], render_nice=0))
    host.wait_ready(120)
    yield host
    host.close()


def _request(prompt: str, model: str = "default", seconds: float = 0.3, seed: int = 7, **kw):
    from livegen.request import Request

    steps = None if model == "mg" else kw.pop("steps", 4)
    return Request(prompt=prompt, model=model, seconds=seconds, seed=seed, steps=steps, **kw)


def test_remote_render_equals_local_render(pool, local):
    from livegen.output.stream_sink import CollectingSink

    for model in ("default", "mg"):
        req = _request(f"remote equals local {model}", model)
        _, future = pool.submit(req)
        remote = future.result(120)
        ref = local.render(req)[1].result(120)
        assert remote.seed == ref.seed == 7
        assert remote.sample_rate == ref.sample_rate
        assert "1 BLAS threads" in pool.info(model)["device"] and "1 BLAS threads" in local.device, (
            pool.info(model)["device"], local.device)
        np.testing.assert_array_equal(remote.audio, ref.audio)
    # the streaming path (the daemon's for a played request): what the sink got, and the clip, too
    req = _request("remote equals local streamed", "default")
    remote_sink, local_sink = CollectingSink(), CollectingSink()
    remote = pool.submit(req, sink=remote_sink)[1].result(120)
    ref = local.render(req, sink=local_sink)[1].result(120)
    np.testing.assert_array_equal(remote.audio, ref.audio)
    np.testing.assert_array_equal(remote_sink.audio, local_sink.audio)
    assert remote_sink.ok is True


def test_chunks_arrive_before_the_clip_is_complete(pool):
    """MusicGen streams in 0.5 s bursts: a 2 s clip's first chunks reach the sink while the
    replica is still generating the rest."""

    class TimedSink:
        def __init__(self) -> None:
            self.times: list[float] = []
            self.frames = 0
            self.total = None

        def begin(self, sample_rate: int, total_frames: int) -> None:
            self.total = total_frames

        def write(self, chunk) -> None:
            self.times.append(time.monotonic())
            self.frames += chunk.shape[1]

        def end(self, ok: bool) -> None:
            self.ok = ok

    sink = TimedSink()
    _, future = pool.submit(_request("streamed bursts", "mg", seconds=2.0), sink=sink)
    clip = future.result(120)
    done = time.monotonic()
    assert len(sink.times) >= 3, sink.times
    assert sink.frames == sink.total == clip.frames
    # the first burst arrived well before the last one: generation was still going on
    assert sink.times[-1] - sink.times[0] > 0.05, sink.times
    assert sink.times[0] < done


def test_idempotent_job_key(pool):
    req = _request("same key twice", "default", seed=11)
    key = "lgtest-idempotent-1"
    a = pool.submit(req, key=key)[1].result(120)
    b = pool.submit(req, key=key)[1].result(120)
    np.testing.assert_array_equal(a.audio, b.audio)


def test_cancel_reaches_the_replica(pool):
    from livegen.errors import Cancelled

    started = threading.Event()
    key, future = pool.submit(_request("cancel me", "default", steps=250, seconds=0.5),
                              on_event=lambda e: started.set())
    assert started.wait(60)
    t0 = time.monotonic()
    pool.cancel(key)
    with pytest.raises(Cancelled):
        future.result(30)
    assert time.monotonic() - t0 < 5
    # the replica is free again: a next clip renders
    assert pool.submit(_request("after cancel", "default"))[1].result(120).frames > 0


def test_render_bank_on_the_pool_gives_the_local_files(cluster, pool, local, tmp_path):
    """`livegen render`'s plan and run on the pool (RayRenderer, clips spread over the replicas)
    and on the local worker: the same cache files, the same samples."""
    from livegen import render_bank as rb
    from livegen.engine.ray_client import RayRenderer
    from livegen.limits import ModelCaps

    settings = cluster["settings"]
    bank = tmp_path / "bank.csv"
    bank.write_text("prompt,seconds,steps\nkick drum,0.2,4\nsnare hit,0.2,4\nwarm pad,0.3,4\n")

    class Local:
        capacity = 2

        def caps(self):
            return {n: ModelCaps.from_engine(n, e, settings.models.get(n)) for n, e in local.worker.engines.items()}

        def submit(self, request):
            return local.render(request)[1]

        def close(self):
            pass

    remote = RayRenderer(pool, ["default"])  # not closed: the module's pool stays connected
    assert remote.capacity == 4  # 2 replicas, one clip queued behind each
    plan_local = rb.plan(settings, bank, Local().caps(), 2)
    plan_remote = rb.plan(settings, bank, remote.caps(), 2)
    assert [i.request for i in plan_local] == [i.request for i in plan_remote] and len(plan_local) == 6
    a, b = tmp_path / "local", tmp_path / "pool"
    assert rb.run(plan_local, Local(), rb.Outputs(a, None, settings.tempo.bpm), progress=False).rendered == 6
    summary = rb.run(plan_remote, remote, rb.Outputs(b, None, settings.tempo.bpm), progress=False)
    assert summary.rendered == 6 and not summary.failed
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names == sorted(p.name for p in b.glob("*.npy")) and len(names) == 6
    for name in names:
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name))


def test_killed_replica_job_is_retried_or_reported(pool, local):
    """SIGKILL to the replica rendering the job: the job comes back (retried on the other replica,
    equal to the local render) or fails with PoolLost; it never hangs or vanishes."""
    from livegen.engine.ray_client import PoolLost

    pids: list[int] = []
    started = threading.Event()

    def on_event(e) -> None:
        if e.kind == "started" and e.pid is not None:
            pids.append(e.pid)
            started.set()

    req = _request("killed mid job", "default", steps=12, seconds=0.3, seed=21)
    _, future = pool.submit(req, on_event=on_event)
    assert started.wait(60)
    os.kill(pids[0], signal.SIGKILL)  # a replica of the cluster this test started
    try:
        clip = future.result(240)
    except PoolLost as exc:
        assert "died" in str(exc)
        assert pool.counts["lost"] >= 1
    else:
        assert pool.counts["retried"] >= 1
        assert len(set(pids)) >= 2 or pids[-1] != pids[0]
        np.testing.assert_array_equal(clip.audio, local.render(req)[1].result(120).audio)


def _bridges_of_this_process() -> list[int]:
    """PIDs of the live Ray bridge processes this test process started (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"livegen.engine.ray_bridge" in cmd:
            out.append(int(entry.name))
    return out


def test_a_pool_that_stays_unavailable_leaves_no_bridge_process_behind(cluster, monkeypatch):
    """Regression (found by reading pooled.py): each reconnect to a pool that answers
    "unavailable" started a new bridge process and left the previous one running until the
    daemon stopped (after 3 tries: 4 bridges alive). Here the cluster is up but has no pool of the
    name asked for, so every connect is answered "unavailable" at once: each try has a bridge of
    its own while it asks, and none is left once the answer came."""
    import asyncio
    import copy

    import ray

    from livegen.engine import pooled
    from livegen.engine.loaders import build_loaders, worker_options

    monkeypatch.setattr(pooled, "RECONNECT_SECONDS", 0.2)  # try again on the next request
    settings = copy.deepcopy(cluster["settings"])
    settings.engine.kind = "ray"
    settings.engine.address = ray.get_runtime_context().gcs_address
    settings.engine.deployment = "lgnosuchpool"
    before = set(_bridges_of_this_process())

    async def scenario() -> tuple[set[int], list[list[int]], str | None, list[int]]:
        loop = asyncio.get_running_loop()
        engine = pooled.PooledEngine(settings, build_loaders(settings), worker_options(settings, render_nice=0),
                                     lambda event: None, loop)
        seen: set[int] = set()

        async def answered() -> None:
            deadline = time.monotonic() + 90
            while engine.state != "unavailable":
                assert time.monotonic() < deadline, engine.stats()["pool"]
                seen.update(set(_bridges_of_this_process()) - before)
                await asyncio.sleep(0.05)

        left: list[list[int]] = []
        engine.start()
        try:
            await answered()
            for i in range(3):
                await asyncio.sleep(0.3)
                engine.submit(_request(f"unavailable {i}", seconds=0.1, steps=1))  # renders here, tries again
                assert engine.state == "connecting"
                await answered()
                await asyncio.sleep(1.5)  # a bridge given up is closed off the loop
                left.append(sorted(set(_bridges_of_this_process()) - before))
            error = engine.error
        finally:
            await loop.run_in_executor(None, engine.close)
        await asyncio.sleep(1.0)
        return seen, left, error, sorted(set(_bridges_of_this_process()) - before)

    seen, left, error, after_close = asyncio.run(scenario())
    assert error and "no application" in error, error  # the pool's answer, not a bridge's end
    assert len(seen) >= 4, seen  # the first connect and each of the 3 tries had its own bridge
    assert left == [[], [], []], left  # was [[b1, b2], [b1, b2, b3], [b1, b2, b3, b4]]
    assert after_close == [], after_close
