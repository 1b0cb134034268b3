"""EnCodec (the audio codec under MusicGen) in MLX: SEANet encoder/decoder and residual VQ.

A port of transformers' ``EncodecModel`` (``models/encodec/modeling_encodec.py``): the same
module tree, so checkpoint keys map one to one (``encoder.layers.N...``, ``decoder.layers.N...``,
``quantizer.layers.N.codebook.embed``), weight norm fused at load, convolution weights in MLX
layout ``(C_out, K, C_in)``. Activations are kept as NLC (batch, time, channels) internally;
the public ``encode``/``decode`` use the reference's channels-first audio ``[B, C, N]``.

``EncodecStreamDecoder`` decodes codes block by block with exactly the batch result: every
convolution keeps just the left/right context it needs, the LSTM carries its state, and the
reflect padding at the two ends of the signal is applied where the reference applies it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
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


# ----------------------------------------------------------------------------------------------
# Streaming decoder


def _cat(a: mx.array | None, b: mx.array | None) -> mx.array | None:
    if a is None:
        return b
    if b is None:
        return a
    return mx.concatenate([a, b], axis=1)


class _StreamOp(ABC):
    """One stage of the streaming decoder: takes frames in, returns the outputs that are final."""

    @abstractmethod
    def push(self, x: mx.array) -> mx.array | None: ...

    def flush(self) -> mx.array | None:
        return None

    def state(self) -> list[mx.array]:
        return []


class _StreamPointwise(_StreamOp):
    def __init__(self, fn):
        self.fn = fn

    def push(self, x: mx.array) -> mx.array:
        return self.fn(x)


class _StreamConv(_StreamOp):
    """A stride-1 EncodecConv1d over a growing input: output j needs inputs j - pad_left ..
    j + pad_right; the ends are padded (reflect) exactly as the batch layer pads them.

    The weight is packed once for an unfold + matmul (a block then costs one GEMM, with no
    per-call weight reshuffle): make the stream decoder after the weights are loaded."""

    def __init__(self, layer: EncodecConv1d):
        if layer.stride != 1:
            raise ValueError("streaming supports stride-1 convolutions only")
        self.layer = layer
        self.left, self.right = layer.pad_left, layer.pad_right
        c_out, k, c_in = layer.conv.weight.shape
        self.taps = k
        self.w = mx.contiguous(layer.conv.weight.reshape(c_out, k * c_in).T)  # rows ordered (tap, channel)
        self.bias = layer.conv.bias
        mx.eval(self.w)
        self.buf: mx.array | None = (
            None  # inputs from global index (emitted - left) on; all before any output
        )
        self.received = 0
        self.emitted = 0

    def _pad(self, x: mx.array, left: int, right: int) -> mx.array:
        return _pad1d(x, left, right, self.layer.pad_mode)

    def _conv(self, x: mx.array) -> mx.array:
        d = self.layer.dilation
        n_out = x.shape[1] - (self.taps - 1) * d
        cols = (
            x
            if self.taps == 1
            else mx.concatenate([x[:, t * d : t * d + n_out] for t in range(self.taps)], -1)
        )
        return cols @ self.w + self.bias

    def push(self, x: mx.array) -> mx.array | None:
        self.buf = _cat(self.buf, x)
        self.received += x.shape[1]
        if self.received <= max(self.left, self.right):
            return None  # the reflect padding at the start needs more input (and the total might be tiny)
        end = self.received - self.right  # outputs [emitted, end) are final
        if end <= self.emitted:
            return None
        segment = self._pad(self.buf, self.left, 0) if self.emitted == 0 else self.buf
        y = self._conv(segment)
        self.emitted = end
        # keep inputs (end - left) .. received - 1: taken from the padded segment, since near the
        # start they include the reflected samples that stand before index 0
        keep = self.left + self.right
        self.buf = segment[:, segment.shape[1] - keep :] if keep else None
        return y

    def flush(self) -> mx.array | None:
        if self.received == 0:
            return None
        if self.emitted == 0:
            # the whole input is still buffered: the batch layer, its tiny-input rule included
            y = self.layer(self.buf)
        elif self.emitted < self.received:
            y = self._conv(self._pad(self.buf, 0, self.right))
        else:
            y = None
        self.emitted = self.received
        self.buf = None
        return y

    def state(self) -> list[mx.array]:
        return [] if self.buf is None else [self.buf]


class _StreamConvTranspose(_StreamOp):
    """Untrimmed output block m (samples m*s .. m*s+s-1) is ``x[m] @ A + x[m-1] @ B + bias`` (K = 2s):
    keep the last input; each block of inputs costs one GEMM with the weight packed once."""

    def __init__(self, layer: EncodecConvTranspose1d):
        w = layer.conv.weight  # (C_out, 2s, C_in)
        s = layer.stride
        if w.shape[1] != 2 * s:
            raise ValueError("streaming expects transposed convolutions with kernel_size == 2 * stride")
        self.layer = layer
        self.s = s
        c_out, _, c_in = w.shape
        # packed[(j, ci), (k, co)] = w[co, j * s + k, ci]: j = 0 for x[m], 1 for x[m-1]
        self.w = mx.contiguous(
            w.reshape(c_out, 2, s, c_in).transpose(1, 3, 2, 0).reshape(2 * c_in, s * c_out)
        )
        self.bias = layer.conv.bias
        mx.eval(self.w)
        self.prev: mx.array | None = None
        self.full_emitted = 0  # positions of the untrimmed output produced so far

    def _blocks(self, cur: mx.array, prev: mx.array) -> mx.array:
        y = mx.concatenate([cur, prev], axis=-1) @ self.w  # [B, n, s * C_out]
        return y.reshape(y.shape[0], -1, y.shape[2] // self.s) + self.bias

    def _emit(self, y: mx.array, final: bool) -> mx.array | None:
        start = self.full_emitted
        self.full_emitted += y.shape[1]
        lo = max(0, self.layer.trim_left - start)
        hi = y.shape[1] - (self.layer.trim_right if final else 0)
        return y[:, lo:hi] if hi > lo else None

    def push(self, x: mx.array) -> mx.array | None:
        n = x.shape[1]
        prev = mx.zeros_like(x[:, :1]) if self.prev is None else self.prev  # nothing before index 0
        z = mx.concatenate([prev, x], axis=1)
        y = self._blocks(z[:, 1:], z[:, :n])
        self.prev = x[:, n - 1 :]
        return self._emit(y, final=False)

    def flush(self) -> mx.array | None:
        if self.prev is None:
            return None
        y = self._blocks(mx.zeros_like(self.prev), self.prev)  # the last block: x[N-1]'s tail only
        self.prev = None
        return self._emit(y, final=True)

    def state(self) -> list[mx.array]:
        return [] if self.prev is None else [self.prev]


class _StreamLSTM(_StreamOp):
    def __init__(self, layer: EncodecLSTM):
        self.layer = layer
        self.hc: LSTMState | None = None

    def push(self, x: mx.array) -> mx.array:
        y, self.hc = self.layer.step(x, self.hc)
        return y

    def state(self) -> list[mx.array]:
        return [] if self.hc is None else [a for pair in self.hc for a in pair]


class _StreamChain(_StreamOp):
    def __init__(self, ops: list[_StreamOp]):
        self.ops = ops

    def push(self, x: mx.array) -> mx.array | None:
        for op in self.ops:
            if x is None:
                return None
            x = op.push(x)
        return x

    def flush(self) -> mx.array | None:
        x = None
        for op in self.ops:
            head = op.push(x) if x is not None else None
            x = _cat(head, op.flush())
        return x

    def state(self) -> list[mx.array]:
        return [a for op in self.ops for a in op.state()]


class _StreamResnet(_StreamOp):
    """The residual branch lags the block's (delayed) output: queue it until the block catches up."""

    def __init__(self, layer: EncodecResnetBlock):
        self.layer = layer
        self.block = _StreamChain([_stream_op(m) for m in layer.block])
        self.pending: mx.array | None = None

    def _combine(self, y: mx.array | None) -> mx.array | None:
        if y is None:
            return None
        m = y.shape[1]
        out = y + self.pending[:, :m]
        self.pending = self.pending[:, m:] if self.pending.shape[1] > m else None
        return out

    def push(self, x: mx.array) -> mx.array | None:
        self.pending = _cat(self.pending, self.layer.residual(x))
        return self._combine(self.block.push(x))

    def flush(self) -> mx.array | None:
        return self._combine(self.block.flush())

    def state(self) -> list[mx.array]:
        return self.block.state() + ([] if self.pending is None else [self.pending])


def _stream_op(layer: nn.Module) -> _StreamOp:
    if isinstance(layer, ELU):
        return _StreamPointwise(layer)
    if isinstance(layer, EncodecConv1d):
        return _StreamConv(layer)
    if isinstance(layer, EncodecConvTranspose1d):
        return _StreamConvTranspose(layer)
    if isinstance(layer, EncodecLSTM):
        return _StreamLSTM(layer)
    if isinstance(layer, EncodecResnetBlock):
        return _StreamResnet(layer)
    raise TypeError(f"no streaming form for {type(layer).__name__}")


class EncodecStreamDecoder:
    """Decode codes as they arrive; each ``push`` returns the audio samples that are final.

    The decoder is non-causal (its convolutions look a few samples ahead) and has an LSTM:
    every layer keeps exactly the context it needs and the LSTM state is carried, so a block
    costs O(block). The concatenation of all ``push`` outputs and ``flush()`` equals
    ``Encodec.decode`` of all the codes (to float rounding). Latency: a few frames (the first
    convolution looks ``pad_right`` frames ahead, each later layer a few samples).
    All arrays returned are evaluated. Make it after the model's weights are loaded (the
    convolution weights are packed once here) and use it from that one MLX thread only.
    ``scale``: the [B, 1] scale of a ``normalize`` codec (``Encodec.encode_with_scale``).
    """

    def __init__(self, model: Encodec, scale: mx.array | None = None):
        self.model = model
        self.scale = None if scale is None else scale.reshape(-1, 1, 1)
        self.chain = _StreamChain([_stream_op(layer) for layer in model.decoder.layers])
        self.frames_in = 0
        self.samples_out = 0
        self.batch = 1
        self.flushed = False

    def _finish(self, y: mx.array | None, batch: int) -> mx.array:
        if y is None:
            y = mx.zeros((batch, 0, self.model.config.audio_channels))
        elif self.scale is not None:
            y = y * self.scale
        y = y.transpose(0, 2, 1)
        mx.eval(y, *self.chain.state())
        self.samples_out += y.shape[2]
        return y

    def push(self, codes: mx.array) -> mx.array:
        """codes [B, K, t] (t >= 1) -> audio [B, C, n] (n may be 0 while the look-ahead fills)."""
        if self.flushed:
            raise RuntimeError("push after flush: make a new EncodecStreamDecoder")
        if codes.ndim != 3 or codes.shape[2] == 0:
            raise ValueError(f"expected codes [B, K, t] with t >= 1, got {codes.shape}")
        self.frames_in += codes.shape[2]
        self.batch = codes.shape[0]
        return self._finish(self.chain.push(self.model.quantizer.decode(codes)), codes.shape[0])

    def flush(self) -> mx.array:
        """End of the codes: the remaining samples (total = frames * hop_length)."""
        if self.flushed:
            raise RuntimeError("flush called twice")
        self.flushed = True
        return self._finish(self.chain.flush(), self.batch)
