"""The Oobleck decoder's streaming form: ``DecoderStream`` takes latents piece by piece and gives
the audio that has become final, every sample computed once, equal to the whole-sequence decode
of livegen.models.stable_audio.vae up to float rounding (``AudioAutoencoder.decode_chunks`` uses it).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from livegen.models.conv import conv1d, polyphase_blocks
from livegen.models.stable_audio.vae import (
    Conv1d,
    ConvTranspose1d,
    DecoderBlock,
    OobleckDecoder,
    ResidualUnit,
)

# Each stage takes the next input samples (or None) and returns the output samples that have
# become final (or None). ``final=True`` marks the end of the input: the stages then apply their
# right-hand zero padding and flush. Concatenated, the outputs equal the whole-sequence forward.


class _ConvStream:
    def __init__(self, conv: Conv1d):
        self.conv = conv
        self.buf: mx.array | None = None  # the last `span` inputs (+ left zero padding at first)

    def __call__(self, x: mx.array | None, final: bool) -> mx.array | None:
        c = self.conv
        if x is not None:
            self.buf = mx.pad(x, [(0, 0), (c.padding, 0), (0, 0)]) if self.buf is None else \
                mx.concatenate([self.buf, x], axis=1)
        if self.buf is None:
            return None
        if final:
            self.buf = mx.pad(self.buf, [(0, 0), (0, c.span - c.padding), (0, 0)])
        n_out = self.buf.shape[1] - c.span
        if n_out <= 0:
            return None
        y = conv1d(self.buf, c.weight, c.bias if "bias" in c else None, dilation=c.dilation)
        self.buf = self.buf[:, n_out:]
        return y

    def arrays(self) -> list[mx.array]:
        return [] if self.buf is None else [self.buf]


class _ConvTransposeStream:
    def __init__(self, conv: ConvTranspose1d):
        self.conv = conv
        self.taps = -(-conv.weight.shape[1] // conv.stride)
        self.buf: mx.array | None = None  # the last taps - 1 inputs (+ left zeros at first)
        self.skip = conv.padding  # leading samples of the unpadded output still to drop
        self.n_in = 0
        self.emitted = 0

    def __call__(self, x: mx.array | None, final: bool) -> mx.array | None:
        c, taps = self.conv, self.taps
        if x is not None:
            self.n_in += x.shape[1]
            self.buf = mx.pad(x, [(0, 0), (taps - 1, 0), (0, 0)]) if self.buf is None else \
                mx.concatenate([self.buf, x], axis=1)
        if self.buf is None:
            return None
        if final:
            self.buf = mx.pad(self.buf, [(0, 0), (0, taps - 1), (0, 0)])
        n_blocks = self.buf.shape[1] - (taps - 1)
        if n_blocks <= 0:
            return None
        z = polyphase_blocks(self.buf, c.polyphase(), taps, c.stride)
        self.buf = self.buf[:, n_blocks:]
        if self.skip:
            drop = min(self.skip, z.shape[1])
            z, self.skip = z[:, drop:], self.skip - drop
        if final:  # the full output has (n_in - 1) stride - 2 padding + K samples
            total = (self.n_in - 1) * c.stride - 2 * c.padding + c.weight.shape[1]
            z = z[:, : total - self.emitted]
        if z.shape[1] == 0:
            return None
        self.emitted += z.shape[1]
        return z + c.bias

    def arrays(self) -> list[mx.array]:
        return [] if self.buf is None else [self.buf]


class _PointwiseStream:
    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, x: mx.array | None, final: bool) -> mx.array | None:
        return None if x is None else self.layer(x)

    def arrays(self) -> list[mx.array]:
        return []


class _SequenceStream:
    def __init__(self, layers: list[nn.Module]):
        self.stages = [_stream(layer) for layer in layers]

    def __call__(self, x: mx.array | None, final: bool) -> mx.array | None:
        for stage in self.stages:
            x = stage(x, final)
        return x

    def arrays(self) -> list[mx.array]:
        return [a for stage in self.stages for a in stage.arrays()]


class _ResidualStream:
    def __init__(self, unit: ResidualUnit):
        self.inner = _SequenceStream(unit.layers)
        self.queue: mx.array | None = None  # inputs waiting for their branch output

    def __call__(self, x: mx.array | None, final: bool) -> mx.array | None:
        if x is not None:
            self.queue = x if self.queue is None else mx.concatenate([self.queue, x], axis=1)
        y = self.inner(x, final)
        if y is None:
            return None
        n = y.shape[1]
        out = self.queue[:, :n] + y
        self.queue = self.queue[:, n:]
        return out

    def arrays(self) -> list[mx.array]:
        return self.inner.arrays() + ([] if self.queue is None else [self.queue])


def _stream(layer: nn.Module):
    if isinstance(layer, Conv1d):
        if layer.stride != 1:
            raise ValueError("strided convolution in a decoder")
        return _ConvStream(layer)
    if isinstance(layer, ConvTranspose1d):
        return _ConvTransposeStream(layer)
    if isinstance(layer, ResidualUnit):
        return _ResidualStream(layer)
    if isinstance(layer, DecoderBlock):
        return _SequenceStream(layer.layers)
    return _PointwiseStream(layer)


class DecoderStream:
    """Stateful streaming Oobleck decode: feed latents piece by piece, get the audio that has
    become final. Every sample is computed once (no overlap recomputation), and the output equals
    ``decoder(all latents)`` up to float rounding."""

    def __init__(self, decoder: OobleckDecoder):
        self._stages = _SequenceStream(decoder.layers)
        self._done = False

    def push(self, latents: mx.array | None, final: bool = False) -> mx.array | None:
        """Feed ``[B, n, latent_dim]`` latents (``final=True`` with the last ones, or alone with
        None); returns the newly final ``[B, m, channels]`` audio, evaluated, or None."""
        if self._done:
            raise RuntimeError("DecoderStream already finished")
        self._done = final
        y = self._stages(latents, final)
        mx.eval([a for a in (y,) if a is not None] + self._stages.arrays())
        return y
