"""Render pool bench: `livegen render`'s throughput on the local engine vs a Ray Serve pool with 2
replicas on this machine, and the overhead of one remote clip vs the same clip rendered locally.

    python bench/render_pool.py                       # tiny random Stable Audio checkpoint (needs the parity extra)
    python bench/render_pool.py --config livegen.yaml # the settings' default model
    python bench/render_pool.py --clips 8 --seconds 0.4 --steps 8 --repeats 5

Both sides render the same requests (distinct seeds) with the daemon's worker; the pool's clips
are checked equal to the local ones, sample for sample. The pool is a private cluster
(``ray.init()``) started here and stopped after: run it inside a network namespace with only
``lo`` (``ip netns exec``, see docs/benchmarks.md), since a cluster of several processes binds the
machine's external address otherwise. Writes bench/results/render-pool.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_settings(work: Path):  # noqa: ANN201 - livegen.settings.Settings
    from livegen.settings import load_settings
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    info = build_tiny_stable_audio(work, "small", sample_size=22528)
    (work / "mapping.yaml").write_text("name: bench\nparams:\n  seconds: 0.3\n")
    cfg = work / "livegen.yaml"
    cfg.write_text("\n".join([
        "models:", "  default:", "    engine: stable-audio", f"    path: {info['checkpoint_dir']}",
        f"    t5: {info['t5_dir']}", "osc:", "  enabled: false", "midi:", "  enabled: false", "audio:",
        "  enabled: false", "web:", "  enabled: false", "engine:", "  warmup_seconds: [0.1]", "  max_seconds: 0.5",
        f"mappings: [{work / 'mapping.yaml'}]", ""]))
    return load_settings(cfg)


def requests(n: int, seconds: float, steps: int) -> list:
    from livegen.request import Request

    return [Request(prompt=f"bench clip {i}", model="default", seconds=seconds, steps=steps, seed=1000 + i)
            for i in range(n)]


def render_all(submit, reqs: list, capacity: int) -> tuple[float, list]:
    t0 = time.monotonic()
    out: list = [None] * len(reqs)
    inflight: dict = {}
    todo = list(enumerate(reqs))
    while todo or inflight:
        while todo and len(inflight) < capacity:
            i, r = todo.pop(0)
            inflight[submit(r)] = i
        done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
        for f in done:
            out[inflight.pop(f)] = f.result()
    return time.monotonic() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="settings with the model to bench (default: a tiny random one)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="single-clip overhead samples")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "render-pool.json")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import numpy as np

    from livegen import _blas

    _blas.preload()
    from livegen.engine.ray_client import LocalCluster, RayPool
    from livegen.engine.ray_pool import deploy
    from livegen.render_bank import LocalRenderer

    work = Path(tempfile.mkdtemp(prefix="lg-bench-pool-"))
    os.environ.setdefault("LIVEGEN_CACHE", str(work / "cache"))
    if args.config:
        from livegen.settings import load_settings

        settings = load_settings(args.config)
    else:
        settings = tiny_settings(work)
    reqs = requests(args.clips, args.seconds, args.steps)
    single = requests(1, args.seconds, args.steps)[0].replace(prompt="bench overhead clip")
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "clips": args.clips, "seconds": args.seconds, "steps": args.steps, "replicas": args.replicas}

    local = LocalRenderer(settings)
    local.submit(single).result()  # warm
    local_time, local_clips = render_all(local.submit, reqs, local.capacity)
    local_single, local_around = [], []
    for _ in range(args.repeats):
        t = time.monotonic()
        ref = local.submit(single).result()
        local_single.append(time.monotonic() - t)
        local_around.append(local_single[-1] - ref.render_seconds)  # the time around the render itself
    local.close()

    cluster = LocalCluster(replicas=args.replicas)
    t = time.monotonic()
    cluster.start()
    deploy(settings, "lgbench", ["default"], replicas=args.replicas, num_cpus=cluster.cpus_per_replica)
    result["pool_start_seconds"] = round(time.monotonic() - t, 2)
    pool = RayPool("auto", "lgbench")
    pool.connect(["default"])
    try:
        pool.submit(single)[1].result()  # warm both routes
        pool_time, pool_clips = render_all(lambda r: pool.submit(r)[1], reqs, 2 * args.replicas)
        remote_single, remote_around = [], []
        for _ in range(args.repeats):
            t = time.monotonic()
            clip = pool.submit(single)[1].result()
            remote_single.append(time.monotonic() - t)
            remote_around.append(remote_single[-1] - clip.render_seconds)  # render_seconds: the replica's own
        equal = all(np.array_equal(a.audio, b.audio) for a, b in zip(local_clips, pool_clips, strict=True))
        equal = equal and np.array_equal(clip.audio, ref.audio)
    finally:
        pool.close(shutdown=False)
        cluster.stop()
    lm, rm = statistics.median(local_single), statistics.median(remote_single)
    # The overhead of a remote clip: its wall time minus the render the replica measured itself
    # (Serve routing, the request's pickling, the streamed reply, the client's reassembly), less
    # the same difference locally. Render times spread by seconds on a shared machine; this
    # difference does not contain them.
    la, ra = statistics.median(local_around), statistics.median(remote_around)
    result.update({
        "local_seconds": round(local_time, 3), "pool_seconds": round(pool_time, 3),
        "local_clips_per_min": round(60 * args.clips / local_time, 2),
        "pool_clips_per_min": round(60 * args.clips / pool_time, 2),
        "throughput_ratio_pool_over_local": round(local_time / pool_time, 3),
        "single_local_ms": [round(x * 1000, 1) for x in local_single],
        "single_remote_ms": [round(x * 1000, 1) for x in remote_single],
        "wall_difference_ms_median": round((rm - lm) * 1000, 1),
        "around_render_local_ms": [round(x * 1000, 1) for x in local_around],
        "around_render_remote_ms": [round(x * 1000, 1) for x in remote_around],
        "overhead_ms_median": round((ra - la) * 1000, 1),
        "clip_bytes": int(ref.audio.nbytes), "equal_samples": bool(equal),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"local: {args.clips} clips in {local_time:.2f} s ({result['local_clips_per_min']} clips/min)")
    print(f"pool ({args.replicas} replicas): {pool_time:.2f} s ({result['pool_clips_per_min']} clips/min), "
          f"ratio {result['throughput_ratio_pool_over_local']}x")
    print(f"one clip: local median {lm * 1000:.0f} ms, remote median {rm * 1000:.0f} ms; around the render "
          f"local {la * 1000:.1f} ms, remote {ra * 1000:.1f} ms: overhead {result['overhead_ms_median']} ms "
          f"({result['clip_bytes']} bytes of audio); equal samples: {equal}")
    print(f"-> {args.out}")
    return 0 if equal else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # MLX's native threads at interpreter finalisation can abort (see livegen/cli/render.py)
