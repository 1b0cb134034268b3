"""The DiT's CPU fast paths (polynomial exp, explicit-softmax attention, fused SwiGLU) give the same
numbers as the plain MLX formulations, and per-generation work is done once, not per step."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from livegen.models.stable_audio import dit as D
from livegen.models.stable_audio.config import DiTConfig
from tests.models.stable_audio.test_stream import pipe  # noqa: F401  (the tiny MLX-only pipeline fixture)

TOL = 1e-5  # max abs error / max abs value


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def test_exp_poly_matches_exp():
    x = np.concatenate([np.linspace(-87, 88, 200_001), np.random.default_rng(0).standard_normal(10_000)])
    x = x.astype(np.float32)
    got = np.array(D.exp_poly(mx.array(x)), dtype=np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.all(np.isfinite(got))
    assert float(np.max(np.abs(got - want) / want)) < 5e-7  # (mx.exp: 4e-6 near the ends)
    # clamped outside the float32 normal range: tiny positive below, finite above
    ends = np.array(D.exp_poly(mx.array(np.array([-1e4, -200.0, 200.0], dtype=np.float32))))
    assert 0 < ends[0] < 1e-37 and 0 < ends[1] < 1e-37 and np.isfinite(ends[2]) and ends[2] > 1e38


def test_swiglu_fast_matches_silu():
    rng = np.random.default_rng(1)
    x = mx.array(rng.standard_normal((2, 9, 48)).astype(np.float32))
    gate = mx.array((8 * rng.standard_normal((2, 9, 48))).astype(np.float32))
    gate = mx.concatenate([gate, mx.array(np.full((2, 9, 2), -120.0, np.float32))], axis=-1)[..., 2:]
    assert rel(D._swiglu_fast(x, gate), x * nn.silu(gate)) < TOL


@pytest.mark.parametrize("block_pairs", [None, 1, 3])  # default (one block here), one (batch, kv head) pair, 3
@pytest.mark.parametrize("heads, kv_heads, n, s", [(4, 4, 17, 17), (4, 2, 17, 5), (6, 1, 3, 11)])
def test_attention_explicit_matches_sdpa(heads, kv_heads, n, s, block_pairs, monkeypatch):
    if block_pairs is not None:  # score blocks of block_pairs (batch, key/value head) pairs
        monkeypatch.setattr(D, "ATTENTION_BLOCK_BYTES", block_pairs * (heads // kv_heads) * n * s * 4)
    rng = np.random.default_rng(heads * 10 + kv_heads)
    q = mx.array(rng.standard_normal((2, heads, n, 16)).astype(np.float32) * 3)
    k = mx.array(rng.standard_normal((2, kv_heads, s, 16)).astype(np.float32) * 3)
    v = mx.array(rng.standard_normal((2, kv_heads, s, 16)).astype(np.float32))
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25)
    assert rel(D.attention_explicit(q, k, v, 0.25), want) < TOL


def test_fast_paths_switch():
    with D.fast_paths(True):
        assert D.use_fast_paths()
        with D.fast_paths(False):
            assert not D.use_fast_paths()
        assert D.use_fast_paths()
    with D.fast_paths(None):
        assert D.use_fast_paths() == (mx.default_device() == mx.cpu)


def _random_dit(cfg: DiTConfig, seed: int) -> D.DiffusionTransformer:
    from mlx.utils import tree_flatten

    mx.random.seed(seed)
    model = D.DiffusionTransformer(cfg)
    params = {k: (0.5 + mx.random.uniform(shape=v.shape)) if k.endswith(("gamma", "norm.weight"))
              else mx.random.normal(v.shape) / math.sqrt(max(v.shape[-1], 1))
              for k, v in tree_flatten(model.parameters())}
    model.load_weights(list(params.items()), strict=True)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("cfg", [
    DiTConfig(io_channels=8, embed_dim=64, depth=2, num_heads=2, cond_token_dim=24, global_cond_dim=12,
              qk_norm="ln"),
    # cross-attention K/V narrower than the model (grouped heads, as in Stable Audio Open 1.0)
    DiTConfig(io_channels=8, embed_dim=128, depth=1, num_heads=4, cond_token_dim=64, global_cond_dim=12,
              project_cond_tokens=False),
], ids=["small-like", "grouped-kv"])
def test_dit_forward_same_with_and_without_fast_paths(cfg):
    model = _random_dit(cfg, seed=3)
    rng = np.random.default_rng(4)
    x = mx.array(rng.standard_normal((1, 19, cfg.io_channels)).astype(np.float32))
    cross = mx.array(rng.standard_normal((1, 7, cfg.cond_token_dim)).astype(np.float32))
    glob = mx.array(rng.standard_normal((1, cfg.global_cond_dim)).astype(np.float32))
    guidance = model.prepare_guidance(cross, glob, cfg_scale=3.0, length=19)
    t = mx.array([0.6])
    with D.fast_paths(False):
        plain = D.guided_velocity(model, x, t, guidance)
        mx.eval(plain)
    with D.fast_paths(True):
        fast = D.guided_velocity(model, x, t, guidance)
        mx.eval(fast)
    assert rel(fast, plain) < TOL
    assert float(mx.abs(plain).max()) > 0


def test_generation_same_with_and_without_fast_paths(pipe):  # noqa: F811
    kwargs = {"seconds": 0.01, "steps": 2, "seed": 3}
    with D.fast_paths(False):
        plain = pipe.generate("soft pad", **kwargs)
    with D.fast_paths(True):
        fast = pipe.generate("soft pad", **kwargs)
    assert rel(fast, plain) < 1e-4


def test_conditioning_work_done_once_per_generation(pipe, monkeypatch):  # noqa: F811
    """K/V of every layer, the conditioning projections and the rotary tables are computed once per
    generation, whatever the number of steps; the timestep embedding once per step."""
    counts = {"kv": 0, "rope": 0, "cond": 0, "steps": 0}
    wrap = {
        "kv": (D.Attention, "context_kv"),
        "cond": (D.DiffusionTransformer, "prepare_conditioning"),
        "steps": (D.DiffusionTransformer, "forward_prepared"),
    }
    for name, (cls, attr) in wrap.items():
        original = getattr(cls, attr)

        def counted(*a, _name=name, _orig=original, **k):
            counts[_name] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(cls, attr, counted)
    original_rope = D.rotary_tables

    def rope(*a, **k):
        counts["rope"] += 1
        return original_rope(*a, **k)

    monkeypatch.setattr(D, "rotary_tables", rope)
    depth = pipe.model.dit.config.depth
    pipe.generate("click", seconds=0.01, steps=5, seed=0)
    assert counts == {"kv": depth, "rope": 1, "cond": 1, "steps": 5}


def test_default_blas_threads(monkeypatch):
    from livegen import device

    monkeypatch.setenv("LIVEGEN_CPU_THREADS", "3")
    assert device.default_blas_threads() == 3
    monkeypatch.setattr(device, "_cpu_count", lambda: 8)
    assert device.default_blas_threads(realtime=True) == 3  # the variable wins everywhere
    monkeypatch.delenv("LIVEGEN_CPU_THREADS")
    assert device.default_blas_threads() == 8  # batch work: every core
    assert device.default_blas_threads(realtime=True) == 7  # the daemon: one core left to audio
    monkeypatch.setattr(device, "_cpu_count", lambda: 1)
    assert device.default_blas_threads() == 1
    assert device.default_blas_threads(realtime=True) == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("LIVEGEN_CPU_THREADS", bad)
        with pytest.raises(ValueError, match="LIVEGEN_CPU_THREADS"):
            device.default_blas_threads()


def test_configure_mlx_sets_blas_threads():
    import ctypes

    from livegen import _blas, device

    path, _ = _blas.status()
    if path is None or mx.is_available(mx.gpu):
        assert device.configure_mlx(threads=1, force=True)["blas_threads"] is None
        return
    lib = ctypes.CDLL(path)
    before = lib.openblas_get_num_threads()
    try:
        assert device.configure_mlx(threads=1, force=True)["blas_threads"] == 1
        assert lib.openblas_get_num_threads() == 1
        a = mx.random.normal((64, 64))
        assert rel(a @ a, np.array(a, dtype=np.float64) @ np.array(a, dtype=np.float64)) < 1e-5
    finally:
        device.configure_mlx(threads=before, force=True)


def test_configure_mlx_realtime_leaves_a_core_and_pipelines_keep_it(monkeypatch):
    from livegen import device

    if mx.is_available(mx.gpu):
        pytest.skip("BLAS threads only apply on the CPU")
    calls: list[int] = []
    monkeypatch.delenv("LIVEGEN_CPU_THREADS", raising=False)
    monkeypatch.setattr(device, "_configured", None)
    monkeypatch.setattr(device, "_cpu_count", lambda: 4)
    monkeypatch.setattr(device, "set_blas_threads", lambda n: calls.append(n) or True)
    assert device.configure_mlx(realtime=True)["blas_threads"] == 3  # the daemon, first
    assert device.configure_mlx()["blas_threads"] == 3  # a pipeline loading later keeps it
    assert calls == [3]
    assert device.configure_mlx(force=True)["blas_threads"] == 4  # batch default: every core
    assert calls == [3, 4]


def test_configure_mlx_raises_the_cpu_buffer_cache(monkeypatch):
    from livegen import device

    if mx.default_device() != mx.cpu:
        pytest.skip("the cache limit default applies on the CPU")
    monkeypatch.setattr(device, "_configured", None)
    monkeypatch.setattr(device, "default_cache_limit", lambda: 96 << 20)
    previous = mx.set_cache_limit(0)
    mx.set_cache_limit(previous)
    try:
        assert device.configure_mlx(force=True)["cache_limit"] == 96 << 20
        assert mx.set_cache_limit(previous) == 96 << 20  # returns the limit that was in force
        assert device.configure_mlx(cache_limit=48 << 20, force=True)["cache_limit"] == 48 << 20
    finally:
        mx.set_cache_limit(previous)


def test_default_cache_limit_bounds(monkeypatch):
    from livegen import device

    monkeypatch.setenv("LIVEGEN_MLX_CACHE_MB", "32")
    assert device.default_cache_limit() == 32 << 20
    for bad in ("-1", "lots"):
        monkeypatch.setenv("LIVEGEN_MLX_CACHE_MB", bad)
        with pytest.raises(ValueError, match="LIVEGEN_MLX_CACHE_MB"):
            device.default_cache_limit()
    monkeypatch.delenv("LIVEGEN_MLX_CACHE_MB")
    pages = {"SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(device.os, "sysconf", lambda name: pages.get(name, pages["phys"]))
    pages["phys"] = (64 << 30) // 4096  # 64 GiB: capped at 1 GiB
    assert device.default_cache_limit() == 1 << 30
    pages["phys"] = (8 << 30) // 4096  # 8 GiB: a sixteenth
    assert device.default_cache_limit() == 512 << 20
    pages["phys"] = (256 << 20) // 4096  # tiny machine: at least 64 MiB
    assert device.default_cache_limit() == 64 << 20


def test_realtime_keeps_mlx_cache_and_one_shot_decode(monkeypatch):
    from livegen import device
    from livegen.models.stable_audio.vae import AudioAutoencoder, AutoencoderConfig
    from tests.models.stable_audio.test_vae import SMALL_CONFIG

    if mx.default_device() != mx.cpu:
        pytest.skip("CPU defaults")
    vae = AudioAutoencoder(AutoencoderConfig.from_dict(SMALL_CONFIG))
    monkeypatch.setattr(device, "_configured", None)
    monkeypatch.setattr(device, "set_blas_threads", lambda n: True)
    previous = mx.set_cache_limit(0)
    mx.set_cache_limit(previous)
    try:
        assert not device.realtime() and vae.tile_latents(1) is not None
        applied = device.configure_mlx(realtime=True)
        assert applied["realtime"] and applied["cache_limit"] is None  # the daemon: MLX's own cache
        assert device.realtime() and vae.tile_latents(1) is None  # and one-shot decodes
        applied = device.configure_mlx(force=True)
        assert not applied["realtime"] and applied["cache_limit"] == device.default_cache_limit()
        assert vae.tile_latents(1) is not None
    finally:
        mx.set_cache_limit(previous)
