"""livegen.models.conv: the matmul formulations equal MLX's native convolutions (and torch's)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from livegen.models import conv

# (kernel, stride, dilation, padding)
CONV_CASES = [
    (7, 1, 1, 3), (7, 1, 3, 9), (7, 1, 9, 27), (1, 1, 1, 0), (3, 1, 1, 1), (3, 1, 2, 0),
    (4, 2, 1, 1), (8, 4, 1, 2), (16, 8, 1, 4), (5, 3, 2, 0), (6, 3, 1, 2), (2, 2, 3, 5),
]
# (kernel, stride, padding, output_padding)
TRANSPOSED_CASES = [
    (4, 2, 1, 0), (8, 4, 2, 0), (16, 8, 4, 0), (6, 3, 2, 0), (6, 3, 2, 1), (5, 2, 0, 1),
    (3, 1, 1, 0), (2, 2, 0, 0), (7, 3, 0, 2), (4, 2, 3, 1), (1, 1, 0, 0), (9, 4, 5, 3),
]


def _conv1d_numpy(x, w, b, stride, dilation, padding):
    """Direct definition: y[n] = sum_k x[n * stride + k * dilation - padding] @ w[:, k].T."""
    batch, n, _ = x.shape
    c_out, k, _ = w.shape
    xp = np.pad(x.astype(np.float64), [(0, 0), (padding, padding), (0, 0)])
    l_out = (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((batch, l_out, c_out))
    for t in range(k):
        taps = xp[:, t * dilation : t * dilation + (l_out - 1) * stride + 1 : stride]
        y += taps @ w[:, t].T.astype(np.float64)
    return y + b


def _conv_transpose1d_numpy(x, w, b, stride, padding, output_padding):
    """Direct definition: input i adds x[i] @ w[:, k].T at output i * stride + k - padding."""
    batch, length, _ = x.shape
    c_out, k, _ = w.shape
    full = np.zeros((batch, (length - 1) * stride + k + output_padding, c_out))
    for i in range(length):
        for t in range(k):
            full[:, i * stride + t] += x[:, i].astype(np.float64) @ w[:, t].T.astype(np.float64)
    l_out = (length - 1) * stride - 2 * padding + k + output_padding
    return full[:, padding : padding + l_out] + b


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


IMPLS = ["native", "matmul-unfold", "matmul-per-tap"]


def _use(impl, monkeypatch):
    """Select the path; the matmul path is tested with each of its two GEMM layouts."""
    if impl == "matmul-unfold":
        monkeypatch.setattr(conv, "UNFOLD_MAX_ELEMENTS", 1 << 40)
    elif impl == "matmul-per-tap":
        monkeypatch.setattr(conv, "UNFOLD_MAX_ELEMENTS", 0)
    return conv.implementation(impl.split("-")[0])


def _data(shape_x, shape_w, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x).astype(np.float32)
    w = rng.standard_normal(shape_w).astype(np.float32)
    b = rng.standard_normal(shape_w[0]).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"k{k}s{s}d{d}p{p}" for k, s, d, p in CONV_CASES])
def test_conv1d_matches_definition(impl, case, monkeypatch):
    k, s, d, p = case
    x, w, b = _data((2, 37, 5), (6, k, 5), seed=k * 100 + s * 10 + d)
    expected = _conv1d_numpy(x, w, b, s, d, p)
    with _use(impl, monkeypatch):
        y = conv.conv1d(mx.array(x), mx.array(w), mx.array(b), stride=s, dilation=d, padding=p)
    assert y.shape == expected.shape
    assert _rel(y, expected) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=[f"k{k}s{s}p{p}o{o}" for k, s, p, o in TRANSPOSED_CASES])
def test_conv_transpose1d_matches_definition(impl, case, monkeypatch):
    k, s, p, o = case
    x, w, b = _data((2, 11, 5), (6, k, 5), seed=k * 100 + s * 10 + p)
    expected = _conv_transpose1d_numpy(x, w, b, s, p, o)
    with _use(impl, monkeypatch):
        y = conv.conv_transpose1d(mx.array(x), mx.array(w), mx.array(b), stride=s, padding=p, output_padding=o)
    assert y.shape == expected.shape
    assert _rel(y, expected) <= 1e-5


def test_prepared_polyphase_weight_is_used():
    x, w, b = _data((1, 9, 4), (3, 8, 4), seed=2)
    with conv.implementation("matmul"):
        plain = conv.conv_transpose1d(mx.array(x), mx.array(w), mx.array(b), stride=4, padding=2)
        prepared = conv.polyphase_weight(mx.array(w), 4)
        assert prepared.shape == (2 * 4, 4 * 3)
        y = conv.conv_transpose1d(mx.array(x), mx.array(w), mx.array(b), stride=4, padding=2, polyphase=prepared)
        np.testing.assert_array_equal(np.array(y), np.array(plain))
        other = conv.conv_transpose1d(mx.array(x), mx.array(w), mx.array(b), stride=4, padding=2,
                                      polyphase=prepared * 2)
        assert not np.allclose(np.array(other), np.array(plain))
        with pytest.raises(ValueError, match="polyphase weight"):
            conv.conv_transpose1d(mx.array(x), mx.array(w), None, stride=4, polyphase=prepared[:4])


def test_no_bias():
    x, w, _ = _data((1, 20, 3), (2, 3, 3), seed=3)
    for impl in ("native", "matmul"):
        with conv.implementation(impl):
            y = conv.conv1d(mx.array(x), mx.array(w), None, dilation=2, padding=2)
            yt = conv.conv_transpose1d(mx.array(x), mx.array(w), None, stride=2, padding=1)
        assert _rel(y, _conv1d_numpy(x, w, 0.0, 1, 2, 2)) <= 1e-5
        assert _rel(yt, _conv_transpose1d_numpy(x, w, 0.0, 2, 1, 0)) <= 1e-5


def test_implementation_switch():
    assert conv.get_implementation() == "auto"
    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    assert conv.use_matmul(dilation=3) == on_cpu
    assert conv.use_matmul(transposed=True) == on_cpu
    assert conv.use_matmul(dilation=1, c_in=128) == on_cpu
    assert not conv.use_matmul(dilation=1, c_in=2)  # an audio input layer stays native
    with conv.implementation("matmul"):
        assert conv.use_matmul(c_in=2) and conv.get_implementation() == "matmul"
        with conv.implementation("native"):
            assert not conv.use_matmul(dilation=3, transposed=True)
        assert conv.get_implementation() == "matmul"
    assert conv.get_implementation() == "auto"
    with pytest.raises(ValueError, match="unknown convolution implementation"):
        conv.set_implementation("fft")


def test_bad_shapes_raise():
    x, w, _ = _data((1, 10, 3), (2, 3, 4), seed=4)
    with pytest.raises(ValueError, match="do not match"):
        conv.conv1d(mx.array(x), mx.array(w))
    with pytest.raises(ValueError, match="do not match"):
        conv.conv_transpose1d(mx.array(x), mx.array(w), stride=2)
    x, w, _ = _data((1, 10, 3), (2, 3, 3), seed=5)
    with pytest.raises(ValueError, match="output_padding"):
        conv.conv_transpose1d(mx.array(x), mx.array(w), stride=2, output_padding=2)
    with conv.implementation("matmul"), pytest.raises(ValueError, match="too short"):
        conv.conv1d(mx.array(x), mx.array(w), dilation=9)


@pytest.mark.parity
@pytest.mark.parametrize("impl", ["native", "matmul"])
def test_torch_layout_parity(torch_ref, impl):
    """Against torch's Conv1d/ConvTranspose1d with their own weight layouts: (out, in, K) for
    conv, (in, out, K) for the transposed conv; ours is (out, K, in) for both."""
    torch = torch_ref
    F = torch.nn.functional
    x, w, b = _data((2, 40, 6), (5, 7, 6), seed=6)
    xt = torch.from_numpy(x).transpose(1, 2)
    ref = F.conv1d(xt, torch.from_numpy(w.transpose(0, 2, 1)), torch.from_numpy(b), dilation=3, padding=9)
    ref_t = F.conv_transpose1d(xt, torch.from_numpy(w.transpose(2, 0, 1)), torch.from_numpy(b),
                               stride=4, padding=2)
    with conv.implementation(impl):
        y = conv.conv1d(mx.array(x), mx.array(w), mx.array(b), dilation=3, padding=9)
        y_t = conv.conv_transpose1d(mx.array(x), mx.array(w), mx.array(b), stride=4, padding=2)
    assert _rel(y, ref.transpose(1, 2).numpy()) <= 1e-5
    assert _rel(y_t, ref_t.transpose(1, 2).numpy()) <= 1e-5
