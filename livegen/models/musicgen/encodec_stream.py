"""EnCodec's streaming decoder: ``EncodecStreamDecoder`` decodes codes block by block with exactly
the batch result of ``Encodec.decode`` (livegen.models.musicgen.encodec): every convolution keeps
just the left/right context it needs, the LSTM carries its state, and the reflect padding at the
two ends of the signal is applied where the reference applies it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import mlx.core as mx
import mlx.nn as nn

from livegen.models.musicgen.encodec import (
    ELU,
    Encodec,
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
    LSTMState,
    _pad1d,
)


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
