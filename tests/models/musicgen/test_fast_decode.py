"""The fast decoding paths of the MusicGen decoder give the same numbers as the plain formulation.

Each optimisation is checked against the straightforward computation on a tiny random decoder:
fused projections (q/k/v, cross k/v, the K heads) against one GEMM per projection, the compiled
one-token layer against the plain modules, the preallocated KV cache against a growing one, and the
pipelined decode loop (tokens fed back on the device) against a host-side loop written out here.
No reference model needed: the parity with transformers is in test_transformer.py / test_generate.py.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from livegen.errors import Cancelled
from livegen.models.musicgen.config import DecoderConfig, MusicGenConfig
from livegen.models.musicgen.sampling import (
    Conditioning,
    apply_delay_pattern_mask,
    build_delay_pattern_mask,
    decode_steps,
    guide,
    sample,
)
from livegen.models.musicgen.transformer import KVCache, MusicGenLM

VOCAB, HIDDEN, K = 32, 32, 4


def tiny_lm(melody: bool = False, seed: int = 0) -> MusicGenLM:
    dec = DecoderConfig(
        vocab_size=VOCAB, max_position_embeddings=64, num_hidden_layers=2, ffn_dim=48,
        num_attention_heads=4, hidden_size=HIDDEN, num_codebooks=K, pad_token_id=VOCAB, bos_token_id=VOCAB,
    )  # fmt: skip
    config = MusicGenConfig(
        model_type="musicgen_melody" if melody else "musicgen",
        decoder=dec,
        text_encoder={"d_model": 24},
        num_chroma=12,
        chroma_length=3,
        decoder_start_token_id=VOCAB,
        pad_token_id=VOCAB,
    )
    lm = MusicGenLM(config)
    randomize(lm, seed)
    lm.eval()
    return lm


def randomize(lm: MusicGenLM, seed: int) -> None:
    """Every parameter random (layer-norm scales positive, so none is an identity or zero)."""
    key = mx.random.key(seed)
    params = tree_flatten(lm.parameters())
    keys = mx.random.split(key, len(params))
    new = []
    for (name, p), k in zip(params, keys, strict=True):
        v = mx.random.normal(p.shape, key=k) / np.sqrt(p.shape[-1] if p.ndim > 1 else 4)
        if "layer_norm" in name and name.endswith("weight"):
            v = 0.5 + mx.abs(v)
        new.append((name, v))
    lm.load_weights(new, strict=True)
    mx.eval(lm.parameters())


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _plain(lm: MusicGenLM) -> None:
    lm.set_fused(False)
    lm.set_compiled(False)


def _fast(lm: MusicGenLM) -> None:
    lm.set_fused(True)
    lm.set_compiled(True)


def _codes(t: int, batch: int = 2, seed: int = 0) -> mx.array:
    rng = np.random.default_rng(seed)
    return mx.array(rng.integers(0, VOCAB + 1, size=(batch, K, t)).astype(np.int32))


def _text(batch: int = 2, s: int = 5, seed: int = 1) -> tuple[mx.array, mx.array]:
    states = mx.array(np.random.default_rng(seed).standard_normal((batch, s, HIDDEN)).astype(np.float32))
    mask = np.ones((batch, s), np.int32)
    mask[1, 3:] = 0  # padded prompt: the additive cross mask is exercised
    return states, mx.array(mask)


def _stepwise(lm: MusicGenLM, codes: mx.array, first: int, cache, **kw) -> np.ndarray:
    parts = [lm(codes[:, :, :first], cache=cache, **kw)]
    kw.pop("prefix", None)
    for i in range(first, codes.shape[2]):
        parts.append(lm(codes[:, :, i : i + 1], cache=cache, **kw))
    return np.array(mx.concatenate(parts, axis=2))


# ----------------------------------------------------------------------------- fused projections


def test_fused_projections_equal_separate_ones():
    lm = tiny_lm()
    names = [k for k, _ in tree_flatten(lm.parameters())]
    before = {k: np.array(v) for k, v in tree_flatten(lm.parameters())}
    states, mask = _text()
    codes = _codes(6)
    _plain(lm)
    plain = np.array(lm(codes, cross_kv=lm.cross_key_values(states), cross_mask=mask))
    lm.set_fused(True)
    fused = np.array(lm(codes, cross_kv=lm.cross_key_values(states), cross_mask=mask))
    assert fused.shape == plain.shape == (2, K, 6, VOCAB)
    assert rel_err(fused, plain) <= 1e-6
    # the parameters keep their names and values (they became views of the fused weights)
    after = dict(tree_flatten(lm.parameters()))
    assert list(after) == names
    for k, v in before.items():
        np.testing.assert_array_equal(np.array(after[k]), v)
    attn = lm.decoder.layers[0].self_attn
    assert attn._qkv._fused.shape == (3 * HIDDEN, HIDDEN)
    assert lm._heads._fused.shape == (K * VOCAB, HIDDEN)


def test_fused_weights_follow_reloaded_parameters():
    lm = tiny_lm(seed=0)
    states, mask = _text()
    codes = _codes(4)
    _fast(lm)
    first = np.array(lm(codes, cross_kv=lm.cross_key_values(states), cross_mask=mask))
    randomize(lm, seed=5)  # load_weights replaces the arrays: the fused copies must be rebuilt
    fused = np.array(lm(codes, cross_kv=lm.cross_key_values(states), cross_mask=mask))
    _plain(lm)
    plain = np.array(lm(codes, cross_kv=lm.cross_key_values(states), cross_mask=mask))
    assert rel_err(fused, plain) <= 1e-6
    assert rel_err(fused, first) > 1e-2


# ----------------------------------------------------------------------------- compiled one-token step


@pytest.mark.parametrize("masked", [True, False])
def test_compiled_steps_equal_plain_steps(masked):
    lm = tiny_lm()
    states, mask = _text()
    codes = _codes(7, seed=3)
    kw = {"cross_mask": mask if masked else None}
    _plain(lm)
    kw["cross_kv"] = lm.cross_key_values(states)
    full = np.array(lm(codes, **kw))
    plain = _stepwise(lm, codes, 2, lm.make_cache(), **kw)
    for fused in (False, True):
        lm.set_compiled(True)
        lm.set_fused(fused)
        compiled = _stepwise(lm, codes, 2, lm.make_cache(), **kw)
        assert rel_err(compiled, plain) <= 1e-6
        assert rel_err(compiled, full) <= 1e-5
    assert rel_err(plain, full) <= 1e-5


def test_compiled_steps_without_cross_attention_equal_plain_steps():
    lm = tiny_lm(melody=True)
    assert "encoder_attn" not in lm.decoder.layers[0]
    codes = _codes(6, seed=4)
    prefix = mx.array(np.random.default_rng(2).standard_normal((2, 5, HIDDEN)).astype(np.float32))
    _plain(lm)
    full = np.array(lm(codes, prefix=prefix))
    plain = _stepwise(lm, codes, 1, lm.make_cache(), prefix=prefix)
    _fast(lm)
    fast = _stepwise(lm, codes, 1, lm.make_cache(), prefix=prefix)
    assert rel_err(fast, plain) <= 1e-6
    assert rel_err(fast, full) <= 1e-5


# ----------------------------------------------------------------------------- KV cache


def test_preallocated_cache_equals_growing_cache():
    lm = tiny_lm()
    states, mask = _text()
    codes = _codes(9, seed=6)
    kw = {"cross_kv": lm.cross_key_values(states), "cross_mask": mask}
    growing = lm.make_cache()
    for c in growing:
        c.step = 2  # grow (concatenate) every other position
    a = _stepwise(lm, codes, 3, growing, **kw)
    assert growing[0].keys.shape[2] == 10 and growing[0].offset == 9
    prealloc = lm.make_cache(capacity=9)
    b = _stepwise(lm, codes, 3, prealloc, **kw)
    assert prealloc[0].keys.shape[2] == KVCache.step  # allocated once, rounded up
    short = lm.make_cache(capacity=4)
    for c in short:
        c.step = 4  # too small: grows past its capacity
    c = _stepwise(lm, codes, 3, short, **kw)
    assert short[0].keys.shape[2] == 12
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- decode loop


def host_loop(lm, pattern, start, cond, guidance_scale, top_k, key) -> np.ndarray:
    """The straightforward loop: plain layers, logits to the host, pattern applied in numpy."""
    _plain(lm)
    seq = pattern.copy()
    seq[..., :start] = apply_delay_pattern_mask(seq[..., :start], pattern)
    cache = [KVCache() for _ in lm.decoder.layers]
    inputs, prefix = seq[..., :start], cond.prefix
    for pos in range(start, pattern.shape[-1]):
        x = mx.array(inputs.astype(np.int32))
        x = mx.concatenate([x, x], axis=0)
        logits = lm(x, cache=cache, cross_kv=cond.cross_kv, cross_mask=cond.cross_mask, prefix=prefix)
        prefix = None
        logits = guide(logits[:, :, -1, :], guidance_scale)
        key, step_key = mx.random.split(key)
        col = np.array(sample(logits, step_key, top_k=top_k)).astype(np.int64)
        fixed = pattern[:, :, pos]
        seq[:, :, pos] = np.where(fixed == -1, col, fixed)
        inputs = seq[:, :, pos : pos + 1]
    return seq


def _setup(melody: bool):
    lm = tiny_lm(melody=melody, seed=2)
    ids = np.full((1, K, 1), VOCAB, dtype=np.int64)
    start_ids, pattern = build_delay_pattern_mask(ids, VOCAB, 14)
    if melody:
        prefix = mx.array(np.random.default_rng(3).standard_normal((2, 4, HIDDEN)).astype(np.float32))
        cond = Conditioning(prefix=prefix)
    else:
        states, mask = _text()
        cond = Conditioning(cross_kv=lm.cross_key_values(states), cross_mask=mask)
    return lm, pattern, start_ids.shape[-1], cond


@pytest.mark.parametrize("melody", [False, True])
@pytest.mark.parametrize("top_k", [1, 6])
def test_pipelined_loop_equals_host_loop(melody, top_k):
    lm, pattern, start, cond = _setup(melody)
    want = host_loop(lm, pattern, start, cond, 3.0, top_k, mx.random.key(9))
    assert (want[..., start:] != VOCAB).any()
    _fast(lm)
    for pipelined in (True, False):
        seen = []
        steps = decode_steps(
            lm,
            pattern,
            start,
            cond,
            guidance_scale=3.0,
            top_k=top_k,
            key=mx.random.key(9),
            pipelined=pipelined,
        )
        for pos, seq in steps:
            seen.append(pos)
            np.testing.assert_array_equal(seq[..., : pos + 1], want[..., : pos + 1])  # filled up to pos
            assert (seq[..., pos + 1 :] == pattern[..., pos + 1 :]).all()  # nothing beyond it yet
        assert seen == list(range(start, pattern.shape[-1]))
        np.testing.assert_array_equal(seq, want)


@pytest.mark.parametrize("pipelined", [True, False])
def test_cancel_is_asked_before_each_position(pipelined):
    lm, pattern, start, cond = _setup(False)
    asked, seen = [], []

    def cancel():
        asked.append(len(seen))
        return len(seen) >= 3

    with pytest.raises(Cancelled):
        for pos, _ in decode_steps(
            lm, pattern, start, cond, key=mx.random.key(0), cancel=cancel, pipelined=pipelined
        ):
            seen.append(pos)
    assert seen == [start, start + 1, start + 2]
    assert asked == [0, 1, 2, 3]  # once before each position, after the previous one was yielded
