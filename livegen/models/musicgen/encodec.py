"""EnCodec (the audio codec under MusicGen) in MLX: SEANet encoder/decoder and residual VQ.

A port of transformers' ``EncodecModel`` (``models/encodec/modeling_encodec.py``): the same
module tree, so checkpoint keys map one to one (``encoder.layers.N...``, ``decoder.layers.N...``,
``quantizer.layers.N.codebook.embed``), weight norm fused at load, convolution weights in MLX
layout ``(C_out, K, C_in)``. Activations are kept as NLC (batch, time, channels) internally;
the public ``encode``/``decode`` use the reference's channels-first audio ``[B, C, N]``.
The streaming decoder is in ``encodec_stream.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn

from livegen.models import conv as fastconv

_PAD_MODES = ("reflect", "constant")


@dataclass
class EncodecConfig:
    """transformers' ``EncodecConfig`` fields (defaults are transformers' defaults, the 24 kHz model).

    MusicGen's codec (``facebook/encodec_32khz``): sampling_rate 32000, upsampling_ratios [8, 5, 4, 4],
    num_filters 64, hidden_size 128, codebook_size 2048, target_bandwidths [2.2] (4 codebooks at 50 Hz),
    use_causal_conv False, normalize False.
    """

    audio_channels: int = 1
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    hidden_size: int = 128
    sampling_rate: int = 24_000
    normalize: bool = False
    target_bandwidths: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0, 12.0, 24.0])
    use_conv_shortcut: bool = True
    chunk_length_s: float | None = None
    overlap: float | None = None

    def __post_init__(self) -> None:
        self.upsampling_ratios = [int(r) for r in self.upsampling_ratios]
        self.target_bandwidths = [float(b) for b in self.target_bandwidths]
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if self.norm_type != "weight_norm":
            raise ValueError(
                f"EnCodec norm_type {self.norm_type!r} is not supported (only 'weight_norm', which the "
                "24 kHz and 32 kHz models use; 'time_group_norm' belongs to the 48 kHz model)"
            )
        if self.chunk_length_s is not None:
            raise ValueError("chunked EnCodec (chunk_length_s set, the 48 kHz model) is not supported")
        if self.pad_mode not in _PAD_MODES:
            raise ValueError(
                f"EnCodec pad_mode {self.pad_mode!r} is not supported; expected one of {_PAD_MODES}"
            )
        if not (self.use_causal_conv or self.trim_right_ratio == 1.0):
            raise ValueError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        if 2 ** int(math.log2(self.codebook_size)) != self.codebook_size:
            raise ValueError("codebook_size must be a power of 2")

    @classmethod
    def from_dict(cls, params: dict) -> EncodecConfig:
        """Build from a transformers ``config.json`` dict (e.g. MusicGen's ``audio_encoder``); unknown keys
        (``model_type``, ``frame_rate`` which is derived, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    def num_codebooks_for_bandwidth(self, bandwidth: float | None = None) -> int:
        """The reference's ``get_num_quantizers_for_bandwidth``; ``None`` means its default bandwidth,
        ``target_bandwidths[0]``."""
        if bandwidth is None:
            bandwidth = self.target_bandwidths[0]
        if bandwidth not in self.target_bandwidths:
            raise ValueError(f"bandwidth {bandwidth} is not one of {self.target_bandwidths}")
        bw_per_q = math.log2(self.codebook_size) * self.frame_rate
        return int(max(1, math.floor(bandwidth * 1000 / bw_per_q)))


# ----------------------------------------------------------------------------------------------
# Layers


def _pad1d(x: mx.array, left: int, right: int, mode: str) -> mx.array:
    """NLC padding along time, the reference's ``_pad1d`` (reflect with extra zeros for tiny inputs)."""
    if left == 0 and right == 0:
        return x
    if mode != "reflect":
        return mx.pad(x, [(0, 0), (left, right), (0, 0)])
    length = x.shape[1]
    extra = 0
    max_pad = max(left, right)
    if length <= max_pad:
        extra = max_pad - length + 1
        x = mx.pad(x, [(0, 0), (0, extra), (0, 0)])
        length += extra
    parts = []
    if left:
        parts.append(x[:, 1 : left + 1][:, ::-1])
    parts.append(x)
    if right:
        parts.append(x[:, length - 1 - right : length - 1][:, ::-1])
    padded = mx.concatenate(parts, axis=1)
    return padded[:, : padded.shape[1] - extra] if extra else padded


class ELU(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return mx.where(x > 0, x, mx.exp(mx.minimum(x, 0.0)) - 1.0)


class EncodecConv1d(nn.Module):
    """Conv1d with the reference's asymmetric (or causal) padding; parameters under ``conv``."""

    def __init__(
        self,
        config: EncodecConfig,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, dilation=dilation)
        self.stride = stride
        self.dilation = dilation
        self.pad_mode = config.pad_mode
        self.kernel_eff = (kernel_size - 1) * dilation + 1
        self.padding_total = self.kernel_eff - stride
        if config.use_causal_conv:
            self.pad_left, self.pad_right = self.padding_total, 0
        else:
            self.pad_right = self.padding_total // 2
            self.pad_left = self.padding_total - self.pad_right

    def raw(self, x: mx.array) -> mx.array:
        """The convolution alone (no padding)."""
        return fastconv.conv1d(
            x, self.conv.weight, self.conv.bias, stride=self.stride, dilation=self.dilation
        )

    def __call__(self, x: mx.array) -> mx.array:
        length = x.shape[1]
        n_frames = math.ceil((length - self.kernel_eff + self.padding_total) / self.stride + 1) - 1
        extra = n_frames * self.stride + self.kernel_eff - self.padding_total - length
        return self.raw(_pad1d(x, self.pad_left, self.pad_right + extra, self.pad_mode))


class EncodecConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed like the reference; parameters under ``conv``."""

    def __init__(self, config: EncodecConfig, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride=stride)
        self.stride = stride
        padding_total = kernel_size - stride
        if config.use_causal_conv:
            self.trim_right = math.ceil(padding_total * config.trim_right_ratio)
        else:
            self.trim_right = padding_total // 2
        self.trim_left = padding_total - self.trim_right

    def raw(self, x: mx.array) -> mx.array:
        """The full transposed convolution, length ``(L - 1) * stride + K``."""
        return fastconv.conv_transpose1d(x, self.conv.weight, self.conv.bias, stride=self.stride)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.raw(x)
        return y[:, self.trim_left : y.shape[1] - self.trim_right]


class _LSTMWeights(nn.Module):
    """torch ``nn.LSTM`` parameters under their torch names (``weight_ih_l0``, ...)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        scale = 1.0 / math.sqrt(dim)
        for i in range(num_layers):
            for name, shape in (
                ("weight_ih", (4 * dim, dim)),
                ("weight_hh", (4 * dim, dim)),
                ("bias_ih", (4 * dim,)),
                ("bias_hh", (4 * dim,)),
            ):
                self[f"{name}_l{i}"] = mx.random.uniform(-scale, scale, shape)


LSTMState = list[tuple[mx.array, mx.array]]


def _recurrent(w: mx.array, h: mx.array) -> mx.array:
    """``h @ w.T`` for a small batch as matrix-vector products (MLX's CPU gemv is much faster than a
    (1, D) x (D, 4D) gemm here)."""
    if h.shape[0] > 4:
        return h @ w.T
    return mx.stack([w @ h[b] for b in range(h.shape[0])])


class EncodecLSTM(nn.Module):
    """Multi-layer LSTM over time with the skip connection ``y = lstm(x) + x``."""

    def __init__(self, config: EncodecConfig, dim: int):
        super().__init__()
        self.dim = dim
        self.lstm = _LSTMWeights(dim, config.num_lstm_layers)

    def step(self, x: mx.array, state: LSTMState | None = None) -> tuple[mx.array, LSTMState]:
        """x [B, T, D] -> (y [B, T, D], final (h, c) per layer); ``state`` None means zeros."""
        batch = x.shape[0]
        h_in = x
        new_state: LSTMState = []
        for i in range(self.lstm.num_layers):
            w_ih, w_hh = self.lstm[f"weight_ih_l{i}"], self.lstm[f"weight_hh_l{i}"]
            bias = self.lstm[f"bias_ih_l{i}"] + self.lstm[f"bias_hh_l{i}"]
            gates_x = h_in @ w_ih.T + bias
            if state is None:
                h = mx.zeros((batch, self.dim), dtype=x.dtype)
                c = mx.zeros((batch, self.dim), dtype=x.dtype)
            else:
                h, c = state[i]
            outputs = []
            for t in range(x.shape[1]):
                gates = gates_x[:, t] + _recurrent(w_hh, h)
                i_g, f_g, g_g, o_g = mx.split(gates, 4, axis=-1)
                c = mx.sigmoid(f_g) * c + mx.sigmoid(i_g) * mx.tanh(g_g)
                h = mx.sigmoid(o_g) * mx.tanh(c)
                outputs.append(h)
            h_in = mx.stack(outputs, axis=1)
            new_state.append((h, c))
        return h_in + x, new_state

    def __call__(self, x: mx.array) -> mx.array:
        return self.step(x)[0]


class EncodecResnetBlock(nn.Module):
    def __init__(self, config: EncodecConfig, dim: int, dilations: tuple[int, int]):
        super().__init__()
        hidden = dim // config.compress
        self.block = [
            ELU(),
            EncodecConv1d(config, dim, hidden, config.residual_kernel_size, dilation=dilations[0]),
            ELU(),
            EncodecConv1d(config, hidden, dim, 1, dilation=dilations[1]),
        ]
        self.shortcut = EncodecConv1d(config, dim, dim, 1) if config.use_conv_shortcut else None

    def residual(self, x: mx.array) -> mx.array:
        return x if self.shortcut is None else self.shortcut(x)

    def __call__(self, x: mx.array) -> mx.array:
        y = x
        for layer in self.block:
            y = layer(y)
        return self.residual(x) + y


class EncodecEncoder(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        layers: list[nn.Module] = [
            EncodecConv1d(config, config.audio_channels, config.num_filters, config.kernel_size)
        ]
        scaling = 1
        for ratio in reversed(config.upsampling_ratios):
            scale = scaling * config.num_filters
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, scale, (config.dilation_growth_rate**j, 1)))
            layers.append(ELU())
            layers.append(EncodecConv1d(config, scale, scale * 2, kernel_size=ratio * 2, stride=ratio))
            scaling *= 2
        layers.append(EncodecLSTM(config, scaling * config.num_filters))
        layers.append(ELU())
        layers.append(
            EncodecConv1d(config, scaling * config.num_filters, config.hidden_size, config.last_kernel_size)
        )
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class EncodecDecoder(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        scaling = 2 ** len(config.upsampling_ratios)
        layers: list[nn.Module] = [
            EncodecConv1d(config, config.hidden_size, scaling * config.num_filters, config.kernel_size),
            EncodecLSTM(config, scaling * config.num_filters),
        ]
        for ratio in config.upsampling_ratios:
            scale = scaling * config.num_filters
            layers.append(ELU())
            layers.append(
                EncodecConvTranspose1d(config, scale, scale // 2, kernel_size=ratio * 2, stride=ratio)
            )
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, scale // 2, (config.dilation_growth_rate**j, 1)))
            scaling //= 2
        layers.append(ELU())
        layers.append(
            EncodecConv1d(config, config.num_filters, config.audio_channels, config.last_kernel_size)
        )
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class _Codebook(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.embed = mx.zeros((config.codebook_size, config.codebook_dim))


class _VectorQuantization(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.codebook = _Codebook(config)

    def encode(self, x: mx.array) -> mx.array:
        """x [B, T, D] -> nearest codebook index [B, T] (the reference's distance formula)."""
        embed = self.codebook.embed
        dist = mx.sum(x * x, axis=-1, keepdims=True) - 2 * (x @ embed.T) + mx.sum(embed * embed, axis=-1)
        return mx.argmin(dist, axis=-1).astype(mx.int32)

    def decode(self, codes: mx.array) -> mx.array:
        return self.codebook.embed[codes]


class EncodecResidualVectorQuantizer(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.layers = [_VectorQuantization(config) for _ in range(config.num_quantizers)]

    def encode(self, x: mx.array, num_codebooks: int) -> mx.array:
        """x [B, T, D] -> codes [B, K, T]."""
        residual = x
        codes = []
        for layer in self.layers[:num_codebooks]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return mx.stack(codes, axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """codes [B, K, T] -> summed embeddings [B, T, D]."""
        if codes.shape[1] > len(self.layers):
            raise ValueError(f"{codes.shape[1]} codebooks given; this EnCodec has {len(self.layers)}")
        out = self.layers[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            out = out + self.layers[k].decode(codes[:, k])
        return out


# ----------------------------------------------------------------------------------------------
# Model


def _fuse_weight_norm(g: mx.array, v: mx.array) -> mx.array:
    axes = tuple(range(1, v.ndim))
    norm = mx.sqrt(mx.sum(v.astype(mx.float32) ** 2, axis=axes, keepdims=True))
    return (g.astype(mx.float32) * v.astype(mx.float32) / norm).astype(v.dtype)


_WN_SUFFIXES = {
    ".parametrizations.weight.original0": "g",
    ".parametrizations.weight.original1": "v",
    ".weight_g": "g",
    ".weight_v": "v",
}
# codebook EMA statistics, and the conv geometry buffers some older exports carry
_DROPPED = (".inited", ".cluster_size", ".embed_avg", ".padding_total", ".stride", ".kernel_size")


class Encodec(nn.Module):
    def __init__(self, config: EncodecConfig):
        super().__init__()
        self.config = config
        self.encoder = EncodecEncoder(config)
        self.decoder = EncodecDecoder(config)
        self.quantizer = EncodecResidualVectorQuantizer(config)

    # -- loading ---------------------------------------------------------------------------------

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """PyTorch (transformers) EnCodec weights -> this module's parameters.

        Keys are the checkpoint's without the ``audio_encoder.`` prefix MusicGen adds. Weight norm
        (``parametrizations.weight.original0/1`` as transformers 5 saves it, or ``weight_g/weight_v``)
        is fused, w = g v / ||v|| (norm over all dims but 0); Conv1d weights (out, in, K) and the
        decoder's ConvTranspose1d weights (in, out, K) go to MLX's (out, K, in); codebook EMA
        statistics are dropped. Expects PyTorch layout: do not run it twice on the same weights.
        """
        out: dict[str, mx.array] = {}
        pending: dict[str, dict[str, mx.array]] = {}
        for key, value in weights.items():
            if key.endswith(_DROPPED):
                continue
            for suffix, part in _WN_SUFFIXES.items():
                if key.endswith(suffix):
                    pending.setdefault(key[: -len(suffix)] + ".weight", {})[part] = value
                    break
            else:
                out[key] = value
        for key, parts in pending.items():
            if set(parts) != {"g", "v"}:
                raise ValueError(f"incomplete weight norm for {key}: have {sorted(parts)}")
            out[key] = _fuse_weight_norm(parts["g"], parts["v"])

        # Which decoder layers are transposed convolutions: the direct ``decoder.layers.N.conv``
        # entries other than the first and the last layer.
        direct = sorted(
            {
                int(k.split(".")[2])
                for k in out
                if k.startswith("decoder.layers.") and k.split(".")[3] == "conv"
            }
        )
        transposed = set(direct[1:-1])
        for key, value in list(out.items()):
            if not key.endswith(".conv.weight") or value.ndim != 3:
                continue
            parts = key.split(".")
            if parts[0] == "decoder" and int(parts[2]) in transposed and parts[3] == "conv":
                out[key] = value.transpose(1, 2, 0)
            else:
                out[key] = value.transpose(0, 2, 1)
        return out

    @classmethod
    def from_weights(cls, config: EncodecConfig, weights: dict[str, mx.array]) -> Encodec:
        """Build and load from PyTorch-format weights (strict: every parameter must be present)."""
        model = cls(config)
        model.load_weights(list(cls.sanitize(weights).items()), strict=True)
        mx.eval(model.parameters())
        return model

    # -- codec -----------------------------------------------------------------------------------

    def encode_with_scale(
        self, audio: mx.array, num_codebooks: int | None = None, bandwidth: float | None = None
    ) -> tuple[mx.array, mx.array | None]:
        """audio [B, C, N] -> (codes int32 [B, K, T], scale [B, 1] or None when ``normalize`` is off).

        K is ``num_codebooks`` if given, else the reference's count for ``bandwidth`` (default
        ``target_bandwidths[0]``: 4 for MusicGen's 32 kHz codec)."""
        if audio.ndim != 3 or audio.shape[1] != self.config.audio_channels:
            raise ValueError(f"expected audio [B, {self.config.audio_channels}, N], got {audio.shape}")
        k = num_codebooks if num_codebooks is not None else self.config.num_codebooks_for_bandwidth(bandwidth)
        if not 1 <= k <= len(self.quantizer.layers):
            raise ValueError(f"num_codebooks {k} is outside 1..{len(self.quantizer.layers)}")
        x = audio.transpose(0, 2, 1)
        scale = None
        if self.config.normalize:
            mono = mx.sum(x, axis=2, keepdims=True) / x.shape[2]
            scale = mx.sqrt(mx.mean(mono * mono, axis=1, keepdims=True)) + 1e-8
            x = x / scale
            scale = scale.reshape(-1, 1)
        return self.quantizer.encode(self.encoder(x), k), scale

    def encode(
        self, audio: mx.array, num_codebooks: int | None = None, bandwidth: float | None = None
    ) -> mx.array:
        """audio [B, C, N] -> codes int32 [B, K, T] (T = ceil(N / hop_length))."""
        return self.encode_with_scale(audio, num_codebooks, bandwidth)[0]

    def decode(self, codes: mx.array, scale: mx.array | None = None) -> mx.array:
        """codes [B, K, T] -> audio [B, C, T * hop_length] (``scale`` [B, 1] from ``encode_with_scale``)."""
        y = self.decoder(self.quantizer.decode(codes))
        if scale is not None:
            y = y * scale.reshape(-1, 1, 1)
        return y.transpose(0, 2, 1)
