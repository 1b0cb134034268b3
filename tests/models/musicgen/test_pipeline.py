"""MusicGenPipeline: loading/conversion, text states, logits and the codec against transformers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from livegen.errors import WeightsError
from livegen.models.musicgen.config import MusicGenConfig

PROMPTS = ["warm deep techno loop with analog bass", "jazz piano"]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("lgcache")
        mp.setenv("LIVEGEN_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, transformers_ref, cache):
    from livegen.models.musicgen import MusicGenPipeline
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    root = tmp_path_factory.mktemp("mgp")
    out = {}
    for variant in ("mono", "stereo", "melody"):
        model, tokenizer = make_tiny_musicgen(root / variant, variant=variant, seed=3)
        out[variant] = (
            root / variant,
            model,
            tokenizer,
            MusicGenPipeline.from_pretrained(str(root / variant)),
        )
    return out


def test_config_from_real_layout():
    cfg = {
        "model_type": "musicgen",
        "decoder": {"hidden_size": 1024, "num_codebooks": 8, "audio_channels": 2, "num_hidden_layers": 24,
                    "pad_token_id": 2048, "bos_token_id": 2048, "unknown_key": 1},
        "text_encoder": {"d_model": 768},
        "audio_encoder": {"sampling_rate": 32000, "upsampling_ratios": [8, 5, 4, 4]},
        "something_new": True,
    }  # fmt: skip
    config = MusicGenConfig.from_dict(cfg, {"decoder_start_token_id": 2048, "guidance_scale": 3.0})
    assert config.num_codebooks == 8 and config.audio_channels == 2
    assert config.frame_rate == 50 and config.sampling_rate == 32000
    assert config.decoder_start_token_id == 2048 and config.has_enc_to_dec_proj
    assert not config.is_melody
    with pytest.raises(ValueError, match="not a MusicGen config"):
        MusicGenConfig.from_dict({"model_type": "t5"})
    with pytest.raises(ValueError, match="audio_channels"):
        MusicGenConfig.from_dict({"model_type": "musicgen", "decoder": {"audio_channels": 3}})


@pytest.mark.parity
def test_from_pretrained_converts_once_into_the_cache(tiny, cache):
    from livegen.models.musicgen import MusicGenPipeline
    from livegen.models.musicgen.convert import convert, is_converted

    src = tiny["mono"][0]
    out = convert(str(src))
    assert is_converted(out) and str(out).startswith(str(cache))
    for name in ("model.safetensors", "config.json", "manifest.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "musicgen" and manifest["dtype"] == "float32"
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert(str(src)) == out  # reused, not rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    again = MusicGenPipeline.from_pretrained(str(out))  # a converted dir loads directly
    assert again.sample_rate == 32000 and again.config.num_codebooks == 4
    codes = np.random.default_rng(0).integers(0, 32, size=(1, 4, 5))
    np.testing.assert_array_equal(again.decode_codes(codes), tiny["mono"][3].decode_codes(codes))


@pytest.mark.parity
def test_pickle_only_checkpoint_needs_allow_pickle(tiny, tmp_path, torch_ref):
    from livegen.models.musicgen import MusicGenPipeline

    src, model, _, pipe = tiny["mono"]
    bin_dir = tmp_path / "bin"
    shutil.copytree(src, bin_dir)
    (bin_dir / "model.safetensors").unlink()
    torch_ref.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="allow-pickle|allow_pickle"):
        MusicGenPipeline.from_pretrained(str(bin_dir))
    loaded = MusicGenPipeline.from_pretrained(str(bin_dir), allow_pickle=True)
    codes = np.random.default_rng(1).integers(0, 33, size=(1, 4, 6))
    np.testing.assert_allclose(loaded.logits(codes, "jazz"), pipe.logits(codes, "jazz"), atol=1e-6)


@pytest.mark.parity
def test_wrong_checkpoint_is_reported(tiny, tmp_path):
    from livegen.models.musicgen import MusicGenPipeline

    src = tiny["mono"][0]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["decoder"]["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="missing"):
        MusicGenPipeline.from_pretrained(str(bad))


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "melody"])
def test_encode_text_matches_reference(variant, tiny, torch_ref):
    _, model, tokenizer, pipe = tiny[variant]
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch_ref.no_grad():
        h = model.text_encoder(**enc).last_hidden_state
        h = model.enc_to_dec_proj(h) * enc["attention_mask"][..., None]
    states, mask = pipe.encode_text(PROMPTS)
    np.testing.assert_array_equal(mask, enc["attention_mask"].numpy())
    assert rel_err(states, h.numpy()) <= 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "stereo", "melody"])
def test_logits_match_reference(variant, tiny, torch_ref):
    _, model, tokenizer, pipe = tiny[variant]
    k = pipe.config.num_codebooks
    codes = np.random.default_rng(4).integers(0, 33, size=(2, k, 7))
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch_ref.no_grad():
        ref = model(**enc, decoder_input_ids=torch_ref.tensor(codes.reshape(2 * k, 7))).logits.numpy()
    ref = ref.reshape(2, k, -1, ref.shape[-1])[:, :, -7:]
    ours = pipe.logits(codes, PROMPTS)
    assert ours.shape == (2, k, 7, 32)
    err = rel_err(ours, ref)
    print(f"{variant}: pipeline logits rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_codec_matches_reference(variant, tiny, torch_ref):
    _, model, _, pipe = tiny[variant]
    k = pipe.config.num_codebooks
    codes = np.random.default_rng(5).integers(0, 32, size=(1, k, 9))
    with torch_ref.no_grad():
        if variant == "mono":
            ref = model.audio_encoder.decode(torch_ref.tensor(codes)[None], [None]).audio_values.numpy()
        else:
            left = model.audio_encoder.decode(torch_ref.tensor(codes[:, 0::2])[None], [None]).audio_values
            right = model.audio_encoder.decode(torch_ref.tensor(codes[:, 1::2])[None], [None]).audio_values
            ref = torch_ref.cat([left, right], dim=1).numpy()
    audio = pipe.decode_codes(codes)
    assert audio.shape == (1, pipe.audio_channels, 9 * 16)
    assert rel_err(audio, ref) <= 1e-4
    wav = (
        np.random.default_rng(6).uniform(-0.5, 0.5, size=(1, pipe.audio_channels, 16 * 8)).astype(np.float32)
    )
    with torch_ref.no_grad():
        sides = [model.audio_encoder.encode(torch_ref.tensor(wav[:, c : c + 1])).audio_codes[0].numpy()
                 for c in range(pipe.audio_channels)]  # fmt: skip
    ref_codes = sides[0] if len(sides) == 1 else np.stack(sides, axis=2).reshape(1, k, -1)
    np.testing.assert_array_equal(pipe.encode_audio(wav), ref_codes)
    if variant == "stereo":  # a mono clip is used for both sides
        mono = pipe.encode_audio(wav[:, :1])
        np.testing.assert_array_equal(mono[:, 0::2], mono[:, 1::2])


@pytest.mark.parity
def test_melody_only_for_melody_models(tiny):
    pipe = tiny["mono"][3]
    melody = (np.zeros((1, 32000), np.float32), 32000)
    with pytest.raises(ValueError, match="melody"):
        pipe.generate("jazz", seconds=0.01, melody=melody)
    with pytest.raises(ValueError, match="seconds"):
        pipe.generate("jazz", seconds=0)


@pytest.mark.parity
def test_half_precision_option(tiny):
    from livegen.models.musicgen import MusicGenPipeline

    src, _, _, pipe = tiny["mono"]
    half = MusicGenPipeline.from_pretrained(str(src), dtype="float16")
    assert half.lm.lm_heads[0].weight.dtype == half.dtype
    codes = np.random.default_rng(8).integers(0, 33, size=(2, 4, 6))
    assert rel_err(half.logits(codes, PROMPTS), pipe.logits(codes, PROMPTS)) < 2e-2
    with pytest.raises(ValueError, match="dtype"):
        MusicGenPipeline.from_pretrained(str(src), dtype="int8")


def test_warmup_runs_and_does_not_change_later_generations(tiny):
    from livegen.models.musicgen import MusicGenPipeline

    src, _, _, pipe = tiny["mono"]
    cold = MusicGenPipeline.from_pretrained(str(src))
    expected = cold.generate("jazz", seconds=0.1, seed=11, top_k=5)
    pipe.warmup([4.0, 8.0])
    assert pipe.last_seed == 0  # the warm-up clip itself is seeded
    np.testing.assert_array_equal(pipe.generate("jazz", seconds=0.1, seed=11, top_k=5), expected)
