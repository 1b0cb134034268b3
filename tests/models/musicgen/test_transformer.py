"""MusicGen decoder parity against transformers (tiny random checkpoints) and full-size key sets."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from livegen.models.musicgen.config import MusicGenConfig
from livegen.models.musicgen.transformer import MusicGenLM, sinusoidal_positions
from livegen.models.t5 import T5Config, T5Encoder, T5TextEncoder

PROMPTS = ["warm deep techno loop with analog bass", "jazz piano"]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def _to_mx(model) -> dict[str, mx.array]:
    return {k: mx.array(v.detach().cpu().float().numpy()) for k, v in model.state_dict().items()}


class Tiny:
    def __init__(self, variant: str):
        from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

        self.variant = variant
        self.ref, self.tokenizer = make_tiny_musicgen(None, variant=variant, seed=1)
        cfg = self.ref.config.to_dict()
        self.config = MusicGenConfig.from_dict(cfg)
        weights = _to_mx(self.ref)
        self.lm = MusicGenLM.from_weights(self.config, weights)
        self.t5 = T5TextEncoder.from_parts(
            T5Config.from_dict(cfg["text_encoder"]), weights, self.tokenizer, prefix="text_encoder."
        )

    def tokens(self, prompts):
        enc = self.tokenizer(prompts, padding=True, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def text_states(self, ids, mask) -> mx.array:
        hidden = self.t5.model(mx.array(ids.astype(np.int32)), mx.array(mask))
        return self.lm.project_text(hidden, mx.array(mask))


@pytest.fixture(scope="module")
def mono(transformers_ref):
    return Tiny("mono")


@pytest.fixture(scope="module")
def stereo(transformers_ref):
    return Tiny("stereo")


@pytest.fixture(scope="module")
def melody(transformers_ref):
    return Tiny("melody")


def _codes(k: int, t: int, vocab: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    # include the pad/BOS id (== vocab) as the delay pattern does
    return np.random.default_rng(seed).integers(0, vocab + 1, size=(batch, k, t)).astype(np.int64)


@pytest.mark.parity
def test_sinusoidal_positions_match_reference(transformers_ref):
    from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding

    for dim in (32, 33):
        ref = MusicgenSinusoidalPositionalEmbedding.get_embedding(300, dim).numpy()
        np.testing.assert_allclose(sinusoidal_positions(300, dim), ref, atol=2e-5)


@pytest.mark.parity
def test_text_states_match_reference(mono, torch_ref):
    ids, mask = mono.tokens(PROMPTS)
    assert mask.min() == 0  # the two prompts differ in length: padding is exercised
    with torch_ref.no_grad():
        h = mono.ref.text_encoder(
            input_ids=torch_ref.tensor(ids), attention_mask=torch_ref.tensor(mask)
        ).last_hidden_state
        h = mono.ref.enc_to_dec_proj(h) * torch_ref.tensor(mask)[..., None]
    ours = np.array(mono.text_states(ids, mask))
    assert rel_err(ours, h.numpy()) <= 1e-4


def _ref_logits_full(tiny: Tiny, torch, codes: np.ndarray, ids, mask) -> np.ndarray:
    b, k, t = codes.shape
    with torch.no_grad():
        out = tiny.ref(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(codes.reshape(b * k, t)),
        ).logits
    return out.numpy().reshape(b, k, -1, out.shape[-1])[:, :, -t:]


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_decoder_logits_with_cross_mask(variant, request, torch_ref):
    tiny = request.getfixturevalue(variant)
    ids, mask = tiny.tokens(PROMPTS)
    codes = _codes(tiny.config.num_codebooks, 9, tiny.config.decoder.vocab_size)
    ref = _ref_logits_full(tiny, torch_ref, codes, ids, mask)
    enc = tiny.text_states(ids, mask)
    ours = tiny.lm(
        mx.array(codes.astype(np.int32)), cross_kv=tiny.lm.cross_key_values(enc), cross_mask=mx.array(mask)
    )
    ours = np.array(ours)
    assert ours.shape == ref.shape
    err = rel_err(ours, ref)
    print(f"{variant} logits with mask: rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parity
def test_decoder_logits_without_cross_mask(mono, torch_ref):
    ids, mask = mono.tokens(PROMPTS)
    codes = _codes(4, 6, mono.config.decoder.vocab_size, seed=3)
    enc = np.random.default_rng(5).standard_normal((2, 5, mono.config.decoder.hidden_size)).astype(np.float32)
    with torch_ref.no_grad():
        ref = mono.ref.decoder(
            input_ids=torch_ref.tensor(codes.reshape(8, 6)), encoder_hidden_states=torch_ref.tensor(enc)
        ).logits
    ref = ref.numpy().reshape(2, 4, 6, -1)
    ours = np.array(
        mono.lm(mx.array(codes.astype(np.int32)), cross_kv=mono.lm.cross_key_values(mx.array(enc)))
    )
    assert rel_err(ours, ref) <= 1e-4


@pytest.mark.parity
def test_kv_cache_steps_equal_full_forward(mono):
    ids, mask = mono.tokens(PROMPTS)
    enc = mono.text_states(ids, mask)
    kv = mono.lm.cross_key_values(enc)
    codes = mx.array(_codes(4, 7, mono.config.decoder.vocab_size, seed=7).astype(np.int32))
    full = np.array(mono.lm(codes, cross_kv=kv, cross_mask=mx.array(mask)))
    cache = mono.lm.make_cache()
    parts = [mono.lm(codes[:, :, :3], cache=cache, cross_kv=kv, cross_mask=mx.array(mask))]
    for i in range(3, 7):
        parts.append(mono.lm(codes[:, :, i : i + 1], cache=cache, cross_kv=kv, cross_mask=mx.array(mask)))
    stepped = np.array(mx.concatenate(parts, axis=2))
    assert rel_err(stepped, full) <= 1e-5


@pytest.mark.parity
def test_melody_prefix_logits_match_reference(melody, torch_ref):
    ids, mask = melody.tokens(PROMPTS)
    b, k, t = 2, 4, 6
    codes = _codes(k, t, melody.config.decoder.vocab_size, seed=11)
    chroma = (
        np.random.default_rng(2).random((b, 5, 12)).astype(np.float32)
    )  # shorter than chroma_length: tiled
    with torch_ref.no_grad():
        ref = melody.ref(
            input_ids=torch_ref.tensor(ids),
            attention_mask=torch_ref.tensor(mask),
            input_features=torch_ref.tensor(chroma),
            decoder_input_ids=torch_ref.tensor(codes.reshape(b * k, t)),
        ).logits
    ref = ref.numpy().reshape(b, k, -1, ref.shape[-1])[:, :, -t:]
    prefix = mx.concatenate(
        [melody.lm.project_chroma(mx.array(chroma)), melody.text_states(ids, mask)], axis=1
    )
    assert prefix.shape[1] == melody.config.chroma_length + ids.shape[1]
    full = np.array(melody.lm(mx.array(codes.astype(np.int32)), prefix=prefix))
    assert rel_err(full, ref) <= 1e-4
    # with the KV cache: prefix on the first call only
    cache = melody.lm.make_cache()
    c = mx.array(codes.astype(np.int32))
    first = melody.lm(c[:, :, :2], cache=cache, prefix=prefix)
    rest = [melody.lm(c[:, :, i : i + 1], cache=cache) for i in range(2, t)]
    stepped = np.array(mx.concatenate([first, *rest], axis=2))
    assert rel_err(stepped, ref) <= 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "stereo", "melody"])
def test_full_size_checkpoint_keys_match_strictly(variant, transformers_ref):
    """Real-size key sets (musicgen-small / stereo-small / melody) against our modules, strictly."""
    from livegen.models.musicgen.encodec import Encodec, EncodecConfig
    from tests.models.musicgen.mg_fixtures import full_size_state_shapes

    shapes, cfg = full_size_state_shapes(variant)
    config = MusicGenConfig.from_dict(cfg)
    fake = {k: mx.zeros((1,)) for k in shapes}  # names only; shapes compared below
    lm = MusicGenLM(config)
    ours = MusicGenLM.sanitize(fake)
    expected = dict(tree_flatten(lm.parameters()))
    assert set(ours) == set(expected)
    renamed = _rename_map(MusicGenLM.sanitize, shapes)
    for src, dst in renamed.items():
        assert tuple(expected[dst].shape) == shapes[src], src
    t5 = T5Encoder(T5Config.from_dict(cfg["text_encoder"]))
    t5_params = dict(tree_flatten(t5.parameters()))
    t5_renamed = _rename_map(lambda w: T5Encoder.sanitize(w, prefix="text_encoder."), shapes)
    assert set(t5_renamed.values()) == set(t5_params)
    for src, dst in t5_renamed.items():
        assert tuple(t5_params[dst].shape) == shapes[src], src
    codec = Encodec(EncodecConfig.from_dict(cfg["audio_encoder"]))
    audio = {k[len("audio_encoder.") :]: v for k, v in fake.items() if k.startswith("audio_encoder.")}
    assert set(Encodec.sanitize(audio)) == set(dict(tree_flatten(codec.parameters())))
    covered = {k for k in shapes if k.startswith("audio_encoder.")} | set(renamed) | set(t5_renamed)
    assert covered == set(shapes)


def _rename_map(sanitize, shapes: dict[str, tuple]) -> dict[str, str]:
    """Source key -> sanitized key for the keys that are renamed one to one."""
    out = {}
    for key in shapes:
        got = sanitize({key: mx.zeros((1,))})
        if got:
            (dst,) = got
            out[key] = dst
    return out
