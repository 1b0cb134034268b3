"""Oobleck VAE: config parsing, streaming decode, and parity with stable-audio-tools."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from livegen.models.stable_audio.vae import (
    AudioAutoencoder,
    AutoencoderConfig,
    OobleckConfig,
)
from livegen.models.stable_audio.vae_stream import DecoderStream

REFERENCE_CONFIGS = Path("/work/shared/reference")
SMALL_CONFIG = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 8, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 16, "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 8, "c_mults": [1, 2],
                                              "strides": [2, 4], "latent_dim": 8, "use_snake": True,
                                              "final_tanh": False}},
    "bottleneck": {"type": "vae"},
    "latent_dim": 8,
    "downsampling_ratio": 8,
    "io_channels": 2,
}
# The ELU variant (use_snake False) with the reference's default final tanh, mono.
ELU_CONFIG = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 1, "channels": 4, "c_mults": [2, 3],
                                              "strides": [4, 2], "latent_dim": 8}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 1, "channels": 4, "c_mults": [2, 3],
                                              "strides": [4, 2], "latent_dim": 4}},
    "bottleneck": {"type": "vae"},
    "latent_dim": 4,
    "downsampling_ratio": 8,
    "io_channels": 1,
}

# Odd stride (3): the transposed convolution's output is then one sample short of L * stride.
ODD_CONFIG = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 3], "latent_dim": 6, "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 4, "c_mults": [1, 2],
                                              "strides": [2, 3], "latent_dim": 3, "use_snake": True}},
    "bottleneck": {"type": "vae"},
    "latent_dim": 3,
    "downsampling_ratio": 6,
    "io_channels": 2,
}
CONFIGS = {"snake": SMALL_CONFIG, "elu": ELU_CONFIG, "odd": ODD_CONFIG}


def _real_pretransform_config(name: str) -> dict:
    path = REFERENCE_CONFIGS / f"{name}.model_config.json"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text())["model"]["pretransform"]["config"]


def _randomise_mlx(model: AudioAutoencoder, seed: int = 0) -> None:
    """Random weights everywhere, including the zero-initialised Snake alpha/beta and biases."""
    rng = np.random.default_rng(seed)
    params = []
    for key, value in tree_flatten(model.parameters()):
        if key.endswith((".alpha", ".beta", ".bias")):
            new = 0.3 * rng.standard_normal(value.shape)
        else:
            fan_in = value.shape[1] * value.shape[2]
            new = rng.standard_normal(value.shape) / np.sqrt(fan_in)
        params.append((key, mx.array(new.astype(np.float32))))
    model.load_weights(params, strict=True)
    mx.eval(model.parameters())


def _tiny_model(config: dict, seed: int = 0) -> AudioAutoencoder:
    model = AudioAutoencoder(AutoencoderConfig.from_dict(config))
    _randomise_mlx(model, seed)
    return model


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["stable-audio-open-small", "stable-audio-open-1.0"])
def test_config_from_real_model_config(name):
    cfg = AutoencoderConfig.from_dict(_real_pretransform_config(name))
    assert cfg.bottleneck == "vae" and cfg.latent_dim == 64 and cfg.io_channels == 2
    assert cfg.downsampling_ratio == 2048
    assert cfg.encoder.latent_dim == 128 and cfg.decoder.latent_dim == 64
    assert cfg.encoder.use_snake and cfg.decoder.use_snake and not cfg.decoder.final_tanh
    assert cfg.encoder.c_mults == [1, 2, 4, 8, 16] and cfg.decoder.strides == [2, 4, 4, 8, 8]


def test_config_ignores_unknown_keys_and_rejects_unsupported():
    inner = dict(SMALL_CONFIG["decoder"]["config"], some_future_option=3)
    assert OobleckConfig.from_dict(inner).channels == 8
    with pytest.raises(ValueError, match="antialias"):
        OobleckConfig.from_dict(dict(inner, antialias_activation=True))
    with pytest.raises(ValueError, match="oobleck"):
        OobleckConfig.from_dict({"type": "dac", "config": inner})
    with pytest.raises(ValueError, match="bottleneck"):
        AutoencoderConfig.from_dict(dict(SMALL_CONFIG, bottleneck={"type": "rvq"}))
    with pytest.raises(ValueError, match="downsampling_ratio"):
        AutoencoderConfig.from_dict(dict(SMALL_CONFIG, downsampling_ratio=16))
    with pytest.raises(ValueError, match="encoder latent_dim"):
        AutoencoderConfig.from_dict(dict(SMALL_CONFIG, latent_dim=16))


# ----------------------------------------------------------------------------- MLX-only behaviour


def test_shapes_and_numpy_layout():
    model = _tiny_model(SMALL_CONFIG)
    audio = np.random.default_rng(1).standard_normal((2, 2, 96)).astype(np.float32)
    latents = model.encode_numpy(audio)
    assert latents.shape == (2, 8, 12) and latents.dtype == np.float32
    nlc = model.encode(mx.array(audio.transpose(0, 2, 1)))
    np.testing.assert_array_equal(np.array(nlc).transpose(0, 2, 1), latents)
    decoded = model.decode_numpy(latents)
    assert decoded.shape == (2, 2, 96)
    np.testing.assert_array_equal(np.array(model.decode(nlc)).transpose(0, 2, 1), decoded)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("chunk", [1, 4, 5, 40])
def test_decode_chunks_concatenate_to_decode(name, chunk):
    config = CONFIGS[name]
    model = _tiny_model(config, seed=2)
    latents = mx.array(np.random.default_rng(3).standard_normal((2, 23, config["latent_dim"])).astype(np.float32))
    full = np.array(model.decode(latents))
    pieces = [np.array(p) for p in model.decode_chunks(latents, chunk=chunk)]
    ratio = config["downsampling_ratio"]
    assert len(pieces) == -(-23 // chunk)
    assert [p.shape[1] for p in pieces[:-1]] == [chunk * ratio] * (len(pieces) - 1)
    joined = np.concatenate(pieces, axis=1)
    assert joined.shape == full.shape
    err = np.abs(joined - full).max() / np.abs(full).max()
    assert err <= 1e-5, err


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_decode_of_long_inputs_runs_in_tiles_equal_to_one_shot(name, monkeypatch):
    from livegen import device
    from livegen.models.stable_audio import vae as vae_module

    monkeypatch.setattr(device, "realtime", lambda: False)  # batch mode (a daemon test may have set it)
    config = CONFIGS[name]
    model = _tiny_model(config, seed=6)
    dec = config["decoder"]["config"]
    per_latent = 2 * config["downsampling_ratio"] * dec["channels"] * 4  # batch 2, float32
    monkeypatch.setattr(vae_module, "DECODE_TILE_BYTES", 5 * per_latent)
    assert model.tile_latents(2) == 5 and model.tile_latents(1) == 10
    latents = mx.array(np.random.default_rng(7).standard_normal((2, 23, config["latent_dim"])).astype(np.float32))
    one_shot = np.array(model.decoder(latents))
    calls = []
    original = model.decode_chunks
    monkeypatch.setattr(model, "decode_chunks", lambda x, chunk: calls.append(chunk) or original(x, chunk=chunk))
    tiled = np.array(model.decode(latents))
    assert calls == [5]
    assert tiled.shape == one_shot.shape
    assert _rel(tiled, one_shot) <= 1e-6, _rel(tiled, one_shot)
    short = latents[:, :5]
    np.testing.assert_array_equal(np.array(model.decode(short)), np.array(model.decoder(short)))
    assert calls == [5]  # no tiling at or below one tile


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_chunks_exact_for_any_overlap(name):
    config = CONFIGS[name]
    model = _tiny_model(config, seed=4)
    latents = mx.array(np.random.default_rng(5).standard_normal((1, 30, config["latent_dim"])).astype(np.float32))
    full = np.array(model.decode(latents))
    lookahead = model.decoder.lookahead_latents()
    for overlap in (0, 1, lookahead, lookahead + 7):
        joined = np.concatenate([np.array(p) for p in model.decode_chunks(latents, 4, overlap)], axis=1)
        assert joined.shape == full.shape
        assert _rel(joined, full) <= 1e-5, (overlap, _rel(joined, full))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_first_piece_needs_only_chunk_plus_lookahead_latents(name):
    """Latents past chunk + overlap are NaN: with overlap = the decoder's look-ahead the first
    piece is already final (finite, equal to the full decode) before any of them is read; with
    one latent less it is not (it must wait for, and so depends on, a NaN latent)."""
    config = CONFIGS[name]
    ratio, chunk = config["downsampling_ratio"], 5
    model = _tiny_model(config, seed=6)
    lookahead = model.decoder.lookahead_latents()
    assert lookahead >= 1
    clean = np.random.default_rng(7).standard_normal((1, 40, config["latent_dim"])).astype(np.float32)
    head = np.array(model.decode(mx.array(clean)))[:, : chunk * ratio]
    for overlap, ready in ((lookahead, True), (lookahead - 1, False)):
        poisoned = clean.copy()
        poisoned[:, chunk + overlap :] = np.nan
        first = np.array(next(model.decode_chunks(mx.array(poisoned), chunk, overlap)))
        assert first.shape == head.shape
        assert np.isfinite(first).all() == ready, overlap
        if ready:
            assert _rel(first, head) <= 1e-5


def test_decoder_stream_with_irregular_pushes():
    model = _tiny_model(SMALL_CONFIG, seed=8)
    latents = mx.array(np.random.default_rng(9).standard_normal((2, 26, 8)).astype(np.float32))
    full = np.array(model.decode(latents))
    stream = DecoderStream(model.decoder)
    outputs, start = [], 0
    for size in (1, 3, 7, 2, 13):
        outputs.append(stream.push(latents[:, start : start + size]))
        start += size
    outputs.append(stream.push(None, final=True))
    joined = np.concatenate([np.array(o) for o in outputs if o is not None], axis=1)
    assert outputs[0] is None  # one latent is not enough for any final sample
    assert joined.shape == full.shape
    assert _rel(joined, full) <= 1e-5
    with pytest.raises(RuntimeError):
        stream.push(latents[:, :1])


def test_decode_chunks_numpy_layout_and_errors():
    model = _tiny_model(SMALL_CONFIG, seed=6)
    latents = np.random.default_rng(7).standard_normal((1, 8, 30)).astype(np.float32)
    pieces = list(model.decode_chunks_numpy(latents, chunk=6))
    assert [p.shape for p in pieces] == [(1, 2, 48)] * 5
    np.testing.assert_allclose(np.concatenate(pieces, axis=2), model.decode_numpy(latents), rtol=0,
                               atol=1e-5 * np.abs(pieces[0]).max())
    with pytest.raises(ValueError):
        next(model.decode_chunks_numpy(latents, chunk=0))
    with pytest.raises(ValueError):
        next(model.decode_chunks_numpy(latents, overlap=-1))


def test_snake_beta_matches_its_definition():
    from livegen.models.stable_audio.vae import SnakeBeta, _sin_squared

    y = np.linspace(-2000, 2000, 400_001, dtype=np.float32)
    exact = np.sin(y.astype(np.float64)) ** 2
    assert np.abs(np.array(_sin_squared(mx.array(y))) - exact).max() < 5e-7
    rng = np.random.default_rng(13)
    snake = SnakeBeta(6)
    alpha, beta = 0.5 * rng.standard_normal(6), 0.5 * rng.standard_normal(6)
    snake.alpha, snake.beta = mx.array(alpha.astype(np.float32)), mx.array(beta.astype(np.float32))
    x = 4 * rng.standard_normal((2, 50, 6)).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = x64 + 1 / (np.exp(beta) + 1e-9) * np.sin(x64 * np.exp(alpha)) ** 2
    assert _rel(np.array(snake(mx.array(x))), expected) < 1e-6


def test_runs_entirely_on_a_worker_thread():
    """The generation thread owns MLX: building, loading, compiled Snake, cached polyphase weights
    and chunked decoding must all work there, handing numpy back."""
    import threading

    reference = _tiny_model(SMALL_CONFIG, seed=9)
    weights = {k: np.array(v) for k, v in tree_flatten(reference.parameters())}
    latents = np.random.default_rng(10).standard_normal((1, 8, 9)).astype(np.float32)
    expected = reference.decode_numpy(latents)
    result: dict = {}

    def work():
        try:
            model = AudioAutoencoder(AutoencoderConfig.from_dict(SMALL_CONFIG))
            model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
            mx.eval(model.parameters())
            result["full"] = model.decode_numpy(latents)
            result["chunks"] = np.concatenate(list(model.decode_chunks_numpy(latents, chunk=4)), axis=2)
        except Exception as exc:  # reported below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert "error" not in result, result.get("error")
    np.testing.assert_allclose(result["full"], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(result["chunks"], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_sanitize_fuses_weight_norm_and_transposes():
    rng = np.random.default_rng(8)
    v = rng.standard_normal((6, 4, 3)).astype(np.float32)  # Conv1d (out, in, K)
    g = rng.uniform(0.5, 2, (6, 1, 1)).astype(np.float32)
    vt = rng.standard_normal((4, 6, 8)).astype(np.float32)  # ConvTranspose1d (in, out, K)
    gt = rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32)
    out = AudioAutoencoder.sanitize({
        "pretransform.model.encoder.layers.0.weight_g": mx.array(g),
        "pretransform.model.encoder.layers.0.weight_v": mx.array(v),
        "pretransform.model.encoder.layers.0.bias": mx.array(np.ones(6, np.float32)),
        "decoder.layers.1.layers.1.parametrizations.weight.original0": gt,
        "decoder.layers.1.layers.1.parametrizations.weight.original1": vt,
        "model.model.something.else": mx.zeros((2,)),
    })
    assert set(out) == {"encoder.layers.0.weight", "encoder.layers.0.bias", "decoder.layers.1.layers.1.weight"}
    w = g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(np.array(out["encoder.layers.0.weight"]), w.transpose(0, 2, 1), rtol=1e-6)
    wt = gt * vt / np.sqrt((vt**2).sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(np.array(out["decoder.layers.1.layers.1.weight"]), wt.transpose(1, 2, 0), rtol=1e-6)


# ----------------------------------------------------------------------------- parity


def _autoencoders_module():
    """The reference autoencoder module (``sat.load()`` imports it against a torchaudio stand-in)."""
    from tests.reference import sat

    sat.load()
    return importlib.import_module("stable_audio_tools.models.autoencoders")


def _reference_autoencoder(sat_ref, config: dict, meta: bool = False):
    torch = sys.modules["torch"]
    module = _autoencoders_module()
    with torch.device("meta" if meta else "cpu"):
        ae = module.create_autoencoder_from_config({"sample_rate": 44100, "model": config})
    return ae.eval()


def _randomise_torch(ae, torch, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)  # positive
            elif name.endswith((".alpha", ".beta")):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def _checkpoint_roundtrip(ae, tmp_path) -> dict:
    """Save like the real checkpoint (``pretransform.model.`` keys), load with MLX, strip the prefix."""
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    state = {f"pretransform.model.{k}": v.detach().contiguous() for k, v in ae.state_dict().items()}
    save_file(state, str(path))
    loaded = mx.load(str(path))
    return {k.removeprefix("pretransform.model."): v for k, v in loaded.items()}


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("conv_impl", ["matmul", "native"])
def test_parity_with_reference(sat_ref, torch_ref, tmp_path, name, conv_impl):
    from livegen.models import conv

    torch = torch_ref
    config = CONFIGS[name]
    ae = _reference_autoencoder(sat_ref, config)
    _randomise_torch(ae, torch, seed=11)
    model = AudioAutoencoder.from_weights(config, _checkpoint_roundtrip(ae, tmp_path))

    rng = np.random.default_rng(12)
    audio = rng.standard_normal((2, config["io_channels"], 96)).astype(np.float32)
    latents = rng.standard_normal((2, config["latent_dim"], 13)).astype(np.float32)
    with torch.no_grad():
        pre = ae.encoder(torch.from_numpy(audio))
        ref_mean = pre.chunk(2, dim=1)[0].numpy()  # the VAE bottleneck's mean (no sampling)
        ref_audio = ae.decode(torch.from_numpy(latents)).numpy()
    with conv.implementation(conv_impl):
        ours_mean = model.encode_numpy(audio)
        ours_audio = model.decode_numpy(latents)
        chunks = np.concatenate(list(model.decode_chunks_numpy(latents, chunk=3)), axis=2)
    assert ours_mean.shape == ref_mean.shape and ours_audio.shape == ref_audio.shape
    assert _rel(ours_mean, ref_mean) <= 1e-4, _rel(ours_mean, ref_mean)
    assert _rel(ours_audio, ref_audio) <= 1e-4, _rel(ours_audio, ref_audio)
    assert _rel(chunks, ref_audio) <= 1e-4, _rel(chunks, ref_audio)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["stable-audio-open-small", "stable-audio-open-1.0"])
def test_full_size_key_set_matches_reference(sat_ref, torch_ref, name):
    """The reference autoencoder built from the real config (on the meta device: shapes only),
    sanitized, has exactly our module's keys and shapes."""
    config = _real_pretransform_config(name)
    ae = _reference_autoencoder(sat_ref, config, meta=True)
    state = ae.state_dict()
    assert any(k.endswith("weight_g") for k in state)
    # mx.zeros is lazy: nothing of the ~150M parameters is allocated or computed here.
    sanitized = AudioAutoencoder.sanitize({f"pretransform.model.{k}": mx.zeros(tuple(v.shape))
                                           for k, v in state.items()})
    ours = {k: tuple(v.shape) for k, v in tree_flatten(AudioAutoencoder(AutoencoderConfig.from_dict(config))
                                                       .parameters())}
    assert set(sanitized) == set(ours)
    assert {k: tuple(v.shape) for k, v in sanitized.items()} == ours
