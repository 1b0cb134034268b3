"""Tiny random MusicGen checkpoints (mono, stereo, melody) in the real transformers on-disk format.

Only import from tests holding the ``transformers_ref`` fixture (torch/transformers are imported
lazily inside the functions). Every parameter and the EnCodec codebooks are re-randomised
(weight-norm magnitudes kept positive) so that a zero-initialised layer cannot hide a bug.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.models.t5_fixtures import make_tiny_tokenizer

CODEBOOK_SIZE = 32
TEXT_DIM = 48
HIDDEN = 32
CHROMA_LENGTH = 8


def randomize_(model, seed: int = 0) -> None:
    """Re-randomise every parameter (and the EnCodec codebooks) of a torch model in place."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "original0" in name or name.endswith("weight_g"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias") or "bias_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "shared" in name or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = math.prod(p.shape[1:]) if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("codebook.embed"):
                b.copy_(torch.randn(b.shape, generator=gen))


def tiny_configs(variant: str = "mono"):
    """(text_encoder, audio_encoder, decoder) transformers configs for a tiny model."""
    from transformers import EncodecConfig, MusicgenDecoderConfig, MusicgenMelodyDecoderConfig, T5Config

    tokenizer = make_tiny_tokenizer()
    t5 = T5Config(
        vocab_size=len(tokenizer) + 5,
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=3,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    # 32 kHz with a 16x hop: frame rate 2000 Hz, 4 codebooks of 32 entries (5 bits) -> 40 kbps
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        upsampling_ratios=[4, 4],
        hidden_size=16,
        codebook_size=CODEBOOK_SIZE,
        target_bandwidths=[40.0],
        num_lstm_layers=1,
        normalize=False,
        use_causal_conv=False,
        kernel_size=3,
        last_kernel_size=3,
        residual_kernel_size=3,
    )
    stereo = variant == "stereo"
    cls = MusicgenMelodyDecoderConfig if variant == "melody" else MusicgenDecoderConfig
    decoder = cls(
        vocab_size=CODEBOOK_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=CODEBOOK_SIZE,
        bos_token_id=CODEBOOK_SIZE,
        dropout=0.0,
        max_position_embeddings=128,
    )
    return t5, audio, decoder, tokenizer


def make_tiny_musicgen(directory: str | Path | None = None, variant: str = "mono", seed: int = 0):
    """A tiny random ``MusicgenForConditionalGeneration`` (or the melody model) and its tokenizer.

    ``variant``: "mono" (4 codebooks), "stereo" (8 interleaved L/R codebooks) or "melody".
    Saved with ``save_pretrained`` + tokenizer + generation_config.json when ``directory`` is given.
    """
    import torch
    from transformers import (
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    t5, audio, decoder, tokenizer = tiny_configs(variant)
    kwargs = dict(text_encoder=t5.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    torch.manual_seed(seed)
    if variant == "melody":
        config = MusicgenMelodyConfig(num_chroma=12, chroma_length=CHROMA_LENGTH, **kwargs)
        model = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(**kwargs)
        model = MusicgenForConditionalGeneration(config)
    model = model.float().eval()
    randomize_(model, seed)
    gen = model.generation_config
    gen.decoder_start_token_id = CODEBOOK_SIZE
    gen.pad_token_id = CODEBOOK_SIZE
    gen.bos_token_id = CODEBOOK_SIZE
    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        gen_file = directory / "generation_config.json"
        data = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
        data.update(
            decoder_start_token_id=CODEBOOK_SIZE,
            pad_token_id=CODEBOOK_SIZE,
            bos_token_id=CODEBOOK_SIZE,
            guidance_scale=3.0,
            top_k=250,
            do_sample=True,
        )
        gen_file.write_text(json.dumps(data, indent=2))
    return model, tokenizer


def full_size_state_shapes(variant: str) -> tuple[dict[str, tuple[int, ...]], dict]:
    """(key -> shape, config dict) of a real-size checkpoint, built on the ``meta`` device.

    ``variant``: "mono" (musicgen-small), "stereo" (musicgen-stereo-small), "melody" (musicgen-melody).
    """
    import torch
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=64,
        upsampling_ratios=[8, 5, 4, 4],
        hidden_size=128,
        codebook_size=2048,
        target_bandwidths=[2.2],
        num_lstm_layers=2,
        normalize=False,
        use_causal_conv=False,
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        compress=2,
        norm_type="weight_norm",
        pad_mode="reflect",
        trim_right_ratio=1.0,
        use_conv_shortcut=False,
    )
    if variant == "melody":
        dec = MusicgenMelodyDecoderConfig(
            vocab_size=2048,
            hidden_size=1536,
            num_hidden_layers=48,
            num_attention_heads=24,
            ffn_dim=6144,
            num_codebooks=4,
            audio_channels=1,
        )
        config = MusicgenMelodyConfig(
            text_encoder=t5.to_dict(),
            audio_encoder=audio.to_dict(),
            decoder=dec.to_dict(),
            num_chroma=12,
            chroma_length=235,
        )
        cls = MusicgenMelodyForConditionalGeneration
    else:
        stereo = variant == "stereo"
        dec = MusicgenDecoderConfig(
            vocab_size=2048,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            ffn_dim=4096,
            num_codebooks=8 if stereo else 4,
            audio_channels=2 if stereo else 1,
        )
        config = MusicgenConfig(
            text_encoder=t5.to_dict(), audio_encoder=audio.to_dict(), decoder=dec.to_dict()
        )
        cls = MusicgenForConditionalGeneration
    with torch.device("meta"):
        model = cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, config.to_dict()


def reference_generate(model, **kwargs):
    """``model.generate(**kwargs)`` returning ``(codes [B, K, T] numpy, audio [B, C, N] numpy)``.

    transformers returns only audio; the codes are captured where ``generate`` hands them to
    ``audio_encoder.decode`` (stereo: even codebooks, then odd ones).
    """
    import numpy as np
    import torch

    seen = []
    original = model.audio_encoder.decode

    def recording_decode(audio_codes, *args, **kw):
        seen.append(audio_codes[0].detach().numpy().copy())
        return original(audio_codes, *args, **kw)

    model.audio_encoder.decode = recording_decode
    try:
        with torch.no_grad():
            audio = model.generate(**kwargs)
    finally:
        del model.audio_encoder.decode
    if len(seen) == 1:
        codes = seen[0]
    else:
        left, right = seen
        codes = np.stack([left, right], axis=2).reshape(left.shape[0], -1, left.shape[-1])
    return codes.astype(np.int64), audio.detach().numpy()
