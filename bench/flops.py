"""Analytic FLOP counts of the benchmarked models and the machine's measured fp32 ceilings.

Counts are multiply-adds x 2 of the matrix products (linear layers, 1x1 convolutions, attention
scores and weighted sums); element-wise work (norms, activations, softmax, rotary) is left out,
as is usual. ``dit_forward_flops`` counts what one reference DiT forward computes (including the
conditioning projections and every layer's cross-attention keys/values, which livegen computes
once per generation); ``musicgen_generation_flops`` counts the decoder steps with a KV cache.
"""

from __future__ import annotations

import time
from typing import Any


def dit_forward_flops(cfg: Any, latent_length: int, cond_tokens: int, batch: int = 1) -> dict[str, float]:
    """FLOPs of one DiT forward over ``batch`` sequences (with CFG, batch = 2 x prompts).

    ``cfg``: a ``livegen.models.stable_audio.config.DiTConfig`` (or anything with the same fields).
    Returns ``{"linear": ..., "attention": ..., "total": ...}``: ``linear`` are the weight
    products (what ``torch.utils.flop_counter`` sees on the CPU, where it does not count fused
    attention), ``attention`` the score and value products.
    """
    d, c, length, s = cfg.embed_dim, cfg.io_channels, latent_length, cond_tokens
    n = length + 1  # the global-conditioning token is prepended
    hidden = int(d * cfg.ff_mult)
    macs = 128 + 256 * d + d * d  # timestep Fourier features + embedding MLP
    de = cfg.cond_embed_dim
    if cfg.cond_token_dim > 0:  # to_cond_embed: Linear, SiLU, Linear
        macs += s * (cfg.cond_token_dim * de + de * de)
    if cfg.global_cond_dim > 0:  # to_global_embed: Linear, SiLU, Linear
        ge = cfg.global_embed_dim
        macs += cfg.global_cond_dim * ge + ge * ge
    macs += 2 * length * c * c  # 1x1 pre/post convolutions
    macs += length * c * d + n * d * c  # project_in (latents), project_out (all tokens)
    per_layer = n * d * 3 * d + n * d * d  # self-attention qkv + out
    if cfg.cond_token_dim > 0:
        per_layer += n * d * d + s * de * 2 * de + n * d * d  # cross q, kv, out
    per_layer += n * d * 2 * hidden + n * hidden * d  # GLU feed-forward
    macs += cfg.depth * per_layer
    attn = cfg.depth * (2 * n * n * d + (2 * n * s * d if cfg.cond_token_dim > 0 else 0))
    linear = 2.0 * batch * macs
    attention = 2.0 * batch * attn
    return {"linear": linear, "attention": attention, "total": linear + attention}


def musicgen_generation_flops(
    hidden: int,
    layers: int,
    ffn: int,
    num_codebooks: int,
    vocab: int,
    text_tokens: int,
    steps: int,
    batch: int = 2,
    text_dim: int = 768,
) -> dict[str, float]:
    """FLOPs of ``steps`` cached decoder steps of MusicGen (batch 2 = prompt + null for CFG).

    ``prefill``: the once-per-generation text projection and cross-attention keys/values;
    ``steps``: the sum over the decoding steps (one new token per codebook-stack per step; the
    self-attention at step p attends to p + 1 keys); ``per_step``: their mean.
    """
    d = hidden
    per_token = layers * (4 * d * d + 2 * d * d + 2 * d * ffn) + num_codebooks * d * vocab
    step_macs = 0
    for p in range(steps):
        step_macs += per_token + layers * (2 * (p + 1) * d + 2 * text_tokens * d)
    prefill = text_tokens * text_dim * d + layers * text_tokens * d * 2 * d
    total_steps = 2.0 * batch * step_macs
    return {"prefill": 2.0 * batch * prefill, "steps": total_steps, "per_step": total_steps / max(steps, 1)}


def mlx_gemm_gflops(n: int = 1024, repeats: int = 3) -> float:
    """fp32 GEMM GFLOP/s of MLX's default device (best of ``repeats``; livegen.device)."""
    from livegen.device import gemm_gflops

    return gemm_gflops(n, repeats)


def torch_gemm_gflops(n: int = 1024, repeats: int = 3) -> float:
    """fp32 GEMM GFLOP/s of torch on the CPU (best of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def mlx_gemv_gflops(rows: int = 2, d: int = 1024, out: int = 4096, repeats: int = 20) -> float:
    """GFLOP/s of a decode-sized product ``[rows, d] @ [d, out]`` in MLX (memory-bound)."""
    import mlx.core as mx

    x = mx.random.normal((rows, d))
    w = mx.random.normal((out, d))
    mx.eval(x, w, x @ w.T)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(x @ w.T)
        best = min(best, time.perf_counter() - start)
    return 2 * rows * d * out / best / 1e9


def torch_gemv_gflops(rows: int = 2, d: int = 1024, out: int = 4096, repeats: int = 20) -> float:
    """GFLOP/s of a decode-sized product ``[rows, d] @ [d, out]`` in torch (memory-bound)."""
    import torch

    x, w = torch.randn(rows, d), torch.randn(out, d)
    x @ w.T
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x @ w.T
        best = min(best, time.perf_counter() - start)
    return 2 * rows * d * out / best / 1e9


def measure_ceiling(n: int, repeats: int = 3) -> dict[str, float]:
    """The machine's fp32 ceilings now: GEMM (n x n) and decode-sized GEMV, MLX and torch."""
    out = {"gemm_n": n, "mlx_gemm_gflops": mlx_gemm_gflops(n, repeats)}
    try:
        out["torch_gemm_gflops"] = torch_gemm_gflops(n, repeats)
        out["torch_gemv_gflops"] = torch_gemv_gflops()
    except ImportError:
        pass
    out["mlx_gemv_gflops"] = mlx_gemv_gflops()
    return out
