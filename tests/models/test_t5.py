"""T5 encoder (MLX) against transformers' T5EncoderModel, on tiny random checkpoints in the real format."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from livegen.models.t5 import T5Config, T5Encoder, T5TextEncoder, relative_position_buckets

PROMPTS = ["warm deep bass loop with analog reverb", "kick"]  # different lengths -> padding
MAX_LEN = 12
TOL = 1e-4  # max abs error relative to the max abs value

TINY = dict(
    vocab_size=40,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
)


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _random_encoder(config: T5Config, seed: int = 0) -> T5Encoder:
    mx.random.seed(seed)
    model = T5Encoder(config)
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    new = []
    for (name, p), key in zip(params, keys, strict=True):
        if name.endswith("norm.weight"):
            new.append((name, 0.5 + mx.random.uniform(shape=p.shape, key=key)))
        else:
            new.append(
                (
                    name,
                    mx.random.normal(p.shape, key=key) * (1.0 if "embed" in name or "bias" in name else 0.2),
                )
            )
    model.load_weights(new, strict=True)
    mx.eval(model.parameters())
    return model


def _hf_keys(config: T5Config) -> list[str]:
    keys = ["shared.weight", "encoder.embed_tokens.weight", "encoder.final_layer_norm.weight"]
    keys.append("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    ff = ["wi_0", "wi_1", "wo"] if config.is_gated_act else ["wi", "wo"]
    for n in range(config.num_layers):
        keys += [f"encoder.block.{n}.layer.0.SelfAttention.{p}.weight" for p in "qkvo"]
        keys += [f"encoder.block.{n}.layer.{m}.layer_norm.weight" for m in (0, 1)]
        keys += [f"encoder.block.{n}.layer.1.DenseReluDense.{p}.weight" for p in ff]
    return keys


# ----------------------------------------------------------------------------- no reference needed


def test_config_from_dict_ignores_unknown_keys_and_derives_activation():
    cfg = T5Config.from_dict(
        {**TINY, "feed_forward_proj": "gated-gelu", "model_type": "t5", "dropout_rate": 0.1}
    )
    assert cfg.d_model == 32 and cfg.num_layers == 2
    assert cfg.is_gated_act and cfg.activation == "gelu_new"
    assert T5Config.from_dict({"feed_forward_proj": "relu"}).activation == "relu"
    assert T5Config.from_dict({"feed_forward_proj": "gated-silu"}).activation == "silu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.from_dict({"feed_forward_proj": "fancy-relu"})
    with pytest.raises(ValueError, match="unsupported"):
        T5Config.from_dict({"feed_forward_proj": "gated-tanhh"})


def test_relative_position_buckets_known_values():
    # 32 buckets, max distance 128 (t5-base): 16 per direction, exact below 8, then log bins
    b = relative_position_buckets(1, 200, 32, 128)[0]  # memory - context = 0..199 (all >= 0)
    assert list(b[:8]) == [0, 17, 18, 19, 20, 21, 22, 23]
    assert b[8] == 24 and b[12] == 25 and b[199] == 31
    back = relative_position_buckets(200, 1, 32, 128)[:, 0]  # relative positions 0..-199
    assert list(back[:8]) == list(range(8)) and back[199] == 15


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_padded_keys_do_not_influence_valid_positions(ff):
    cfg = T5Config.from_dict({**TINY, "feed_forward_proj": ff})
    model = _random_encoder(cfg)
    ids = mx.array([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0]], dtype=mx.int32)
    mask = mx.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=mx.bool_)
    out = model(ids, mask)
    assert out.shape == (2, 6, 32) and out.dtype == mx.float32
    ids2 = mx.array([[5, 6, 7, 1, 30, 9], [8, 1, 3, 4, 12, 13]], dtype=mx.int32)  # change padded ids
    out2 = model(ids2, mask)
    np.testing.assert_allclose(np.array(out2)[0, :4], np.array(out)[0, :4], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array(out2)[1, :2], np.array(out)[1, :2], rtol=0, atol=1e-5)
    # without the mask the changed tokens are attended to
    assert np.abs(np.array(model(ids2)) - np.array(model(ids)))[0, :4].max() > 1e-3
    # a batch row computed alone equals the same row in the batch
    alone = model(ids[1:], mask[1:])
    np.testing.assert_allclose(np.array(alone)[0], np.array(out)[1], rtol=0, atol=1e-5)


def test_sanitize_maps_transformers_keys_with_prefix():
    for ff in ("relu", "gated-gelu"):
        cfg = T5Config.from_dict({**TINY, "feed_forward_proj": ff})
        model = T5Encoder(cfg)
        expected = dict(tree_flatten(model.parameters()))
        hf = {f"text_encoder.{k}": mx.zeros((1,)) for k in _hf_keys(cfg)}
        hf["decoder.model.layers.0.self_attn.q_proj.weight"] = mx.zeros((1,))  # MusicGen's own decoder
        hf["audio_encoder.encoder.layers.0.conv.weight"] = mx.zeros((1,))
        hf["text_encoder.decoder.block.0.layer.0.SelfAttention.q.weight"] = mx.zeros((1,))
        assert set(T5Encoder.sanitize(hf, prefix="text_encoder.")) == set(expected)
        plain = {k: mx.zeros((1,)) for k in _hf_keys(cfg) if k != "encoder.embed_tokens.weight"}
        plain["lm_head.weight"] = mx.zeros((1,))
        assert set(T5Encoder.sanitize(plain)) == set(expected)
        # MLX-named keys pass through unchanged (sanitize is idempotent)
        assert set(T5Encoder.sanitize(expected)) == set(expected)
    # the tied embedding: encoder.embed_tokens wins over shared when both are present
    s = T5Encoder.sanitize({"shared.weight": mx.zeros((2,)), "encoder.embed_tokens.weight": mx.ones((2,))})
    assert s["embed_tokens.weight"].tolist() == [1.0, 1.0]


def test_from_parts_reports_missing_and_misshapen_keys():
    cfg = T5Config.from_dict(TINY)
    weights = dict(tree_flatten(_random_encoder(cfg).parameters()))
    T5TextEncoder.from_parts(cfg, weights, tokenizer=None)  # complete: loads
    broken = dict(weights)
    del broken["layers.1.ff.wo.weight"]
    with pytest.raises(ValueError, match=r"my.safetensors.*missing keys: layers\.1\.ff\.wo\.weight"):
        T5TextEncoder.from_parts(cfg, broken, tokenizer=None, source="my.safetensors")
    broken = dict(weights)
    broken["layers.0.attn.q.weight"] = mx.zeros((3, 3))
    with pytest.raises(ValueError, match=r"shape mismatches: layers\.0\.attn\.q\.weight"):
        T5TextEncoder.from_parts(cfg, broken, tokenizer=None)


def test_from_dir_rejects_corrupt_or_missing_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "feed_forward_proj": "relu"}))
    with pytest.raises(ValueError, match="no model.safetensors"):
        T5TextEncoder.from_dir(tmp_path)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        T5TextEncoder.from_dir(tmp_path)
    with pytest.raises(ValueError, match="config.json: config file not found"):
        T5TextEncoder.from_dir(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- against transformers


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, transformers_ref):
    """Tiny random checkpoints in transformers format: t5-base style (relu), v1.1 style (gated-gelu)."""
    from tests.models.t5_fixtures import make_tiny_t5

    out = {}
    for i, ff in enumerate(["relu", "gated-gelu"]):
        d = tmp_path_factory.mktemp(f"t5_{ff}")
        model, tok = make_tiny_t5(
            d, d_model=64, d_kv=16, num_heads=4, num_layers=2, d_ff=96, feed_forward_proj=ff, seed=i
        )
        out[ff] = (d, model, tok)
    return out


def _hf_forward(torch, model, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask.astype(np.int64))}
        return model(input_ids=torch.from_numpy(ids.astype(np.int64)), **kw).last_hidden_state.float().numpy()


@pytest.mark.parity
@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_encoder_matches_transformers(tiny_dirs, torch_ref, ff):
    d, hf_model, _ = tiny_dirs[ff]
    enc = T5TextEncoder.from_dir(d)
    ids, mask = enc.tokenize(PROMPTS, MAX_LEN)
    assert mask[0].sum() > mask[1].sum() and not mask[1].all()  # really padded
    ref = _hf_forward(torch_ref, hf_model, ids, mask)
    out = np.array(enc.model(mx.array(ids), mx.array(mask)))
    err = _rel_err(out, ref)
    print(f"T5 {ff} masked: max abs err / max abs = {err:.2e}")
    assert err <= TOL
    ref_nomask = _hf_forward(torch_ref, hf_model, ids, None)
    err = _rel_err(np.array(enc.model(mx.array(ids))), ref_nomask)
    print(f"T5 {ff} unmasked: max abs err / max abs = {err:.2e}")
    assert err <= TOL


@pytest.mark.parity
def test_relative_position_buckets_match_transformers(transformers_ref, torch_ref):
    from transformers.models.t5.modeling_t5 import T5Attention

    for num_buckets, max_distance in [(32, 128), (8, 20), (16, 50)]:
        length = 300
        rel = torch_ref.arange(length)[None, :] - torch_ref.arange(length)[:, None]
        ref = T5Attention._relative_position_bucket(
            rel, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
        ).numpy()
        np.testing.assert_array_equal(
            relative_position_buckets(length, length, num_buckets, max_distance), ref
        )


def test_tokenize_matches_hf_tokenizer(tiny_dirs):
    d, _, tok = tiny_dirs["relu"]
    enc = T5TextEncoder.from_dir(d)
    prompts = [*PROMPTS, "Bright PLUCK zzz unknown words", " ".join(["techno"] * 30)]  # unk + truncation
    ids, mask = enc.tokenize(prompts, MAX_LEN)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == (4, MAX_LEN)
    ref = tok(prompts, padding="max_length", truncation=True, max_length=MAX_LEN)
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"]).astype(bool))
    assert ids[3, -1] == 1 and mask[3].all()  # truncated, still ends with </s>
    assert 2 in ids[2]  # unknown words -> <unk>


@pytest.mark.parity
def test_encode_zeroes_padding_like_the_stable_audio_conditioner(tiny_dirs, torch_ref):
    d, hf_model, tok = tiny_dirs["gated-gelu"]
    enc = T5TextEncoder.from_dir(d)
    emb, mask = enc.encode(PROMPTS, MAX_LEN)
    assert emb.shape == (2, MAX_LEN, 64) and mask.dtype == mx.bool_
    emb, mask = np.array(emb), np.array(mask)
    assert np.all(emb[~mask] == 0.0) and np.all(np.abs(emb[mask]).max(axis=-1) > 0)
    # the reference conditioner: tokenizer -> T5EncoderModel(ids, mask) -> * mask
    t = tok(PROMPTS, truncation=True, max_length=MAX_LEN, padding="max_length", return_tensors="pt")
    with torch_ref.no_grad():
        ref = hf_model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
    ref = (ref * t["attention_mask"].bool().unsqueeze(-1).float()).numpy()
    np.testing.assert_array_equal(mask, t["attention_mask"].numpy().astype(bool))
    assert _rel_err(emb, ref) <= TOL


@pytest.mark.parity
def test_from_parts_with_text_encoder_prefix(tiny_dirs, torch_ref):
    """MusicGen checkpoints hold the T5 under ``text_encoder.`` next to the decoder and EnCodec."""
    d, hf_model, tok = tiny_dirs["relu"]
    state = {f"text_encoder.{k}": v.numpy() for k, v in hf_model.state_dict().items()}
    state["decoder.model.decoder.layers.0.fc1.weight"] = np.zeros((4, 4), np.float32)
    state["audio_encoder.quantizer.layers.0.codebook.embed"] = np.zeros((4, 4), np.float32)
    sanitized = T5Encoder.sanitize({k: mx.array(v) for k, v in state.items()}, prefix="text_encoder.")
    cfg = T5Config.from_dict(hf_model.config.to_dict())
    assert set(sanitized) == set(dict(tree_flatten(T5Encoder(cfg).parameters())))
    enc = T5TextEncoder.from_parts(cfg, state, tok, prefix="text_encoder.")
    ids, mask = enc.tokenize(PROMPTS, MAX_LEN)
    ref = _hf_forward(torch_ref, hf_model, ids, mask)
    assert _rel_err(np.array(enc.model(mx.array(ids), mx.array(mask))), ref) <= TOL


def test_from_dir_reports_missing_key_or_truncated_file(tiny_dirs, tmp_path):
    import shutil

    d, _, _ = tiny_dirs["relu"]
    for f in d.iterdir():
        shutil.copy(f, tmp_path / f.name)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    del weights["encoder.block.1.layer.0.SelfAttention.k.weight"]
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing keys: layers\.1\.attn\.k\.weight"):
        T5TextEncoder.from_dir(tmp_path)
    # an incomplete download: the real file cut short
    data = (d / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        T5TextEncoder.from_dir(tmp_path)


def test_from_dir_sharded_checkpoint_and_missing_tokenizer(tiny_dirs, tmp_path):
    import shutil

    d, hf_model, _ = tiny_dirs["gated-gelu"]
    weights = mx.load(str(d / "model.safetensors"))
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        mx.save_safetensors(str(tmp_path / shard), {k: weights[k] for k in keys})
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    shutil.copy(d / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="no tokenizer files"):
        T5TextEncoder.from_dir(tmp_path)
    for f in d.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, tmp_path / f.name)
    sharded = T5TextEncoder.from_dir(tmp_path)
    single = T5TextEncoder.from_dir(d)
    a, _ = sharded.encode(PROMPTS, MAX_LEN)
    b, _ = single.encode(PROMPTS, MAX_LEN)
    np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parity
def test_fp16_weights_track_the_fp16_reference(tiny_dirs, torch_ref):
    """The Stable Audio reference runs its T5 in fp16; loading with dtype=float16 must stay close to it.

    fp16 is not exact: both fp16 runs differ from fp32 by ~2e-3 relative, so the bound here is 1e-2.
    """
    import copy

    d, hf_model, _ = tiny_dirs["gated-gelu"]
    enc16 = T5TextEncoder.from_dir(d, dtype=mx.float16)
    ids, mask = enc16.tokenize(PROMPTS, MAX_LEN)
    out = enc16.model(mx.array(ids), mx.array(mask))
    assert out.dtype == mx.float16
    ref16 = _hf_forward(torch_ref, copy.deepcopy(hf_model).half(), ids, mask)
    err = _rel_err(np.array(out.astype(mx.float32)), ref16)
    print(f"T5 gated-gelu fp16 vs transformers fp16: max abs err / max abs = {err:.2e}")
    assert np.isfinite(np.array(out.astype(mx.float32))).all() and err <= 1e-2
