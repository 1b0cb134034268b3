"""Generation speed: batch (``pipe.generate`` in this process) vs the daemon (``livegen serve``).

    python bench/daemon_speed.py                                # tiny random model, both backends
    python bench/daemon_speed.py --size small --repeats 5 --backends rtmixer --threads 2,1

One run, side by side: a daemon is started per (audio backend, BLAS threads) configuration on the
running JACK server (audio out, OSC in), and its renders alternate with batch renders of the same
request in this process (the two never compute at the same time; both stay loaded). The daemon's
figure is its own render time (``worker.last_render_seconds`` in the status JSON: from the job's
start to the finished clip, the same work as one ``generate``), requests with ``audio.stream:
false`` (the buffered path; streaming is measured by bench/daemon_latency.py). Batch runs with the
batch defaults (every core, 1 GiB MLX cache, tiled decode). Reported: medians, the daemon / batch
ratio, and the daemon's underflows and JACK xruns (server-wide, seen by a JACK client here) during
its renders. ``--threads``: ``LIVEGEN_CPU_THREADS`` values for the daemon ("" = its default).
``LIVEGEN_RENDER_NICE`` in the environment reaches the daemon (its generation thread's priority
drop, default 10; this process runs at the priority it was started with).
Writes every sample to ``--out`` (default bench/results/daemon-speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import livegen  # noqa: E402,F401  (the optimised BLAS before anything imports mlx.core)
from bench.daemon_latency import Osc, _free_port, _status, jack_running  # noqa: E402

SIZES = {  # DiT overrides of the tiny Stable Audio small shape, and the clip (seconds, steps)
    "tiny": ({"depth": 1}, 0.25, 4),
    "small": ({"embed_dim": 256, "depth": 4, "num_heads": 4}, 0.25, 8),
}
PROMPT = "bench speed loop"


def build(size: str, workdir: Path) -> tuple[Path, Path]:
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    dit, _, _ = SIZES[size]
    info = build_tiny_stable_audio(workdir / f"model-{size}", "small", dit=dit, sample_size=22528)
    return Path(info["checkpoint_dir"]), Path(info["t5_dir"])


def settings(path: Path, model: Path, t5: Path, port: int, status_port: int, backend: str, seconds: float,
             steps: int, mapping: Path) -> None:
    path.write_text("\n".join([
        "models:", "  default:", "    engine: stable-audio", f"    path: {model}", f"    t5: {t5}",
        f"    seconds: {seconds}", f"    steps: {steps}",
        "osc:", f"  port: {port}", f"  status_port: {status_port}",
        "midi:", "  enabled: false",
        "audio:", "  enabled: true", f"  backend: {backend}", "  stream: false",
        "engine:", f"  warmup_seconds: [{seconds}]", "  max_seconds: 0.5",
        "web:", "  enabled: false",
        f"mappings: [{mapping}]",
    ]) + "\n")


class Xruns:
    """Counts JACK xruns (server-wide) while ``counting``."""

    def __init__(self) -> None:
        import jack

        self.count = 0
        self.counting = False
        self.client = jack.Client(f"lgspeed{os.getpid()}", no_start_server=True)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()

    def _xrun(self, _delay: float) -> None:
        if self.counting:
            self.count += 1

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def batch_once(pipe: Any, seconds: float, steps: int, seed: int) -> float:
    t0 = time.perf_counter()
    pipe.generate(PROMPT, seconds=seconds, steps=steps, seed=seed)
    return time.perf_counter() - t0


def daemon_once(osc: Osc, port: int, seed: int, timeout: float) -> float:
    mark = osc.mark()
    osc.send(port, "/livegen/generate", PROMPT, seed)
    job = osc.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[0] > 0)[0]
    osc.wait("/livegen/done", mark, timeout=timeout, where=lambda p: p[0] == job)
    return float(_status(osc, port)["worker"]["last_render_seconds"])


def run_config(pipe: Any, model: Path, t5: Path, cache: Path, workdir: Path, backend: str, threads: str,
               seconds: float, steps: int, repeats: int, xruns: Xruns, log) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    mapping = workdir / "mapping.yaml"
    mapping.write_text("name: speed\nparams:\n  launch: now\n")
    status, osc = Osc(), Osc()
    port = _free_port()
    config = workdir / "livegen.yaml"
    settings(config, model, t5, port, status.port, backend, seconds, steps, mapping)
    env = dict(os.environ, JACK_NO_START_SERVER="1", PYTHONUNBUFFERED="1", LIVEGEN_CACHE=str(cache),
               PYTHONPATH=str(ROOT))
    env.pop("LIVEGEN_CPU_THREADS", None)
    if threads:
        env["LIVEGEN_CPU_THREADS"] = threads
    log_path = workdir / "daemon.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "livegen", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    out: dict[str, Any] = {"backend": backend, "threads": threads or "default", "batch": [], "daemon": []}
    try:
        status.wait("/livegen/ready", timeout=600)
        device = next((line for line in log_path.read_text().splitlines() if "stage device" in line), "")
        out["device"] = device.split("stage device", 1)[-1].strip()
        daemon_once(osc, port, 1, 600)  # one render each before measuring
        batch_once(pipe, seconds, steps, 1)
        before = _status(osc, port)
        xruns.count, xruns.counting = 0, False
        for i in range(repeats):  # alternate: batch, daemon, daemon, batch, ...
            order = ("batch", "daemon") if i % 2 == 0 else ("daemon", "batch")
            for side in order:
                if side == "batch":
                    out["batch"].append(batch_once(pipe, seconds, steps, 100 + i))
                else:
                    xruns.counting = True
                    out["daemon"].append(daemon_once(osc, port, 100 + i, 600))
                    xruns.counting = False
            log(f"  {backend}/{out['threads']} {i + 1}/{repeats}: batch {out['batch'][-1]:.3f} s, "
                f"daemon {out['daemon'][-1]:.3f} s")
        after = _status(osc, port)
        out["underflows"] = int(after.get("underflows", 0)) - int(before.get("underflows", 0))
        out["xruns"] = xruns.count
    finally:
        proc.send_signal(2)
        try:
            out["exit_status"] = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit_status"] = proc.wait()
        status.close()
        osc.close()
    b, d = statistics.median(out["batch"]), statistics.median(out["daemon"])
    out.update(batch_median=b, daemon_median=d, ratio=d / b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--backends", default="rtmixer,python")
    ap.add_argument("--threads", default="", help="comma-separated LIVEGEN_CPU_THREADS for the daemon ('' = default)")
    ap.add_argument("--batch-threads", type=int, help="BLAS threads of the batch side (default: its own, every core)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "daemon-speed.json")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    ok, why = jack_running()
    if not ok:
        print(f"not measured: {why}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lgspeed-"))
    cache = workdir / "cache"
    os.environ["LIVEGEN_CACHE"] = str(cache)
    _, seconds, steps = SIZES[args.size]
    model, t5 = build(args.size, workdir)
    from livegen import device
    from livegen.models.stable_audio import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(str(model), t5=str(t5))
    applied = device.configure_mlx(threads=args.batch_threads) if args.batch_threads else device.configure_mlx()
    batch_device = {**applied, "cores": device._cpu_count(), "gflops": device.gemm_gflops(512, 2)}
    xruns = Xruns()
    results: dict[str, Any] = {"size": args.size, "seconds": seconds, "steps": steps, "repeats": args.repeats,
                               "batch_device": batch_device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "render_nice": os.environ.get("LIVEGEN_RENDER_NICE", "default (10)"),
                               "runs": []}
    try:
        for backend in [b for b in args.backends.split(",") if b]:
            for threads in args.threads.split(","):
                print(f"{backend}, daemon threads {threads or 'default'}:", flush=True)
                results["runs"].append(run_config(pipe, model, t5, cache, workdir / f"{backend}-{threads or 'd'}",
                                                  backend, threads.strip(), seconds, steps, args.repeats, xruns,
                                                  lambda s: print(s, flush=True)))
    finally:
        xruns.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{args.size} model, {seconds} s clip, {steps} steps, medians of {args.repeats} (batch: "
          f"{batch_device.get('blas_threads')} BLAS threads)")
    print("| daemon backend | daemon BLAS threads | batch | daemon | daemon / batch | underflows | xruns |")
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['backend']} | {r['threads']} | {r['batch_median']:.3f} s | {r['daemon_median']:.3f} s | "
              f"**{r['ratio']:.2f}x** | {r['underflows']} | {r['xruns']} |")
    print(f"samples: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
