"""livegen benchmark suite: livegen vs the reference implementations, side by side in one run.

    python bench/run.py                       # everything, full-size models (20-40 minutes on 2 cores)
    python bench/run.py --smoke               # the same code paths at tiny sizes, 1 repetition (CI)
    python bench/run.py --only sa-small,musicgen --repeats 5

Full-size architectures with random weights (compute does not depend on the values), fp32 on the
CPU. Every measurement alternates livegen and reference runs; medians and ratios are reported,
with the FLOPs of the work and the fraction of the machine's fp32 GEMM ceiling measured in the
same run. Prints one table and writes every sample to ``bench/results/last.json`` (see
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# `python bench/run.py` puts bench/ first on sys.path, where its modules could shadow others: use the root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import livegen  # noqa: E402,F401  (loads the optimised BLAS before anything imports mlx.core)

PARTS = ("sa-small", "musicgen", "daemon", "sa-1.0")  # run in this order: the main targets first
DEFAULT_OUT = ROOT / "bench" / "results" / "last.json"
SMOKE_OUT = Path(tempfile.gettempdir()) / "livegen-bench-smoke.json"  # smoke runs never replace last.json


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, 1 repetition: checks the code paths (CI); no claims from its figures")
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated parts to run, from: {', '.join(PARTS)} (default: all)")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating repetitions per side of the fast measurements (DiT forward, VAE decode, "
                        "MusicGen) (default 3)")
    p.add_argument("--slow-repeats", type=int, default=2,
                   help="repetitions of the slow ones (8-step loop, whole generate, SA 1.0 forward) (default 2)")
    p.add_argument("--musicgen-frames", type=int, default=150,
                   help="MusicGen frames generated per run (default 150 = 3 s; smoke: 6)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS (and torch) threads for both sides; default: each side its own default "
                        "(livegen: every core, the daemon all but one, see livegen.device; the reference: "
                        "1 BLAS thread beside torch's own threads)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results (default {DEFAULT_OUT}; with --smoke {SMOKE_OUT})")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the random checkpoints and the livegen cache go (default: a temporary dir)")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.repeats < 1 or args.slow_repeats < 1:
        p.error("--repeats and --slow-repeats must be at least 1")
    if args.out is None:
        args.out = SMOKE_OUT if args.smoke else DEFAULT_OUT
    if args.smoke:
        args.repeats = args.slow_repeats = 1
        args.musicgen_frames = min(args.musicgen_frames, 6)
    return args


class Results:
    def __init__(self, args: argparse.Namespace, machine: dict[str, Any]):
        self.data: dict[str, Any] = {
            "suite": "livegen bench",
            "command": "python bench/run.py " + " ".join(sys.argv[1:]),
            "smoke": args.smoke,
            "settings": {"parts": args.parts, "repeats": args.repeats, "slow_repeats": args.slow_repeats,
                         "musicgen_frames": args.musicgen_frames, "dtype": "float32",
                         "threads": args.threads},
            "machine": machine,
            "ceiling": {},
            "measurements": [],
            "errors": {},
            "not_measured": {},
        }

    @property
    def ceiling_gflops(self) -> float | None:
        return self.data["ceiling"].get("gemm_gflops")

    def add(self, name: str, part: str, pair, extra: dict[str, Any], *, rate_unit: str | None = None) -> None:
        """One side-by-side measurement; ``pair`` holds seconds per sample."""
        entry: dict[str, Any] = {"name": name, "part": part, "unit": "s"}
        flops = extra.get("flops")
        for side in ("livegen", "reference"):
            samples = list(getattr(pair, side))
            med = pair.median(samples)
            stats: dict[str, Any] = {"samples": samples, "median": med}
            if med:
                if rate_unit:
                    stats[rate_unit] = 1.0 / med
                if flops:
                    gflops = flops / med / 1e9
                    stats["gflops"] = gflops
                    if self.ceiling_gflops:
                        stats["fraction_of_ceiling"] = gflops / self.ceiling_gflops
            entry[side] = stats
        entry["ratio"] = pair.ratio()  # livegen time / reference time
        entry["speedup"] = None if not entry["ratio"] else 1.0 / entry["ratio"]
        entry.update(extra)
        self.data["measurements"].append(entry)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        tmp.replace(path)


def measure_ceiling(results: Results, smoke: bool, when: str) -> None:
    """fp32 GEMM with every core (the machine's ceiling), livegen's batch and its daemon thread count."""
    from bench.flops import measure_ceiling as measure
    from bench.timing import Threads
    from livegen import device

    sizes = (512,) if smoke else (1024, 2048)
    cores = os.cpu_count() or 1
    runs = []
    for threads in sorted({cores, Threads.livegen or cores, device.default_blas_threads(realtime=True)},
                          reverse=True):
        device.set_blas_threads(threads)
        runs += [dict(measure(n), blas_threads=threads) for n in sizes]
    Threads.use("livegen")
    best = max(max(r["mlx_gemm_gflops"], r.get("torch_gemm_gflops", 0.0)) for r in runs if r["blas_threads"] == cores)
    results.data["ceiling"][when] = runs
    if when == "start":
        results.data["ceiling"]["gemm_gflops"] = best
        results.data["ceiling"]["definition"] = (
            f"best fp32 GEMM GFLOP/s of MLX (optimised BLAS) and torch with all {cores} cores, at the start of the run")
    log(f"ceiling ({when}): " + "; ".join(
        f"{r['blas_threads']} thr n={r['gemm_n']}: MLX {r['mlx_gemm_gflops']:.1f}, "
        f"torch {r.get('torch_gemm_gflops', float('nan')):.1f} GFLOP/s" for r in runs))


def run_sa_small(results: Results, args: argparse.Namespace, workdir: Path) -> None:
    from bench import stable_audio as sa

    b = sa.build("small", sa.Sizes(args.smoke), workdir, pipeline=True, log=log)
    part = "sa-small"
    for cfg, label in ((1.0, "b1"), (7.0, "b2 (cfg 7)")):
        pair, extra = sa.dit_forward_pair(b, cfg, args.repeats, log)
        results.add(f"SA small DiT forward {label}", part, pair, extra)
    profile_dit(results, part, b, (1, 2), args.repeats)
    from bench.timing import Threads
    from livegen import device

    realtime = device.default_blas_threads(realtime=True)
    if Threads.livegen is not None and realtime < Threads.livegen and args.threads is None:
        own = Threads.livegen  # also with the daemon's thread count (one core left to audio)
        Threads.livegen = realtime
        try:
            for cfg, label in ((1.0, "b1"), (7.0, "b2 (cfg 7)")):
                pair, extra = sa.dit_forward_pair(b, cfg, args.repeats, log)
                extra["livegen_blas_threads"] = realtime
                results.add(f"SA small DiT forward {label}, livegen {realtime} threads (daemon)", part, pair,
                            extra)
        finally:
            Threads.livegen = own
    pair, extra = sa.pingpong_pair(b, 8, args.slow_repeats, log)
    results.add("SA small 8-step ping-pong loop", part, pair, extra)
    pair, extra = sa.vae_decode_pair(b, args.slow_repeats, log)
    results.add("SA small VAE decode", part, pair, extra)
    pair, extra = sa.generate_pair(b, 8, args.slow_repeats, log)
    results.add("SA small generate (whole)", part, pair, extra)
    from bench.streaming import stable_audio_first_audio

    results.data.setdefault("streaming", {})["sa-small"] = stable_audio_first_audio(
        b.pipe, b.seconds, 8, 16 if not args.smoke else 2, args.slow_repeats, log)


def run_sa_10(results: Results, args: argparse.Namespace, workdir: Path) -> None:
    from bench import stable_audio as sa

    b = sa.build("1.0", sa.Sizes(args.smoke), workdir, pipeline=False, log=log)
    warm = min(b.latent_length, 64)
    pair, extra = sa.dit_forward_pair(b, 7.0, args.slow_repeats, log, warm_length=warm)
    results.add("SA 1.0 DiT forward b2 (cfg 7)", "sa-1.0", pair, extra)
    profile_dit(results, "sa-1.0", b, (2,), args.slow_repeats)


def profile_dit(results: Results, part: str, b, batches: tuple[int, ...], repeats: int) -> None:
    """One livegen DiT block's parts at the benchmarked size (see bench/breakdown.py)."""
    from bench.breakdown import dit_block_profile
    from bench.timing import Threads

    Threads.use("livegen")
    t5 = next(c for c in b.config["model"]["conditioning"]["configs"] if c["type"] == "t5")
    cond_tokens = t5["config"]["max_length"] + len(b.numbers())  # prompt tokens + one per number
    prof = {f"b{n}": dit_block_profile(b.dit.config, b.latent_length, cond_tokens, n, repeats) for n in batches}
    results.data.setdefault("profile", {})[part] = prof
    for key, p in prof.items():
        log(f"  {part} DiT block {key}: " + ", ".join(
            f"{name.strip()} {1e3 * v['seconds']:.1f} ms ({v['gflops']:.0f} GFLOP/s)" for name, v in p["parts"].items()))


def run_musicgen(results: Results, args: argparse.Namespace, workdir: Path) -> None:
    from bench import musicgen as mg

    b = mg.build(args.smoke, workdir, log)
    from bench.breakdown import memory_bandwidth_gbs, musicgen_step_bound

    pair, extra = mg.steps_pair(b, args.musicgen_frames, args.repeats, log)
    d = b.decoder
    extra["memory_bound"] = musicgen_step_bound(d.hidden_size, d.num_hidden_layers, d.ffn_dim, d.num_codebooks,
                                                d.vocab_size, memory_bandwidth_gbs(32 if args.smoke else 256))
    results.add("MusicGen small decode step (cfg 3, b2)", "musicgen", pair, extra, rate_unit="steps_per_s")
    bound = extra["memory_bound"]["bound_steps_per_s"]
    for side in ("livegen", "reference"):
        stats = results.data["measurements"][-1][side]
        if stats.get("steps_per_s"):
            stats["fraction_of_bandwidth_bound"] = stats["steps_per_s"] / bound
    from bench.streaming import musicgen_first_audio

    seconds = args.musicgen_frames / b.pipe.frame_rate
    results.data.setdefault("streaming", {})["musicgen"] = musicgen_first_audio(
        b.pipe, seconds, 0.5 if not args.smoke else 2 / b.pipe.frame_rate, args.repeats, log)


def run_daemon(results: Results, args: argparse.Namespace, workdir: Path) -> None:
    from bench import daemon_latency as dl

    ok, why = dl.jack_running()
    if not ok:
        results.data["not_measured"]["daemon"] = why
        log(f"daemon: not measured: {why}")
        return
    if args.smoke:
        from tests.reference.sa_checkpoint import build_tiny_stable_audio

        info = build_tiny_stable_audio(workdir / "daemon-model", "small", sample_size=22528)
        model, t5 = info["checkpoint_dir"], info["t5_dir"]
        plan = dl.Plan(seconds=0.1, steps=2, uncached=1, cached=1, continuous_seconds=3.0, load_timeout=180,
                       generate_timeout=120)
    else:
        model, t5 = workdir / "sa-small" / "stable-audio", workdir / "sa-small" / "t5-base"
        if not (model / "model.safetensors").is_file():
            from bench import stable_audio as sa

            sa.build("small", sa.Sizes(False), workdir, pipeline=True, log=log)
        plan = dl.Plan(seconds=4.0, steps=8, uncached=args.slow_repeats + 1, cached=5, continuous_seconds=60.0,
                       load_timeout=900, generate_timeout=900)
    results.data["daemon"] = dl.run(model, t5, Path(os.environ["LIVEGEN_CACHE"]), workdir / "daemon", plan, log,
                                    threads=args.threads)


RUNNERS = {"sa-small": run_sa_small, "sa-1.0": run_sa_10, "musicgen": run_musicgen, "daemon": run_daemon}


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_rate(stats: dict[str, Any]) -> str:
    if "gflops" not in stats:
        return "-"
    frac = stats.get("fraction_of_ceiling")
    return f"{stats['gflops']:.1f}" + (f" ({100 * frac:.0f}%)" if frac is not None else "")


def table(data: dict[str, Any]) -> str:
    ceiling = data["ceiling"].get("gemm_gflops")
    head = ["measurement", "livegen", "reference", "lg/ref", "livegen GFLOP/s (%ceil)", "ref GFLOP/s (%ceil)", "n"]
    rows = [head]
    for m in data["measurements"]:
        lg, ref = m["livegen"], m["reference"]
        if "steps_per_s" in lg:
            lg_s = f"{lg['steps_per_s']:.2f} steps/s"
            ref_s = f"{ref['steps_per_s']:.2f} steps/s" if "steps_per_s" in ref else "-"
        else:
            lg_s, ref_s = _fmt_time(lg["median"]), _fmt_time(ref["median"])
        ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}x"
        rows.append([m["name"], lg_s, ref_s, ratio, _fmt_rate(lg), _fmt_rate(ref),
                     f"{len(lg['samples'])}/{len(ref['samples'])}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = "livegen vs reference, fp32 CPU, medians (lg/ref < 1: livegen faster)"
    if ceiling:
        title += f"; GEMM ceiling {ceiling:.1f} GFLOP/s"
    if data["smoke"]:
        title += "  [SMOKE: tiny sizes, no claims]"
    out = [title, *lines]
    d = data.get("daemon")
    if d:
        period = d["jack"]["period_seconds"]
        for kind in ("uncached", "cached"):
            m = d.get(kind) or {}
            if m.get("median") is not None:
                served = m.get("served_from_cache")
                note = "" if served is None else f", {sum(served)}/{len(served)} served from the cache"
                out.append(f"daemon {kind} trigger -> first frame: {_fmt_time(m['median'])} "
                           f"({m['median'] / period:.1f} periods of {d['jack']['period']} frames; "
                           f"n={len(m['samples'])}, clip {d['clip_seconds']} s, {d['steps']} steps{note})")
            elif m.get("not_measured"):
                out.append(f"daemon {kind}: not measured: {m['not_measured']}")
        c = d.get("continuous")
        if c:
            out.append(f"daemon continuous generation {c['seconds']:.0f} s: {c['clips_generated']} clips, "
                       f"{c['jack_xruns']} JACK xruns, {c['underflows']} underflows")
    for key, label in (("sa-small", "SA small generate_stream"), ("musicgen", "MusicGen small generate_stream")):
        st = data.get("streaming", {}).get(key)
        if st:
            out.append(f"{label} ({st['seconds']:.1f} s of audio): first audio after "
                       f"{_fmt_time(st['median_first_audio_s'])}, whole clip {_fmt_time(st['median_full_clip_s'])} "
                       f"({100 * st['first_over_full']:.0f} %; n={len(st['runs'])})")
    for part, err in data["errors"].items():
        out.append(f"ERROR in {part}: {err.splitlines()[-1] if err else ''}")
    for part, why in data["not_measured"].items():
        out.append(f"not measured: {part}: {why}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.timing import Threads, machine_info

    results = Results(args, machine_info())
    results.data["settings"].update(Threads.configure(args.threads))
    m = results.data["machine"]
    log(f"machine: {m['cpu_model']}, {m['cpus']} CPUs, BLAS {m['blas']}, MLX {m['versions']['mlx']}, "
        f"torch {m['versions']['torch']} ({m['torch_threads']} threads)")
    with tempfile.TemporaryDirectory(prefix="livegen-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        previous_cache = os.environ.get("LIVEGEN_CACHE")
        os.environ["LIVEGEN_CACHE"] = str(workdir / "livegen-cache")  # never the user's cache
        start = time.perf_counter()
        measure_ceiling(results, args.smoke, "start")
        for part in args.parts:
            log(f"== {part}")
            t0 = time.perf_counter()
            try:
                RUNNERS[part](results, args, workdir)
            except Exception:
                results.data["errors"][part] = traceback.format_exc()
                log(f"{part} FAILED:\n{results.data['errors'][part]}")
            results.data.setdefault("part_seconds", {})[part] = time.perf_counter() - t0
            gc.collect()
            try:
                import mlx.core as mx

                mx.clear_cache()
            except (ImportError, AttributeError):
                pass
            results.write(args.out)  # keep what was measured if a later part is interrupted
        measure_ceiling(results, args.smoke, "end")
        results.data["total_seconds"] = time.perf_counter() - start
        if previous_cache is None:
            os.environ.pop("LIVEGEN_CACHE", None)
        else:
            os.environ["LIVEGEN_CACHE"] = previous_cache
    results.write(args.out)
    print(table(results.data))
    log(f"wrote {args.out}")
    return 1 if results.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
