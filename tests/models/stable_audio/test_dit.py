"""Stable Audio DiT: parity with stable-audio-tools (DiTWrapper path, incl. CFG), prepared
conditioning, weight keys of the full-size models."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from livegen.models.stable_audio.config import DiTConfig, StableAudioConfig
from livegen.models.stable_audio.dit import DiffusionTransformer, guided_velocity

TOL = 1e-4  # max abs error / max abs value, fp32


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def load_dit(build: dict) -> DiffusionTransformer:
    cfg = StableAudioConfig.from_dict(json.loads(build["config_path"].read_text()))
    model = DiffusionTransformer(cfg.dit)
    weights = DiffusionTransformer.sanitize(mx.load(str(build["weights"])))
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def sa_ref(sat_ref):
    from tests.reference.sa_checkpoint import install_torchaudio_stand_in

    install_torchaudio_stand_in()
    return sat_ref


@pytest.fixture(scope="module", params=["small", "1.0"])
def tiny(request, sa_ref, tmp_path_factory):
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    build = build_tiny_stable_audio(tmp_path_factory.mktemp(f"sa-{request.param}"), request.param, seed=3)
    return build, load_dit(build)


def make_inputs(build: dict, batch: int = 2, length: int = 12, seed: int = 0):
    """Random DiT inputs shaped like the real conditioning (T5 tokens with zeroed padding)."""
    cfg = StableAudioConfig.from_dict(build["config"])
    rng = np.random.default_rng(seed)
    seq = cfg.t5_max_length + len(cfg.cross_attention_cond_ids) - 1
    cross = rng.standard_normal((batch, seq, cfg.cond_dim)).astype(np.float32)
    mask = np.ones((batch, seq), dtype=bool)
    mask[0, 7:cfg.t5_max_length] = False
    mask[1, 3:cfg.t5_max_length] = False
    cross *= mask[..., None]
    glob = rng.standard_normal((batch, cfg.dit.global_cond_dim)).astype(np.float32)
    x = rng.standard_normal((batch, length, cfg.io_channels)).astype(np.float32)
    t = np.array([0.9, 0.27], dtype=np.float32)[:batch]
    neg = rng.standard_normal((batch, seq, cfg.cond_dim)).astype(np.float32)
    neg_mask = np.ones((batch, seq), dtype=bool)
    neg_mask[:, 5:cfg.t5_max_length] = False
    return dict(x=x, t=t, cross=cross, mask=mask, glob=glob, neg=neg, neg_mask=neg_mask)


def reference_velocity(build, inp, cfg_scale, negative=False, scale_phi=0.0) -> np.ndarray:
    import torch

    kw = {}
    if negative:
        kw = dict(negative_cross_attn_cond=torch.from_numpy(inp["neg"]),
                  negative_cross_attn_mask=torch.from_numpy(inp["neg_mask"]))
    with torch.no_grad():
        out = build["model"].model(
            torch.from_numpy(inp["x"]).transpose(1, 2), torch.from_numpy(inp["t"]),
            cross_attn_cond=torch.from_numpy(inp["cross"]), cross_attn_mask=torch.from_numpy(inp["mask"]),
            global_cond=torch.from_numpy(inp["glob"]), cfg_scale=cfg_scale, scale_phi=scale_phi, **kw)
    return out.transpose(1, 2).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("cfg_scale,negative", [(1.0, False), (3.0, False), (3.0, True)])
def test_velocity_matches_reference(tiny, cfg_scale, negative):
    build, model = tiny
    inp = make_inputs(build)
    ref = reference_velocity(build, inp, cfg_scale, negative)
    kw = dict(negative_cross_attn=mx.array(inp["neg"]), negative_cross_attn_mask=mx.array(inp["neg_mask"])) \
        if negative else {}
    ours = model.guided(mx.array(inp["x"]), mx.array(inp["t"]), mx.array(inp["cross"]), mx.array(inp["glob"]),
                        cfg_scale=cfg_scale, **kw)
    err = rel_err(ours, ref)
    print(f"{build['config']['model']['diffusion']['config']['embed_dim']} cfg={cfg_scale} neg={negative}: {err:.2e}")
    assert err < TOL


@pytest.mark.parity
def test_plain_call_and_cfg_rescale_match_reference(tiny):
    build, model = tiny
    inp = make_inputs(build, seed=1)
    ref = reference_velocity(build, inp, 1.0)
    ours = model(mx.array(inp["x"]), mx.array(inp["t"]), mx.array(inp["cross"]), mx.array(inp["glob"]),
                 cross_attn_mask=mx.array(inp["mask"]))
    assert rel_err(ours, ref) < TOL
    ref = reference_velocity(build, inp, 4.0, scale_phi=0.7)
    ours = model.guided(mx.array(inp["x"]), mx.array(inp["t"]), mx.array(inp["cross"]), mx.array(inp["glob"]),
                        cfg_scale=4.0, scale_phi=0.7)
    assert rel_err(ours, ref) < TOL


@pytest.mark.parity
def test_gqa_cross_attention_matches_reference(sa_ref, torch_ref):
    """Stable Audio Open 1.0 splits its 768-wide context into fewer K/V heads than query heads."""
    from stable_audio_tools.models.transformer import Attention as RefAttention

    from livegen.models.stable_audio.dit import Attention
    from tests.reference.sa_checkpoint import randomize_

    torch = torch_ref
    for qk_norm in ("none", "ln"):
        ref = RefAttention(128, dim_heads=32, dim_context=64, qk_norm=qk_norm).eval()
        randomize_(ref, seed=5)
        ours = Attention(128, 32, dim_context=64, qk_norm=qk_norm)
        assert (ours.num_heads, ours.kv_heads) == (4, 2)
        ours.load_weights([(k, mx.array(v.numpy())) for k, v in ref.state_dict().items()], strict=True)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 7, 128)).astype(np.float32)
        ctx = rng.standard_normal((2, 5, 64)).astype(np.float32)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), context=torch.from_numpy(ctx)).numpy()
        k, v = ours.context_kv(mx.array(ctx))
        got = ours.cross_attention(mx.array(x), k, v, None)
        assert rel_err(got, expected) < TOL


def test_forward_prepared_equals_call_and_is_reusable():
    cfg = DiTConfig(io_channels=8, embed_dim=64, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=16,
                    qk_norm="ln")
    model = DiffusionTransformer(cfg)
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    cross = mx.array(rng.standard_normal((2, 6, 16)).astype(np.float32))
    glob = mx.array(rng.standard_normal((2, 16)).astype(np.float32))
    prepared = model.prepare_conditioning(cross, glob, length=10)
    mx.eval(prepared.arrays())
    assert len(prepared.kv) == cfg.depth and 11 in prepared.rope
    for step, tval in enumerate([0.8, 0.3]):
        x = mx.array(rng.standard_normal((2, 10, 8)).astype(np.float32))
        t = mx.array([tval, tval])
        direct = model(x, t, cross, glob)
        reused = model.forward_prepared(x, t, prepared)
        assert np.abs(np.array(direct) - np.array(reused)).max() <= 1e-6, step
    # cfg 1.0 is exactly one pass of batch B; cfg != 1 batches cond + uncond (2B)
    single = model.prepare_guidance(cross, glob, 1.0)
    double = model.prepare_guidance(cross, glob, 2.5)
    assert (single.prepared.batch, double.prepared.batch) == (2, 4)
    x = mx.array(rng.standard_normal((2, 10, 8)).astype(np.float32))
    t = mx.array([0.5, 0.5])
    np.testing.assert_allclose(np.array(guided_velocity(model, x, t, single)), np.array(model(x, t, cross, glob)),
                               rtol=0, atol=1e-6)
    cond = np.array(model(x, t, cross, glob))
    uncond = np.array(model(x, t, mx.zeros_like(cross), glob))
    np.testing.assert_allclose(np.array(guided_velocity(model, x, t, double)), uncond + 2.5 * (cond - uncond),
                               rtol=1e-5, atol=1e-5)


def test_cross_attention_mask_is_ignored_like_the_reference_unless_enabled():
    rng = np.random.default_rng(1)
    cross = rng.standard_normal((1, 6, 16)).astype(np.float32)
    mask = np.array([[True, True, True, False, False, True]])
    other = cross.copy()
    other[:, 3:5] = rng.standard_normal((1, 2, 16))
    x = mx.array(rng.standard_normal((1, 5, 8)).astype(np.float32))
    t = mx.array([0.4])
    outs = {}
    for use in (False, True):
        cfg = DiTConfig(io_channels=8, embed_dim=64, depth=1, num_heads=1, cond_token_dim=16, global_cond_dim=0,
                        use_cross_attn_mask=use)
        mx.random.seed(0)
        model = DiffusionTransformer(cfg)
        a = np.array(model(x, t, mx.array(cross), None, cross_attn_mask=mx.array(mask)))
        b = np.array(model(x, t, mx.array(other), None, cross_attn_mask=mx.array(mask)))
        outs[use] = np.abs(a - b).max()
    assert outs[False] > 1e-4  # masked tokens are attended to (reference behaviour)
    assert outs[True] < 1e-6  # with the mask applied they do not matter


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["small", "1.0"])
def test_full_size_keys_and_shapes_match_reference(kind, sa_ref, torch_ref):
    """The real configs' DiT + number conditioners, built on torch's meta device (no memory):
    the sanitized state_dict keys/shapes are exactly the MLX model's parameters."""
    from stable_audio_tools.models.conditioners import NumberConditioner as RefNumber
    from stable_audio_tools.models.diffusion import DiTWrapper

    from livegen.models.stable_audio.conditioners import Conditioner
    from tests.reference.sa_checkpoint import real_config

    torch = torch_ref
    raw = real_config(kind)
    cfg = StableAudioConfig.from_dict(raw)
    diffusion = raw["model"]["diffusion"]
    with torch.device("meta"):
        dit = DiTWrapper(diffusion_objective=diffusion.get("diffusion_objective", "v"), **diffusion["config"])
        nums = {c.id: RefNumber(cfg.cond_dim, c.min_val, c.max_val) for c in cfg.number_conditioners}
    state = {f"model.{k}": tuple(v.shape) for k, v in dit.state_dict().items()}
    for cid, mod in nums.items():
        state.update({f"conditioner.conditioners.{cid}.{k}": tuple(v.shape) for k, v in mod.state_dict().items()})
    fake = {k: mx.zeros(s) for k, s in state.items()}  # lazy, never evaluated

    ours = DiffusionTransformer(cfg.dit)
    ours_shapes = {k: tuple(v.shape) for k, v in tree_flatten(ours.parameters())}
    sanitized = {k: tuple(v.shape) for k, v in DiffusionTransformer.sanitize(fake).items()}
    assert sanitized == ours_shapes

    cond = Conditioner.from_config(cfg)
    cond_shapes = {k: tuple(v.shape) for k, v in tree_flatten(cond.parameters())}
    assert {k: tuple(v.shape) for k, v in Conditioner.sanitize(fake).items()} == cond_shapes
    # every checkpoint key outside the pretransform is accounted for
    dropped = {k for k in state if k.endswith("inv_freq")}
    assert len(sanitized) + len(cond_shapes) + len(dropped) == len(state)
