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
