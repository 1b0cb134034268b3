"""First sound early: time to the first audio piece vs time to the whole clip (livegen only).

Stable Audio small: ``StableAudioPipeline.generate_stream`` samples the latents, then hands out
the audio piece by piece from the VAE's exact streaming decoder; MusicGen small:
``MusicGenPipeline.generate_stream`` decodes EnCodec chunks while tokens are still being
produced. Each run records, from the call, when the sampler finished (Stable Audio: the last
step's progress callback), when the first piece arrived and when the last one did. The reference
implementations have no streaming path: their whole-clip times are the ``generate`` rows of the
side-by-side table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.timing import Threads

PROMPT = "warm deep techno loop with analog bass"


def _time_pieces(pieces: Iterator[Any]) -> dict[str, float]:
    """Seconds from now to the first and the last piece of ``pieces`` ([..., n] audio), and counts."""
    t0 = time.perf_counter()
    first = None
    frames = count = 0
    for piece in pieces:
        if first is None:
            first = time.perf_counter()
        frames += piece.shape[-1]
        count += 1
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("the stream yielded no audio")
    return {"t0": t0, "first_audio_s": first - t0, "full_clip_s": end - t0, "frames": float(frames),
            "pieces": float(count)}


def _measure(run: Callable[[int], dict[str, float]], warm: Callable[[], Any], repeats: int, label: str,
             log: Callable[[str], None]) -> dict[str, Any]:
    """One warm-up (compilation, buffers), then ``repeats`` runs with seeds 1.., summarised."""
    warm()
    runs = []
    for i in range(repeats):
        r = run(i + 1)
        sampled = f"sampled {r['sampled_s']:.2f} s, " if "sampled_s" in r else ""
        log(f"  {label} stream {i + 1}/{repeats}: {sampled}first audio {r['first_audio_s']:.2f} s, "
            f"whole clip {r['full_clip_s']:.2f} s ({int(r['pieces'])} pieces)")
        runs.append(r)
    keys = runs[0].keys()
    out: dict[str, Any] = {"runs": runs}
    for key in keys:
        out[f"median_{key}"] = statistics.median(r[key] for r in runs)
    out["first_over_full"] = out["median_first_audio_s"] / out["median_full_clip_s"]
    return out


def stable_audio_first_audio(pipe: Any, seconds: float, steps: int, chunk_latents: int, repeats: int,
                             log: Callable[[str], None]) -> dict[str, Any]:
    """``generate_stream`` at cfg 1 with ping-pong ``steps``, ``chunk_latents`` per piece."""
    Threads.use("livegen")  # livegen's own BLAS threads (a side-by-side run may have left the reference's)

    def stream(secs: float, seed: int, progress=None) -> Iterator[Any]:
        return pipe.generate_stream(PROMPT, seconds=secs, steps=steps, cfg_scale=1.0, sampler="pingpong",
                                    seed=seed, chunk_latents=chunk_latents, progress=progress)

    def run(seed: int) -> dict[str, float]:
        sampled: list[float] = []
        r = _time_pieces(stream(seconds, seed, lambda *_: sampled.append(time.perf_counter())))
        r["sampled_s"] = sampled[-1] - r["t0"]
        del r["t0"]
        return r

    out = _measure(run, lambda: list(stream(min(seconds, 1.0), 0)), repeats, "SA", log)
    out.update(seconds=seconds, steps=steps, chunk_latents=chunk_latents)
    return out


def musicgen_first_audio(pipe: Any, seconds: float, chunk_seconds: float, repeats: int,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """``generate_stream`` with guidance 3, top-k 250, ``chunk_seconds`` per piece."""
    Threads.use("livegen")  # livegen's own BLAS threads (a side-by-side run may have left the reference's)

    def stream(secs: float, seed: int) -> Iterator[Any]:
        return pipe.generate_stream(PROMPT, seconds=secs, chunk_seconds=chunk_seconds, top_k=250,
                                    guidance_scale=3.0, seed=seed)

    def run(seed: int) -> dict[str, float]:
        r = _time_pieces(stream(seconds, seed))
        del r["t0"]
        return r

    out = _measure(run, lambda: list(stream(min(seconds, 2 * chunk_seconds), 0)), repeats, "MusicGen", log)
    out.update(seconds=seconds, chunk_seconds=chunk_seconds)
    return out
