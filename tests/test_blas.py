"""The optimised BLAS loaded before MLX (livegen._blas) must change speed, never results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from livegen import _blas

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import livegen
    from livegen import _blas
    import mlx.core as mx
    import mlx.nn as nn

    rng = np.random.default_rng(0)
    a = mx.array(rng.standard_normal((64, 96)).astype(np.float32))
    b = mx.array(rng.standard_normal((96, 80)).astype(np.float32))
    x = mx.array(rng.standard_normal((2, 50, 8)).astype(np.float32))
    w = mx.array(rng.standard_normal((12, 5, 8)).astype(np.float32))
    q = mx.array(rng.standard_normal((1, 2, 10, 16)).astype(np.float32))
    lin = nn.Linear(96, 32)
    lin.update({"weight": mx.array(rng.standard_normal((32, 96)).astype(np.float32)),
                "bias": mx.array(rng.standard_normal((32,)).astype(np.float32))})
    out = {
        "matmul": np.array(a @ b).tolist(),
        "linear": np.array(lin(a)).tolist(),
        "conv": np.array(mx.conv1d(x, w, padding=2)).tolist(),
        "attn": np.array(mx.fast.scaled_dot_product_attention(q, q, q, scale=0.25)).tolist(),
        "blas": _blas.status()[0],
    }
    json.dump(out, sys.stdout)
    """
)


def _run(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LIVEGEN_BLAS"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
def test_optimised_blas_is_loaded_and_outputs_are_unchanged():
    fast = _run({})
    reference = _run({"LIVEGEN_BLAS": "bundled"})
    assert reference["blas"] is None
    if _blas.status()[0] is None:
        pytest.fail(f"the optimised BLAS did not load in this process: {_blas.status()[1]}")
    assert fast["blas"] and fast["blas"].endswith("libopenblas.so.0")
    for key in ("matmul", "linear", "conv", "attn"):
        got, want = np.array(fast[key]), np.array(reference[key])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_status_reports_a_reason():
    path, reason = _blas.status()
    assert reason
    if path is None:
        assert reason != "loaded"
