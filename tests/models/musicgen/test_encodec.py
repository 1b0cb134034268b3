"""EnCodec (MLX) vs transformers' EncodecModel, and the streaming decoder vs the batch decoder.

Two tiny random codecs saved with ``save_pretrained`` (the real on-disk keys):
- "musicgen": MusicGen's 32 kHz shape (non-causal, reflect padding, no normalisation, identity
  shortcuts), tiny widths, 2 residual layers (so a dilated convolution appears);
- "causal": causal convolutions, trim_right_ratio 0.5, an odd stride, conv shortcuts, stereo,
  normalisation on (scale), constant padding — the other branches of the reference.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from livegen.models import conv
from livegen.models.musicgen.encodec import Encodec, EncodecConfig
from livegen.models.musicgen.encodec_stream import EncodecStreamDecoder

CODEBOOK = 32
VARIANTS = {
    "musicgen": dict(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        upsampling_ratios=[4, 2],
        hidden_size=16,
        codebook_size=CODEBOOK,
        target_bandwidths=[80.0],  # frame rate 4000 Hz, 5 bits: 4 codebooks
        num_residual_layers=2,
        use_causal_conv=False,
        normalize=False,
        use_conv_shortcut=False,
        pad_mode="reflect",
    ),
    "causal": dict(
        sampling_rate=24000,
        audio_channels=2,
        num_filters=4,
        upsampling_ratios=[3, 2],
        hidden_size=8,
        codebook_size=16,
        target_bandwidths=[40.0, 80.0],  # frame rate 4000 Hz, 4 bits: 2 or 5 codebooks
        num_residual_layers=1,
        num_lstm_layers=1,
        kernel_size=5,
        last_kernel_size=3,
        use_causal_conv=True,
        trim_right_ratio=0.5,
        normalize=True,
        use_conv_shortcut=True,
        pad_mode="constant",
    ),
}


def _randomize(model, torch, seed: int) -> None:
    """Re-randomise every parameter and codebook; weight-norm magnitudes stay positive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("codebook.embed"):
                b.copy_(torch.randn(b.shape, generator=gen))


def _hub_spelling(weights: dict) -> dict:
    """The older ``weight_g``/``weight_v`` spelling that published checkpoints use."""
    out = {}
    for k, v in weights.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        out[k.replace(".parametrizations.weight.original1", ".weight_v")] = v
    return out


@pytest.fixture(scope="module")
def codecs(transformers_ref, torch_ref, tmp_path_factory):
    """{variant: (reference torch model, our model, PyTorch-format weights as numpy)}."""
    from safetensors.numpy import load_file

    out = {}
    for seed, (name, kwargs) in enumerate(VARIANTS.items()):
        ref = transformers_ref.EncodecModel(transformers_ref.EncodecConfig(**kwargs)).eval()
        _randomize(ref, torch_ref, seed)
        path = tmp_path_factory.mktemp(f"encodec_{name}")
        ref.save_pretrained(path)
        weights = load_file(str(path / "model.safetensors"))
        config = EncodecConfig.from_dict(ref.config.to_dict())
        ours = Encodec.from_weights(config, {k: mx.array(v) for k, v in weights.items()})
        out[name] = (ref, ours, weights)
    return out


@pytest.fixture(scope="module")
def mlx_codecs():
    """{variant: our model with MLX's random initialisation and random codebooks} (no reference needed)."""
    mx.random.seed(0)
    out = {}
    for name, kwargs in VARIANTS.items():
        model = Encodec(EncodecConfig(**kwargs))
        for layer in model.quantizer.layers:
            layer.codebook.embed = mx.random.normal(layer.codebook.embed.shape)
        mx.eval(model.parameters())
        out[name] = model
    return out


def _codes(variant: str, batch: int, frames: int, seed: int) -> np.ndarray:
    size = VARIANTS[variant]["codebook_size"]
    k = 4 if variant == "musicgen" else 5
    return np.random.default_rng(seed).integers(0, size, (batch, k, frames)).astype(np.int64)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_config_from_dict():
    hf_32k = dict(
        model_type="encodec",
        sampling_rate=32000,
        audio_channels=1,
        num_filters=64,
        upsampling_ratios=[8, 5, 4, 4],
        hidden_size=128,
        codebook_size=2048,
        target_bandwidths=[2.2],
        use_causal_conv=False,
        normalize=False,
        frame_rate=50,
        architectures=["EncodecModel"],
    )
    cfg = EncodecConfig.from_dict(hf_32k)
    assert (cfg.hop_length, cfg.frame_rate, cfg.num_quantizers) == (640, 50, 4)
    assert cfg.num_codebooks_for_bandwidth() == 4 and cfg.codebook_dim == 128
    with pytest.raises(ValueError, match="time_group_norm"):
        EncodecConfig.from_dict({**hf_32k, "norm_type": "time_group_norm"})
    with pytest.raises(ValueError, match="chunk"):
        EncodecConfig.from_dict({**hf_32k, "chunk_length_s": 1.0, "overlap": 0.01})
    with pytest.raises(ValueError, match="bandwidth"):
        cfg.num_codebooks_for_bandwidth(6.0)


def test_sanitize_keys_and_layouts(codecs):
    ref, ours, weights = codecs["musicgen"]
    assert any(".parametrizations.weight.original0" in k for k in weights)
    extra = {
        "encoder.layers.0.stride": mx.array(1),
        "encoder.layers.0.padding_total": mx.array(6),
    }  # old exports
    sanitized = Encodec.sanitize({**{k: mx.array(v) for k, v in weights.items()}, **extra})
    params = dict(_flatten(ours.parameters()))
    assert set(sanitized) == set(params)
    # the first upsampling layer of the decoder is a transposed convolution: torch (in, out, K)
    up = ref.decoder.layers[3].conv
    torch_w = up.weight.detach().numpy()
    assert torch_w.shape[0] == up.in_channels
    np.testing.assert_allclose(
        np.array(sanitized["decoder.layers.3.conv.weight"]), torch_w.transpose(1, 2, 0), 1e-6
    )
    first = ref.decoder.layers[0].conv.weight.detach().numpy()
    np.testing.assert_allclose(
        np.array(sanitized["decoder.layers.0.conv.weight"]), first.transpose(0, 2, 1), 1e-6
    )
    # the older spelling gives the same parameters
    hub = Encodec.sanitize({k: mx.array(v) for k, v in _hub_spelling(weights).items()})
    assert any(k.endswith(".weight_g") for k in _hub_spelling(weights))
    assert set(hub) == set(sanitized)
    for k in hub:
        np.testing.assert_array_equal(np.array(hub[k]), np.array(sanitized[k]))


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


@pytest.mark.parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decode_matches_reference_with_both_conv_paths(codecs, torch_ref, variant):
    ref, ours, _ = codecs[variant]
    codes = _codes(variant, batch=2, frames=13, seed=1)
    with torch_ref.no_grad():
        expected = ref.decode(torch_ref.from_numpy(codes)[None], [None])[0].numpy()
    results = {}
    for impl in ("native", "matmul"):
        with conv.implementation(impl):
            results[impl] = np.array(ours.decode(mx.array(codes)))
        assert (
            results[impl].shape
            == expected.shape
            == (2, VARIANTS[variant]["audio_channels"], 13 * ours.config.hop_length)
        )
        assert _rel(results[impl], expected) < 1e-5, (impl, _rel(results[impl], expected))
    assert _rel(results["matmul"], results["native"]) < 1e-5
    streamed, _ = _stream(ours, codes, 4)
    assert _rel(streamed, expected) < 1e-5


@pytest.mark.parity
def test_decode_from_hub_spelling_and_tiny_lengths(codecs, torch_ref):
    ref, _, weights = codecs["musicgen"]
    ours = Encodec.from_weights(ref_config(ref), {k: mx.array(v) for k, v in _hub_spelling(weights).items()})
    for frames in (
        1,
        2,
        4,
    ):  # shorter than the first convolution's padding: the reference's zero-extended reflect
        codes = _codes("musicgen", batch=1, frames=frames, seed=frames)
        with torch_ref.no_grad():
            expected = ref.decode(torch_ref.from_numpy(codes)[None], [None])[0].numpy()
        assert _rel(np.array(ours.decode(mx.array(codes))), expected) < 1e-5


def ref_config(ref) -> EncodecConfig:
    return EncodecConfig.from_dict(ref.config.to_dict())


@pytest.mark.parity
def test_encode_matches_reference(codecs, torch_ref):
    ref, ours, _ = codecs["musicgen"]
    audio = (
        np.random.default_rng(2).standard_normal((2, 1, 203)).astype(np.float32)
    )  # not a multiple of the hop
    with torch_ref.no_grad():
        expected = ref.encode(torch_ref.from_numpy(audio))[0][0].numpy()
    codes = np.array(ours.encode(mx.array(audio)))
    assert codes.shape == expected.shape == (2, 4, math.ceil(203 / 8))
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(np.array(ours.encode(mx.array(audio), num_codebooks=2)), expected[:, :2])


@pytest.mark.parity
def test_encode_decode_with_normalisation_matches_reference(codecs, torch_ref):
    ref, ours, _ = codecs["causal"]
    audio = 0.3 * np.random.default_rng(3).standard_normal((2, 2, 150)).astype(np.float32)
    for bandwidth, k in ((None, 2), (80.0, 5)):
        with torch_ref.no_grad():
            frames, scales, _ = ref.encode(
                torch_ref.from_numpy(audio), bandwidth=bandwidth, return_dict=False
            )
            expected_audio = ref.decode(frames, scales)[0].numpy()
        codes, scale = ours.encode_with_scale(mx.array(audio), bandwidth=bandwidth)
        assert codes.shape == (2, k, math.ceil(150 / 6))
        np.testing.assert_array_equal(np.array(codes), frames[0].numpy())
        np.testing.assert_allclose(np.array(scale), scales[0].numpy(), rtol=1e-5)
        decoded = np.array(ours.decode(codes, scale))
        assert _rel(decoded, expected_audio) < 1e-5


def _stream(model: Encodec, codes: np.ndarray, block: int, scale=None) -> tuple[np.ndarray, list[int]]:
    dec = EncodecStreamDecoder(model, scale=scale)
    parts = []
    for start in range(0, codes.shape[2], block):
        parts.append(np.array(dec.push(mx.array(codes[:, :, start : start + block]))))
    parts.append(np.array(dec.flush()))
    return np.concatenate(parts, axis=2), [p.shape[2] for p in parts]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stream_decoder_equals_batch_decode(mlx_codecs, variant):
    ours = mlx_codecs[variant]
    codes = _codes(variant, batch=2, frames=17, seed=4)
    scale = mx.array([[0.5], [2.0]]) if variant == "causal" else None
    full = np.array(ours.decode(mx.array(codes), scale))
    hop = ours.config.hop_length
    for block in (1, 2, 3, 7, 17):
        streamed, sizes = _stream(ours, codes, block, scale)
        assert streamed.shape == full.shape
        assert _rel(streamed, full) < 1e-5, (block, _rel(streamed, full))
        # it really streams: only the look-ahead (a few frames, whatever the total) is left for flush()
        assert sizes[-1] <= 6 * hop, sizes
    for frames in (1, 2, 3, 4):  # tiny totals: the reflect padding of the whole (short) signal
        short = codes[:, :, :frames]
        streamed, _ = _stream(ours, short, 1, scale)
        np.testing.assert_allclose(
            streamed, np.array(ours.decode(mx.array(short), scale)), rtol=1e-5, atol=1e-6
        )


def test_stream_decoder_misuse(mlx_codecs):
    ours = mlx_codecs["musicgen"]
    dec = EncodecStreamDecoder(ours)
    with pytest.raises(ValueError):
        dec.push(mx.zeros((1, 4, 0), dtype=mx.int32))
    dec.push(mx.zeros((1, 4, 2), dtype=mx.int32))
    assert dec.flush().shape == (1, 1, 2 * ours.config.hop_length)
    with pytest.raises(RuntimeError):
        dec.push(mx.zeros((1, 4, 1), dtype=mx.int32))
