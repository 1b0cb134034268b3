"""Where livegen's time goes: one DiT block's sub-layers at the benchmarked size, and the memory
bandwidth that bounds a MusicGen decoding step.

``dit_block_profile`` builds one ``TransformerBlock`` with the model's configuration (random
weights: the cost does not depend on them) and times, in MLX, the whole block and each part alone:
the self-attention sub-layer, its fused attention kernel alone (``scaled_dot_product_attention``),
the cross-attention sub-layer (keys/values precomputed, as livegen does per generation), the
feed-forward sub-layer and its two GEMMs alone. The GFLOP/s of each part against the GEMM ceiling
shows which ops keep the forward from it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np


def _time(fn: Callable[[], Any], repeats: int) -> float:
    mx.eval(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def dit_block_profile(cfg: Any, length: int, cond_tokens: int, batch: int, repeats: int = 3) -> dict[str, Any]:
    """Median seconds and GFLOP/s of one DiT block's parts at ``length`` latents, ``batch`` rows."""
    from livegen.models.stable_audio.dit import (
        TransformerBlock,
        attention_explicit,
        rotary_tables,
        use_fast_paths,
    )

    def attend(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:  # what the block uses
        if use_fast_paths():
            return attention_explicit(q, k, v, scale)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)

    mx.random.seed(0)
    block = TransformerBlock(cfg)
    mx.eval(block.parameters())
    d, n, s = cfg.embed_dim, length + 1, cond_tokens
    hidden = int(d * cfg.ff_mult)
    heads, dh = cfg.num_heads, cfg.dim_heads
    x = mx.random.normal((batch, n, d))
    context = mx.random.normal((batch, s, cfg.cond_embed_dim))
    kv = block.cross_attn.context_kv(context)
    rope = rotary_tables(n, cfg.rotary_dim) if cfg.rotary_pos_emb else None
    q = mx.random.normal((batch, heads, n, dh))
    w1 = block.ff.ff[0].proj.weight
    w2 = block.ff.ff[2].weight
    h1 = mx.random.normal((batch, n, hidden))
    mx.eval(x, kv, q, h1, *(rope or ()))

    parts = {
        "block": (lambda: block(x, rope, kv, None),
                  2 * batch * n * (4 * d * d + 2 * d * d + 3 * d * hidden + 2 * n * d + 2 * s * d)),
        "self_attention": (lambda: block.self_attn.self_attention(block.pre_norm(x), rope),
                           2 * batch * n * (4 * d * d + 2 * n * d)),
        "  attention_kernel": (lambda: attend(q, q, q, dh**-0.5), 2 * batch * n * 2 * n * d),
        "cross_attention": (lambda: block.cross_attn.cross_attention(block.cross_attend_norm(x), kv[0], kv[1], None),
                            2 * batch * n * (2 * d * d + 2 * s * d)),
        "feed_forward": (lambda: block.ff(block.ff_norm(x)), 2 * batch * n * 3 * d * hidden),
        "  ff_gemm_in": (lambda: x @ w1.T, 2 * batch * n * d * 2 * hidden),
        "  ff_gemm_out": (lambda: h1 @ w2.T, 2 * batch * n * hidden * d),
    }
    out: dict[str, Any] = {"length": length, "batch": batch, "cond_tokens": cond_tokens, "parts": {}}
    for name, (fn, flops) in parts.items():
        seconds = _time(fn, repeats)
        out["parts"][name] = {"seconds": seconds, "flops": float(flops), "gflops": flops / seconds / 1e9}
    blk = out["parts"]["block"]["seconds"]
    for name in ("self_attention", "cross_attention", "feed_forward"):
        out["parts"][name]["share_of_block"] = out["parts"][name]["seconds"] / blk
    return out


def memory_bandwidth_gbs(mbytes: int = 256, repeats: int = 3) -> float:
    """Copy bandwidth (read + write bytes per second, GB/s), best of numpy and MLX."""
    n = mbytes * 2**20 // 4
    a = np.ones(n, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    numpy_gbs = 2 * a.nbytes / best / 1e9
    m = mx.ones((n,))
    mx.eval(m)
    mlx_best = _time(lambda: m + 1.0, repeats)
    return max(numpy_gbs, 2 * a.nbytes / mlx_best / 1e9)


def musicgen_step_bound(hidden: int, layers: int, ffn: int, num_codebooks: int, vocab: int,
                        bandwidth_gbs: float) -> dict[str, float]:
    """Weight bytes a cached decoding step must read (fp32) and the steps/s that bandwidth allows."""
    d = hidden
    weights = layers * (4 * d * d + 2 * d * d + 2 * d * ffn) + num_codebooks * d * vocab
    nbytes = 4.0 * weights
    return {"weight_bytes_per_step": nbytes, "bandwidth_gbs": bandwidth_gbs,
            "bound_steps_per_s": bandwidth_gbs * 1e9 / nbytes}
