"""Fast 1-D convolutions for MLX (NLC layout, weights ``(C_out, K, C_in)``).

MLX's CPU backend runs dilated ``conv1d`` and strided ``conv_transpose1d`` through a slow
direct loop that does not use BLAS (~1 GFLOP/s). On the CPU these helpers use equivalent
matrix-multiply formulations instead: a convolution is a sum over its taps of (shifted input)
@ (tap weight), computed as one GEMM over the unfolded input ("im2col") for short inputs or as
one accumulating GEMM per tap for long ones; a transposed convolution is first rewritten in
polyphase form (a stride-1 convolution with ceil(K / stride) taps and stride * C_out output
channels, then interleaved). They give the same results at BLAS speed. On Metal/CUDA MLX's
native kernels are fast, so they are used there.

``set_implementation("native" | "matmul" | "auto")`` (or the ``implementation`` context
manager) forces either path, e.g. to compare them in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx

_IMPLEMENTATIONS = ("auto", "native", "matmul")
_implementation = "auto"

# "auto" on the CPU leaves undilated convolutions with fewer input channels than this to MLX.
NATIVE_BELOW_CHANNELS = 16
# Up to this many elements the input is unfolded (im2col) for one GEMM with K * C_in inner
# dimension (best for short inputs with many channels); above it, one GEMM per tap accumulates
# into the output (best for long inputs: no unfolded copy).
UNFOLD_MAX_ELEMENTS = 1 << 22


def set_implementation(name: str) -> None:
    """Choose the convolution path: "auto" (matmul on CPU, native elsewhere), "native", "matmul"."""
    global _implementation
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown convolution implementation {name!r}; expected one of {_IMPLEMENTATIONS}")
    _implementation = name


def get_implementation() -> str:
    return _implementation


@contextmanager
def implementation(name: str) -> Iterator[None]:
    """Temporarily force a convolution path (see ``set_implementation``)."""
    previous = _implementation
    set_implementation(name)
    try:
        yield
    finally:
        set_implementation(previous)


def use_matmul(dilation: int = 1, transposed: bool = False, c_in: int | None = None) -> bool:
    """Whether the matmul formulation serves this convolution on the current default device.

    "auto" picks it for every convolution on the CPU (30-90x faster than MLX's dilated and
    transposed kernels there, and ~2x faster than its undilated one on long inputs), except an
    undilated one with very few input channels (an audio input layer), where MLX's own kernel
    is faster; on a GPU it keeps MLX's native kernels."""
    if _implementation == "auto":
        if mx.default_device().type != mx.DeviceType.cpu:
            return False
        few_channels = c_in is not None and c_in < NATIVE_BELOW_CHANNELS
        return transposed or dilation > 1 or not few_channels
    return _implementation == "matmul"


def conv1d(
    x: mx.array,
    w: mx.array,
    bias: mx.array | None = None,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 0,
) -> mx.array:
    """``x`` (B, N, C_in), ``w`` (C_out, K, C_in) -> (B, L_out, C_out), same rules as torch's Conv1d
    with symmetric zero ``padding``: ``L_out = (N + 2 padding - dilation (K - 1) - 1) // stride + 1``."""
    if x.ndim != 3 or w.ndim != 3 or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"conv1d: input {x.shape} and weight {w.shape} do not match (NLC, (C_out, K, C_in))")
    if use_matmul(dilation=dilation, c_in=x.shape[-1]):
        return _conv1d_matmul(x, w, bias, stride, dilation, padding)
    y = mx.conv1d(x, w, stride=stride, padding=padding, dilation=dilation)
    return y if bias is None else y + bias


def conv_transpose1d(
    x: mx.array,
    w: mx.array,
    bias: mx.array | None = None,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
    polyphase: mx.array | None = None,
) -> mx.array:
    """``x`` (B, L, C_in), ``w`` (C_out, K, C_in) -> (B, L_out, C_out), same rules as torch's
    ConvTranspose1d (whose (C_in, C_out, K) weight is ``w.transpose(2, 0, 1)``):
    ``L_out = (L - 1) stride - 2 padding + K + output_padding``.

    ``polyphase``: ``polyphase_weight(w, stride)``, computed once by the caller, saves
    rearranging the weight on every call of the matmul path (a large copy for big layers)."""
    if x.ndim != 3 or w.ndim != 3 or x.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"conv_transpose1d: input {x.shape} and weight {w.shape} do not match (NLC, (C_out, K, C_in))"
        )
    if output_padding >= stride:
        raise ValueError("conv_transpose1d: output_padding must be smaller than stride")
    if use_matmul(transposed=True):
        if polyphase is None:
            polyphase = polyphase_weight(w, stride)
        y = _conv_transpose1d_matmul(x, polyphase, w.shape[1], stride, padding, output_padding)
    else:
        y = mx.conv_transpose1d(x, w, stride=stride, padding=padding, output_padding=output_padding)
    return y if bias is None else y + bias


def _taps_product(taps: list[mx.array], matrix: mx.array, bias: mx.array | None) -> mx.array:
    """``bias + sum_t taps[t] @ matrix[t C_in : (t + 1) C_in]``. Short inputs: one GEMM over the
    unfolded taps; long ones: one GEMM per tap accumulated in place (``addmm``, beta=1), with no
    unfolded copy. ``matrix`` may be a transposed view (BLAS reads it without a copy)."""
    shape = (*taps[0].shape[:-1], matrix.shape[-1])
    c_in = taps[0].shape[-1]
    if len(taps) == 1 or taps[0].size * len(taps) <= UNFOLD_MAX_ELEMENTS:
        cols = taps[0] if len(taps) == 1 else mx.concatenate(taps, axis=-1)
        if bias is None:
            return cols @ matrix
        return mx.addmm(mx.broadcast_to(bias.astype(cols.dtype), shape), cols, matrix)
    weights = [matrix[t * c_in : (t + 1) * c_in] for t in range(len(taps))]
    if bias is None:
        y = taps[0] @ weights[0]
        rest = zip(taps[1:], weights[1:], strict=True)
    else:
        y = mx.broadcast_to(bias.astype(taps[0].dtype), shape)
        rest = zip(taps, weights, strict=True)
    for tap, weight in rest:
        y = mx.addmm(y, tap, weight)
    return y


def _conv1d_matmul(
    x: mx.array, w: mx.array, bias: mx.array | None, stride: int, dilation: int, padding: int
) -> mx.array:
    """``y[n] = bias + sum_t x[n * stride + t * dilation - padding] @ w[:, t].T``."""
    n = x.shape[1]
    k = w.shape[1]
    l_out = (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    if l_out <= 0:
        raise ValueError(f"conv1d: input of length {n} is too short for kernel {k} with dilation {dilation}")
    if padding:
        x = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    span = (l_out - 1) * stride + 1
    taps = [x[:, t * dilation : t * dilation + span : stride, :] for t in range(k)]
    c_out, _, c_in = w.shape
    return _taps_product(taps, w.reshape(c_out, k * c_in).T, bias)  # rows ordered (tap, channel)


def polyphase_weight(w: mx.array, stride: int) -> mx.array:
    """(C_out, K, C_in) transposed-convolution weight -> the (J C_in, stride C_out) matrix of its
    polyphase form, ``J = ceil(K / stride)``: ``m[t, ci, r, co] = w[co, r + (J - 1 - t) stride, ci]``."""
    c_out, k, c_in = w.shape
    taps = -(-k // stride)
    if taps * stride > k:
        w = mx.pad(w, [(0, 0), (0, taps * stride - k), (0, 0)])
    m = w.reshape(c_out, taps, stride, c_in)[:, ::-1].transpose(1, 3, 2, 0)
    return mx.contiguous(m.reshape(taps * c_in, stride * c_out))


def polyphase_blocks(x: mx.array, wm: mx.array, taps: int, stride: int) -> mx.array:
    """The unpadded ("valid") stride-1 convolution of the polyphase form, interleaved:
    ``x`` (B, L, C_in), ``wm = polyphase_weight(w, stride)`` -> (B, (L - taps + 1) stride, C_out),
    output block ``q`` (``stride`` samples) computed from ``x[q : q + taps]``. With ``taps - 1``
    zeros around ``x`` it is the full transposed convolution before its ``padding`` is cropped."""
    batch, length, c_in = x.shape
    if wm.shape[0] != taps * c_in or wm.shape[1] % stride:
        raise ValueError(f"polyphase weight {wm.shape} does not match {taps} taps of {c_in} channels")
    n_blocks = length - taps + 1
    if n_blocks <= 0:
        raise ValueError(f"polyphase_blocks: {length} input samples are fewer than {taps} taps")
    z = _taps_product([x[:, t : t + n_blocks, :] for t in range(taps)], wm, None)
    return z.reshape(batch, n_blocks * stride, wm.shape[1] // stride)


def _conv_transpose1d_matmul(
    x: mx.array, wm: mx.array, k: int, stride: int, padding: int, output_padding: int
) -> mx.array:
    """Polyphase form: output sample ``q * stride + r`` of the unpadded transposed convolution is
    ``sum_j x[q - j] @ w[:, r + j * stride]``, i.e. a stride-1 convolution of ``x`` with
    ``J = ceil(K / stride)`` taps producing ``stride * C_out`` channels, then interleaved."""
    length, c_in = x.shape[1:]
    s = stride
    taps = -(-k // s)
    if wm.shape[0] != taps * c_in:
        raise ValueError(f"conv_transpose1d: polyphase weight {wm.shape} does not match K={k}, C_in={c_in}")
    if taps > 1:
        x = mx.pad(x, [(0, 0), (taps - 1, taps - 1), (0, 0)])
    n_blocks = length + taps - 1
    l_out = (length - 1) * s - 2 * padding + k + output_padding
    if l_out <= 0:
        raise ValueError(f"conv_transpose1d: padding {padding} leaves no output for input length {length}")
    # Only the blocks that reach the cropped output window [padding, padding + l_out) are needed.
    first = padding // s
    last = min(n_blocks, -(-(padding + l_out) // s))
    z = polyphase_blocks(x[:, first : last + taps - 1], wm, taps, s)
    offset = padding - first * s
    if offset + l_out > z.shape[1]:  # output_padding past the end of the full convolution: zeros
        z = mx.pad(z, [(0, 0), (0, offset + l_out - z.shape[1]), (0, 0)])
    return z[:, offset : offset + l_out]
