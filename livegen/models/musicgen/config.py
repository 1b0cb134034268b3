"""MusicGen configuration, read from a Hugging Face ``config.json`` (model_type musicgen / musicgen_melody).

The checkpoint holds three sub-configs: ``text_encoder`` (T5), ``audio_encoder`` (EnCodec 32 kHz) and
``decoder`` (the codebook language model). Only the decoder and the top-level fields are parsed here;
the T5 and EnCodec sub-configs are kept as raw dicts for their own ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class DecoderConfig:
    """The MusicGen decoder (``MusicgenDecoderConfig`` / ``MusicgenMelodyDecoderConfig``)."""

    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    num_hidden_layers: int = 24
    ffn_dim: int = 4096
    num_attention_heads: int = 16
    activation_function: str = "gelu"
    hidden_size: int = 1024
    num_codebooks: int = 4
    audio_channels: int = 1
    pad_token_id: int = 2048
    bos_token_id: int = 2048
    cross_attention_hidden_size: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        return cls(**_known(cls, d))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class MusicGenConfig:
    """Top-level MusicGen / MusicGen-Melody config.

    ``decoder_start_token_id`` (the BOS fed at step 0 and used to fill the delay pattern) and
    ``pad_token_id`` come from ``generation_config.json`` when present, otherwise from the decoder.
    """

    model_type: str = "musicgen"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    audio_encoder: dict[str, Any] = field(default_factory=dict)
    num_chroma: int = 12
    chroma_length: int = 235
    decoder_start_token_id: int = 2048
    pad_token_id: int = 2048
    guidance_scale: float = 3.0
    top_k: int = 250
    sampling_rate: int = 32000
    frame_rate: int = 50

    @classmethod
    def from_dict(cls, d: dict[str, Any], generation_config: dict[str, Any] | None = None) -> MusicGenConfig:
        model_type = d.get("model_type", "musicgen")
        if model_type not in ("musicgen", "musicgen_melody"):
            raise ValueError(f"not a MusicGen config (model_type {model_type!r})")
        dec = DecoderConfig.from_dict(d.get("decoder", {}))
        if dec.audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {dec.audio_channels}")
        gen = generation_config or {}
        audio = dict(d.get("audio_encoder", {}))
        rate = int(audio.get("sampling_rate", 32000))
        hop = 1
        for r in audio.get("upsampling_ratios", [8, 5, 4, 4]):
            hop *= int(r)
        start = gen.get("decoder_start_token_id", d.get("decoder_start_token_id", dec.bos_token_id))
        pad = gen.get("pad_token_id", d.get("pad_token_id", dec.pad_token_id))
        return cls(
            model_type=model_type,
            decoder=dec,
            text_encoder=dict(d.get("text_encoder", {})),
            audio_encoder=audio,
            num_chroma=int(d.get("num_chroma", 12)),
            chroma_length=int(d.get("chroma_length", 235)),
            decoder_start_token_id=int(start if start is not None else dec.bos_token_id),
            pad_token_id=int(pad if pad is not None else dec.pad_token_id),
            guidance_scale=float(gen.get("guidance_scale") or 3.0),
            top_k=int(gen.get("top_k") or 250),
            sampling_rate=rate,
            frame_rate=max(1, math.ceil(rate / hop)),
        )

    @property
    def is_melody(self) -> bool:
        return self.model_type == "musicgen_melody"

    @property
    def num_codebooks(self) -> int:
        return self.decoder.num_codebooks

    @property
    def audio_channels(self) -> int:
        return self.decoder.audio_channels

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.get("d_model", self.text_encoder.get("hidden_size", 768)))

    @property
    def has_enc_to_dec_proj(self) -> bool:
        """transformers adds ``enc_to_dec_proj`` when the T5 width differs from the decoder's."""
        if self.is_melody:
            return self.text_hidden_size != self.decoder.hidden_size
        return (
            self.text_hidden_size != self.decoder.hidden_size
            and self.decoder.cross_attention_hidden_size is None
        )

    @property
    def has_audio_enc_to_dec_proj(self) -> bool:
        return self.is_melody and self.num_chroma != self.decoder.hidden_size
