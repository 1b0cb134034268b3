"""Oobleck VAE, Stable Audio's autoencoder ("pretransform"), in MLX.

Mirrors ``stable_audio_tools.models.autoencoders`` (OobleckEncoder/OobleckDecoder with
weight-normed convolutions and SnakeBeta or ELU activations) and the VAE bottleneck.
Internally everything is NLC (``[batch, time, channels]``); the ``*_numpy`` methods take and
return the reference layout ``[batch, channels, time]``.

Module and parameter names follow the reference ``state_dict`` (``encoder.layers.N...``), so a
checkpoint needs only ``sanitize`` (weight norm fused, convolution weights transposed) to load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from livegen.models.conv import conv1d, conv_transpose1d, polyphase_weight, use_matmul

CHECKPOINT_PREFIX = "pretransform.model."
# Largest full-rate activation of one CPU decode tile (see AudioAutoencoder.tile_latents).
DECODE_TILE_BYTES = 16 * 1024 * 1024


def _known(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in params.items() if k in names}


@dataclass
class OobleckConfig:
    """One ``encoder`` or ``decoder`` entry of a Stable Audio ``model_config.json``."""

    channels: int = 128
    c_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    strides: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    latent_dim: int = 32
    in_channels: int = 2  # encoder only
    out_channels: int = 2  # decoder only
    use_snake: bool = False
    final_tanh: bool = True  # decoder only
    antialias_activation: bool = False
    use_nearest_upsample: bool = False

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> OobleckConfig:
        """Accepts either the inner ``config`` dict or the ``{"type": "oobleck", "config": {...}}``
        wrapper. Unknown keys are ignored; unsupported options raise ``ValueError``."""
        if "config" in params and isinstance(params["config"], dict):
            kind = params.get("type", "oobleck")
            if kind != "oobleck":
                raise ValueError(f"unsupported autoencoder encoder/decoder type {kind!r} (only 'oobleck')")
            params = params["config"]
        config = cls(**_known(cls, params))
        config.c_mults = list(config.c_mults)
        config.strides = list(config.strides)
        if config.antialias_activation:
            raise ValueError("Oobleck antialias_activation=True (alias-free activations) is not supported")
        if config.use_nearest_upsample:
            raise ValueError("Oobleck use_nearest_upsample=True is not supported")
        if len(config.c_mults) != len(config.strides):
            raise ValueError(f"Oobleck c_mults {config.c_mults} and strides {config.strides} differ in size")
        if any(s < 1 for s in config.strides) or config.channels < 1 or config.latent_dim < 1:
            raise ValueError("Oobleck channels, latent_dim and strides must be positive")
        return config


@dataclass
class AutoencoderConfig:
    """``model_config["model"]["pretransform"]["config"]`` of a Stable Audio model."""

    encoder: OobleckConfig
    decoder: OobleckConfig
    latent_dim: int = 64
    downsampling_ratio: int = 2048
    io_channels: int = 2
    bottleneck: str | None = "vae"

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> AutoencoderConfig:
        if "encoder" not in params or "decoder" not in params:
            raise ValueError("autoencoder config needs 'encoder' and 'decoder' entries")
        bottleneck = params.get("bottleneck")
        kind = bottleneck.get("type") if isinstance(bottleneck, dict) else bottleneck
        if kind not in ("vae", None):
            raise ValueError(f"unsupported autoencoder bottleneck {kind!r} (only 'vae' or none)")
        rest = _known(cls, {k: v for k, v in params.items() if k not in ("encoder", "decoder", "bottleneck")})
        config = cls(
            encoder=OobleckConfig.from_dict(params["encoder"]),
            decoder=OobleckConfig.from_dict(params["decoder"]),
            bottleneck=kind,
            **rest,
        )
        config.validate()
        return config

    def validate(self) -> None:
        expect = 2 * self.latent_dim if self.bottleneck == "vae" else self.latent_dim
        if self.encoder.latent_dim != expect:
            raise ValueError(
                f"encoder latent_dim {self.encoder.latent_dim} != {expect} for bottleneck {self.bottleneck}"
            )
        if self.decoder.latent_dim != self.latent_dim:
            raise ValueError(f"decoder latent_dim {self.decoder.latent_dim} != latent_dim {self.latent_dim}")
        for name, part in (("encoder", self.encoder), ("decoder", self.decoder)):
            ratio = math.prod(part.strides)
            if ratio != self.downsampling_ratio:
                raise ValueError(
                    f"{name} strides multiply to {ratio}, not downsampling_ratio {self.downsampling_ratio}"
                )
        if self.encoder.in_channels != self.io_channels or self.decoder.out_channels != self.io_channels:
            raise ValueError(
                f"encoder in_channels / decoder out_channels must equal io_channels {self.io_channels}"
            )


# ----------------------------------------------------------------------------- layers


class Conv1d(nn.Module):
    """Weight-normed (fused at load) convolution; weight ``(C_out, K, C_in)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        scale = 1.0 / math.sqrt(c_in * kernel)
        self.weight = mx.random.uniform(-scale, scale, (c_out, kernel, c_in))
        if bias:
            self.bias = mx.zeros((c_out,))
        self.stride, self.dilation, self.padding = stride, dilation, padding

    def __call__(self, x: mx.array) -> mx.array:
        bias = self.bias if "bias" in self else None
        return conv1d(x, self.weight, bias, stride=self.stride, dilation=self.dilation, padding=self.padding)

    @property
    def span(self) -> int:
        return self.dilation * (self.weight.shape[1] - 1)


class ConvTranspose1d(nn.Module):
    """Weight-normed transposed convolution; weight ``(C_out, K, C_in)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int = 0):
        super().__init__()
        scale = 1.0 / math.sqrt(c_out * kernel)
        self.weight = mx.random.uniform(-scale, scale, (c_out, kernel, c_in))
        self.bias = mx.zeros((c_out,))
        self.stride, self.padding = stride, padding

    def polyphase(self) -> mx.array:
        """``polyphase_weight(weight, stride)``, cached outside the parameter tree and recomputed
        whenever a new weight array is loaded."""
        cached = self.__dict__.get("_polyphase")
        if cached is None or cached[0] is not self.weight:
            cached = (self.weight, polyphase_weight(self.weight, self.stride))
            object.__setattr__(self, "_polyphase", cached)
        return cached[1]

    def __call__(self, x: mx.array) -> mx.array:
        polyphase = self.polyphase() if use_matmul(transposed=True) else None
        return conv_transpose1d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                polyphase=polyphase)


# pi split so that n * _PI_A and n * _PI_B are exact in float32 for |n| < 2**12 (Cody-Waite).
_PI_A, _PI_B, _PI_C = 3.140625, 0.0009670257568359375, 6.2771141529083251953e-07
_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23: x + M - M rounds x to an integer in float32
_SIN_COEFFS = (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800)


def _sin_squared(y: mx.array) -> mx.array:
    """sin(y)^2 from multiplies and adds only (abs. error < 5e-7 for |y| < 2000, like mx.sin).

    MLX's CPU ``sin`` is a scalar loop (~10x slower than this once fused); sin^2 has period pi, so
    reduce to ``r = y - n pi`` in [-pi/2, pi/2] and use the degree-11 Taylor polynomial. ``n`` is
    rounded by adding and subtracting 1.5 * 2^23 (exact round-half-even for |y / pi| < 2^22): plain
    adds compile to vector code, ``round`` to a libm call per element (1.8x slower here)."""
    n = (y * (1 / math.pi) + _ROUND_MAGIC) - _ROUND_MAGIC
    r = y - n * _PI_A
    r = r - n * _PI_B
    r = r - n * _PI_C
    r2 = r * r
    c1, c3, c5, c7, c9 = _SIN_COEFFS
    p = (((c9 * r2 + c7) * r2 + c5) * r2 + c3) * r2 + c1
    s = r + r * r2 * p
    return s * s


@mx.compile
def _snake_beta(x: mx.array, alpha: mx.array, inv_beta: mx.array) -> mx.array:
    return x + inv_beta * _sin_squared(x * alpha)


class SnakeBeta(nn.Module):
    """SnakeBeta with log-scale parameters: ``x + 1 / (e^beta + 1e-9) * sin(x e^alpha)^2``."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = mx.zeros((channels,))
        self.beta = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        # The per-channel exponentials stay outside the fused kernel (else computed per element).
        alpha = mx.exp(self.alpha.astype(mx.float32))
        inv_beta = 1.0 / (mx.exp(self.beta.astype(mx.float32)) + 1e-9)
        if x.dtype == mx.float32:
            return _snake_beta(x, alpha, inv_beta)
        # The range reduction needs float32 (n * pi is not exact in half precision).
        return _snake_beta(x.astype(mx.float32), alpha, inv_beta).astype(x.dtype)


def _activation(use_snake: bool, channels: int) -> nn.Module:
    return SnakeBeta(channels) if use_snake else nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, use_snake: bool):
        super().__init__()
        self.layers = [
            _activation(use_snake, channels),
            Conv1d(channels, channels, 7, dilation=dilation, padding=dilation * 3),
            _activation(use_snake, channels),
            Conv1d(channels, channels, 1),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + y


class EncoderBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, use_snake: bool):
        super().__init__()
        self.layers = [
            ResidualUnit(c_in, 1, use_snake),
            ResidualUnit(c_in, 3, use_snake),
            ResidualUnit(c_in, 9, use_snake),
            _activation(use_snake, c_in),
            Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, use_snake: bool):
        super().__init__()
        self.layers = [
            _activation(use_snake, c_in),
            ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(c_out, 1, use_snake),
            ResidualUnit(c_out, 3, use_snake),
            ResidualUnit(c_out, 9, use_snake),
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class OobleckEncoder(nn.Module):
    """Audio ``[B, N, in_channels]`` -> ``[B, N / prod(strides), latent_dim]``."""

    def __init__(self, config: OobleckConfig):
        super().__init__()
        mults = [1, *config.c_mults]
        ch = config.channels
        self.layers = [Conv1d(config.in_channels, mults[0] * ch, 7, padding=3)]
        for i, stride in enumerate(config.strides):
            self.layers.append(EncoderBlock(mults[i] * ch, mults[i + 1] * ch, stride, config.use_snake))
        self.layers.append(_activation(config.use_snake, mults[-1] * ch))
        self.layers.append(Conv1d(mults[-1] * ch, config.latent_dim, 3, padding=1))

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class OobleckDecoder(nn.Module):
    """Latents ``[B, L, latent_dim]`` -> audio ``[B, L * prod(strides), out_channels]``."""

    def __init__(self, config: OobleckConfig):
        super().__init__()
        mults = [1, *config.c_mults]
        ch = config.channels
        self.layers = [Conv1d(config.latent_dim, mults[-1] * ch, 7, padding=3)]
        for i in range(len(config.strides), 0, -1):
            block = DecoderBlock(mults[i] * ch, mults[i - 1] * ch, config.strides[i - 1], config.use_snake)
            self.layers.append(block)
        self.layers.append(_activation(config.use_snake, mults[0] * ch))
        self.layers.append(Conv1d(mults[0] * ch, config.out_channels, 7, padding=3, bias=False))
        self.layers.append(nn.Tanh() if config.final_tanh else nn.Identity())
        self.upsampling = math.prod(config.strides)

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x

    def lookahead_latents(self) -> int:
        """Latent frames after a position that its decoded samples depend on: once ``n + lookahead``
        latents are known, the audio of the first ``n`` is final."""
        ahead = 0  # samples needed after the current layer's output position, at its input rate
        for layer in reversed(self.layers):
            ahead = _lookahead(layer, ahead)
        return ahead


def _lookahead(layer: nn.Module, ahead: int) -> int:
    """Input samples needed past the input aligned with an output position, given ``ahead``
    output samples needed past that position."""
    if isinstance(layer, Conv1d):
        if layer.stride != 1:
            raise ValueError("strided convolution in a decoder")
        return ahead + layer.span - layer.padding
    if isinstance(layer, ConvTranspose1d):  # output n reads inputs i <= (n + padding) / stride
        return -(-(ahead + layer.padding) // layer.stride)
    if isinstance(layer, ResidualUnit | DecoderBlock):
        for inner in reversed(layer.layers):
            ahead = _lookahead(inner, ahead)
        return ahead
    return ahead  # pointwise activations


# ----------------------------------------------------------------------------- autoencoder


class AudioAutoencoder(nn.Module):
    """Oobleck encoder + VAE bottleneck + Oobleck decoder (NLC mx.arrays)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = OobleckEncoder(config.encoder)
        self.decoder = OobleckDecoder(config.decoder)

    @property
    def downsampling_ratio(self) -> int:
        return self.config.downsampling_ratio

    def encode(self, audio: mx.array) -> mx.array:
        """``[B, N, io_channels]`` -> latents ``[B, N / ratio, latent_dim]`` (the VAE mean, no sampling)."""
        h = self.encoder(audio)
        if self.config.bottleneck == "vae":
            h = h[..., : self.config.latent_dim]
        return h

    def decode(self, latents: mx.array) -> mx.array:
        """``[B, L, latent_dim]`` -> audio ``[B, L * ratio, io_channels]``.

        On the CPU a long input is decoded in tiles through the exact streaming decoder (see
        ``tile_latents``); the result equals the one-shot decode up to float rounding."""
        tile = self.tile_latents(latents.shape[0])
        if tile is None or latents.shape[1] <= tile:
            return self.decoder(latents)
        return mx.concatenate(list(self.decode_chunks(latents, chunk=tile)), axis=1)

    def tile_latents(self, batch: int = 1) -> int | None:
        """Latent frames per tile of the CPU decode, or None (one shot: on a GPU, and in the daemon).

        The full-rate layers' activations (``batch x tile x ratio x channels`` floats) are kept
        within ``DECODE_TILE_BYTES``, below MLX's CPU buffer cache (32 MB by default): arrays that
        fit are recycled from the cache, larger ones get fresh pages every time, which makes the
        element-wise layers several times slower. Full-size Stable Audio small, 256 latents, 1 BLAS
        thread: 18.8 s one shot, 11.8 s in tiles of 16 (the streaming decoder computes every sample
        once, so tiles cost no recomputation).

        The daemon (``livegen.device.realtime()``) decodes in one shot: the Python-side work
        between tiles (mostly releasing the streaming decoder's state) held the GIL for 20-90 ms at
        a time on the CPU test machine (one shot: at most 4 ms), long enough for the audio
        callback, which needs the GIL, to miss its 5.8 ms period."""
        from livegen import device

        if mx.default_device().type != mx.DeviceType.cpu or device.realtime():
            return None
        dec = self.config.decoder
        per_latent = batch * self.decoder.upsampling * dec.channels * 4
        return max(1, DECODE_TILE_BYTES // per_latent)

    def decode_chunks(
        self, latents: mx.array, chunk: int = 32, overlap: int | None = None
    ) -> Iterator[mx.array]:
        """Decode in a stream, yielding evaluated consecutive audio pieces of ``chunk`` latent
        frames each (``chunk * ratio`` samples; the last piece holds the rest).

        The decoder runs statefully (``DecoderStream``): every sample is computed once and the
        concatenated pieces equal ``decode(latents)`` up to float rounding, whatever ``overlap``.
        ``overlap`` (default ``decoder.lookahead_latents()``, the decoder's look-ahead) is how many
        latents past the first chunk are decoded before the first piece: with the default the
        first piece is ready after decoding only ``chunk + overlap`` latents; then each further
        ``chunk`` latents give the next piece.
        """
        if chunk < 1:
            raise ValueError("chunk must be at least 1 latent frame")
        if overlap is None:
            overlap = self.decoder.lookahead_latents()
        if overlap < 0:
            raise ValueError("overlap must be >= 0")
        length = latents.shape[1]
        piece = chunk * self.decoder.upsampling
        from livegen.models.stable_audio.vae_stream import DecoderStream

        stream = DecoderStream(self.decoder)
        pending: mx.array | None = None
        start = 0
        while start < length:
            stop = min(length, start + chunk + (overlap if start == 0 else 0))
            audio = stream.push(latents[:, start:stop], final=stop == length)
            start = stop
            if audio is not None:
                pending = audio if pending is None else mx.concatenate([pending, audio], axis=1)
            while pending is not None and (pending.shape[1] >= piece or (start == length and pending.shape[1])):
                out, pending = pending[:, :piece], pending[:, piece:]
                mx.eval(out, pending)
                yield out

    # numpy helpers in the reference layout [B, C, T] -----------------------------------------

    def encode_numpy(self, audio: np.ndarray) -> np.ndarray:
        """``[B, io_channels, N]`` float audio -> ``[B, latent_dim, N / ratio]`` latents."""
        out = self.encode(mx.array(np.asarray(audio, dtype=np.float32)).transpose(0, 2, 1))
        return np.array(out.transpose(0, 2, 1))

    def decode_numpy(self, latents: np.ndarray) -> np.ndarray:
        """``[B, latent_dim, L]`` -> ``[B, io_channels, L * ratio]`` audio."""
        out = self.decode(mx.array(np.asarray(latents, dtype=np.float32)).transpose(0, 2, 1))
        return np.array(out.transpose(0, 2, 1))

    def decode_chunks_numpy(self, latents: np.ndarray, chunk: int = 32,
                            overlap: int | None = None) -> Iterator[np.ndarray]:
        """``decode_chunks`` on ``[B, latent_dim, L]``, yielding ``[B, io_channels, n]`` pieces."""
        x = mx.array(np.asarray(latents, dtype=np.float32)).transpose(0, 2, 1)
        for piece in self.decode_chunks(x, chunk=chunk, overlap=overlap):
            yield np.array(piece.transpose(0, 2, 1))

    # weights ----------------------------------------------------------------------------------

    @staticmethod
    def sanitize(weights: dict[str, Any]) -> dict[str, mx.array]:
        """Reference autoencoder ``state_dict`` keys (``encoder.layers...``, ``decoder.layers...``;
        a leading ``pretransform.model.`` is stripped, other keys are dropped) -> this module's keys.

        Weight norm (``weight_g``/``weight_v``, or ``parametrizations.weight.original0/1``) is fused
        as torch's ``weight_norm(dim=0)``: ``w = g * v / ||v||`` with the norm over all dims but 0;
        Conv1d weights ``(out, in, K)`` and ConvTranspose1d weights ``(in, out, K)`` become
        ``(out, K, in)``.
        """
        groups: dict[str, dict[str, mx.array]] = {}
        out: dict[str, mx.array] = {}
        for key, value in weights.items():
            if key.startswith(CHECKPOINT_PREFIX):
                key = key[len(CHECKPOINT_PREFIX):]
            if not key.startswith(("encoder.", "decoder.")):
                continue
            value = value if isinstance(value, mx.array) else mx.array(np.asarray(value))
            for suffix, part in _WEIGHT_PARTS:
                if key.endswith(suffix):
                    groups.setdefault(key[: -len(suffix)], {})[part] = value
                    break
            else:
                out[key] = value
        for module, parts in groups.items():
            if "weight" in parts:
                w = parts["weight"]
            elif "g" in parts and "v" in parts:
                g, v = parts["g"].astype(mx.float32), parts["v"].astype(mx.float32)
                norm = mx.sqrt(mx.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
                w = (g * v / norm).astype(parts["v"].dtype)
            else:
                raise ValueError(f"{module}: incomplete weight norm parameters {sorted(parts)}")
            if _TRANSPOSED.match(module):
                w = w.transpose(1, 2, 0)  # (in, out, K) -> (out, K, in)
            else:
                w = w.transpose(0, 2, 1)  # (out, in, K) -> (out, K, in)
            out[f"{module}.weight"] = w
        return out

    @classmethod
    def from_weights(
        cls, config: AutoencoderConfig | dict[str, Any], weights: dict[str, Any]
    ) -> AudioAutoencoder:
        """Build from a config (object or pretransform ``config`` dict) and a reference state dict
        (sanitized here, loaded strictly, evaluated)."""
        if isinstance(config, dict):
            config = AutoencoderConfig.from_dict(config)
        model = cls(config)
        model.load_weights(list(cls.sanitize(weights).items()), strict=True)
        mx.eval(model.parameters())
        return model


_WEIGHT_PARTS = (
    (".weight_g", "g"),
    (".weight_v", "v"),
    (".parametrizations.weight.original0", "g"),
    (".parametrizations.weight.original1", "v"),
    (".weight", "weight"),
)
# The upsampling layer of each DecoderBlock: decoder.layers.<block>.layers.1
_TRANSPOSED = re.compile(r"^decoder\.layers\.\d+\.layers\.1$")
