"""Stable Audio conditioners: number embedder parity, assembled DiT conditioning vs the reference
``model.conditioner(...)`` + ``get_conditioning_inputs`` (T5 from livegen.models.t5)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from livegen.models.stable_audio.conditioners import Conditioner, NumberConditioner
from livegen.models.stable_audio.config import StableAudioConfig

TOL = 1e-4


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def sa_ref(sat_ref):
    from tests.reference.sa_checkpoint import install_torchaudio_stand_in

    install_torchaudio_stand_in()
    return sat_ref


@pytest.mark.parity
def test_number_conditioner_matches_reference_including_clamping(sa_ref, torch_ref):
    from stable_audio_tools.models.conditioners import NumberConditioner as RefNumber

    from tests.reference.sa_checkpoint import randomize_

    ref = RefNumber(768, min_val=0, max_val=256).eval()
    randomize_(ref, seed=2)
    ours = NumberConditioner(768, 0, 256)
    ours.load_weights([(k, mx.array(v.numpy())) for k, v in ref.state_dict().items()], strict=True)
    values = [-7.0, 0.0, 3.3, 47.5, 255.9, 256.0, 1000.0]
    with torch_ref.no_grad():
        ref_tokens, ref_mask = ref(values, device="cpu")
    tokens, mask = ours(values)
    assert tokens.shape == (len(values), 1, 768) and mask.shape == (len(values), 1)
    assert rel_err(tokens, ref_tokens.numpy()) < TOL
    assert np.array_equal(np.array(mask), ref_mask.numpy().astype(bool))
    # clamping: out-of-range values embed like the bounds, and values inside differ
    t = np.array(tokens)
    np.testing.assert_array_equal(t[0], t[1])
    np.testing.assert_array_equal(t[5], t[6])
    assert np.abs(t[2] - t[1]).max() > 1e-3


@pytest.fixture(scope="module", params=["small", "1.0"])
def tiny(request, sa_ref, tmp_path_factory):
    from livegen.models.t5 import T5TextEncoder
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    build = build_tiny_stable_audio(tmp_path_factory.mktemp(f"sac-{request.param}"), request.param, seed=4)
    cfg = StableAudioConfig.from_dict(json.loads(build["config_path"].read_text()))
    cond = Conditioner.from_config(cfg)
    cond.load_weights(list(Conditioner.sanitize(mx.load(str(build["weights"]))).items()), strict=True)
    t5 = T5TextEncoder.from_dir(build["t5_dir"])
    return build, cfg, cond, t5


PROMPTS = ["warm analog bass loop 120 bpm", "dark ambient pad with reverb and a strange zzyzx word " * 6]
NEGATIVE = ["loud distorted", "lofi"]


def _numbers(cfg: StableAudioConfig) -> dict[str, list[float]]:
    values = {"seconds_start": [0.0, -2.0], "seconds_total": [10.0, 900.0]}  # second item clamps
    return {c.id: values[c.id] for c in cfg.number_conditioners}


def _reference(build, cfg, prompts, numbers, negative=False):
    import torch

    meta = [{"prompt": p, **{k: v[i] for k, v in numbers.items()}} for i, p in enumerate(prompts)]
    model = build["model"]
    with torch.no_grad():
        tensors = model.conditioner(meta, "cpu")
        return model.get_conditioning_inputs(tensors, negative=negative)


@pytest.mark.parity
def test_assembled_conditioning_matches_reference(tiny):
    build, cfg, cond, t5 = tiny
    numbers = _numbers(cfg)
    emb, mask = t5.encode(PROMPTS, cfg.t5_max_length)
    neg_emb, neg_mask = t5.encode(NEGATIVE, cfg.t5_max_length)
    ours = cond.assemble(emb, mask, numbers, neg_emb, neg_mask)
    ref = _reference(build, cfg, PROMPTS, numbers)
    ref_neg = _reference(build, cfg, NEGATIVE, numbers, negative=True)

    seq = cfg.t5_max_length + len(cfg.cross_attention_cond_ids) - 1
    assert ours.cross_attn.shape == (2, seq, cfg.cond_dim)
    assert ours.global_cond.shape == (2, cfg.dit.global_cond_dim)
    errs = {
        "cross": rel_err(ours.cross_attn, ref["cross_attn_cond"].numpy()),
        "global": rel_err(ours.global_cond, ref["global_cond"].numpy()),
        "negative": rel_err(ours.negative_cross_attn, ref_neg["negative_cross_attn_cond"].numpy()),
    }
    print(cfg.t5_max_length, errs)
    assert max(errs.values()) < TOL
    assert np.array_equal(np.array(ours.cross_attn_mask), ref["cross_attn_mask"].numpy().astype(bool))
    assert np.array_equal(np.array(ours.negative_cross_attn_mask),
                          ref_neg["negative_cross_attn_mask"].numpy().astype(bool))
    # the T5 part is padded and zeroed, the number tokens follow it in cross_attention_cond_ids order
    m = np.array(ours.cross_attn_mask)
    assert m[0, : cfg.t5_max_length].sum() < cfg.t5_max_length and m[:, cfg.t5_max_length:].all()


@pytest.mark.parity
def test_reference_fp16_t5_gap(tiny, torch_ref):
    """The reference runs its T5 in fp16; ours runs fp32. Measure (and bound) the gap."""
    import copy

    from tests.reference.sa_checkpoint import swap_t5

    build, cfg, cond, t5 = tiny
    numbers = _numbers(cfg)
    previous = swap_t5(build["model"], copy.deepcopy(build["t5"]).half())
    try:
        ref = _reference(build, cfg, PROMPTS, numbers)
    finally:
        swap_t5(build["model"], previous)
    ours = cond.assemble(*t5.encode(PROMPTS, cfg.t5_max_length), numbers)
    err = rel_err(ours.cross_attn, ref["cross_attn_cond"].float().numpy())
    print(f"fp16 reference T5 vs fp32 MLX T5: {err:.2e}")
    assert err < 2e-2


def test_assemble_order_batching_and_errors():
    from livegen.models.stable_audio.config import NumberConditionerConfig

    mx.random.seed(0)
    nums = [NumberConditionerConfig("seconds_start", 0, 512), NumberConditionerConfig("seconds_total", 0, 512)]
    cond = Conditioner(nums, cond_dim=8, cross_attention_cond_ids=["prompt", "seconds_start", "seconds_total"],
                       global_cond_ids=["seconds_start", "seconds_total"], t5_id="prompt")
    emb = np.ones((3, 4, 8), dtype=np.float32)
    mask = np.array([[1, 1, 0, 0]] * 3, dtype=bool)
    out = cond.assemble(emb, mask, {"seconds_start": 5.0, "seconds_total": [10.0, 20.0, 30.0]})
    assert out.cross_attn.shape == (3, 6, 8) and out.global_cond.shape == (3, 16)
    ca = np.array(out.cross_attn)
    assert (ca[:, 2:4] == 0).all()  # padded T5 positions zeroed
    start, _ = cond.conditioners["seconds_start"]([5.0, 5.0, 5.0])
    total, _ = cond.conditioners["seconds_total"]([10.0, 20.0, 30.0])
    np.testing.assert_array_equal(ca[:, 4], np.array(start)[:, 0])
    np.testing.assert_array_equal(ca[:, 5], np.array(total)[:, 0])
    g = np.array(out.global_cond)
    np.testing.assert_array_equal(g[:, :8], np.array(start)[:, 0])
    np.testing.assert_array_equal(g[:, 8:], np.array(total)[:, 0])
    assert out.negative_cross_attn is None
    with pytest.raises(ValueError, match="seconds_total"):
        cond.assemble(emb, mask, {"seconds_start": 1.0})
    with pytest.raises(ValueError, match="batch"):
        cond.assemble(emb, mask, {"seconds_start": [1.0, 2.0], "seconds_total": 3.0})
    with pytest.raises(ValueError, match="no conditioner"):
        Conditioner(nums, cond_dim=8, cross_attention_cond_ids=["prompt", "bpm"], t5_id="prompt")


def test_sanitize_keeps_only_number_conditioner_keys():
    w = {
        "conditioner.conditioners.seconds_total.embedder.embedding.0.weights": mx.zeros((128,)),
        "conditioner.conditioners.seconds_total.embedder.embedding.1.weight": mx.zeros((768, 257)),
        "model.model.to_cond_embed.0.weight": mx.zeros((4, 4)),
        "pretransform.model.decoder.layers.0.weight_g": mx.zeros((4, 1, 1)),
    }
    assert sorted(Conditioner.sanitize(w)) == [
        "conditioners.seconds_total.embedder.embedding.0.weights",
        "conditioners.seconds_total.embedder.embedding.1.weight",
    ]
