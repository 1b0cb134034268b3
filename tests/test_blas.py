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
    from livegen import _blas
    _blas.preload()  # explicit: importing livegen loads no BLAS
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
        "reason": _blas.status()[1],
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
    if fast["blas"] is None:
        pytest.fail(f"the optimised BLAS did not load: {fast['reason']}")
    assert fast["blas"].endswith("libopenblas.so.0")
    for key in ("matmul", "linear", "conv", "attn"):
        got, want = np.array(fast[key]), np.array(reference[key])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


AVX2_ONLY = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2\n"  # the AMD EPYC VM that died of SIGILL


def test_cpu_flags_read_from_cpuinfo():
    assert _blas.cpu_flags("processor\t: 0\n" + AVX2_ONLY) >= {"avx2", "fma"}
    assert _blas.cpu_flags("no flags here\n") == frozenset()


@pytest.mark.parametrize(("config", "missing"), [
    # cmeel-openblas 0.3.31 (a SKYLAKEX-only build) on an AVX2 machine: the first GEMM died of SIGILL
    ("OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}),
    ("OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=4", set()),
    ("OpenBLAS 0.3.29 NO_AFFINITY HASWELL MAX_THREADS=64", set()),
    ("OpenBLAS 0.3.31 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64", set()),  # picks kernels at run time
    ("OpenBLAS 0.3.31 NO_AFFINITY NEHALEM MAX_THREADS=4", set()),
])
def test_a_build_for_a_cpu_without_its_instructions_is_told(config, missing):
    assert _blas.missing_for(config, _blas.cpu_flags(AVX2_ONLY)) == missing
    assert _blas.missing_for(config, frozenset()) == frozenset()  # nothing known of the CPU: trusted


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
def test_the_installed_build_runs_here_or_is_left_out_with_the_reason():
    out = _run({})  # the subprocess dies of SIGILL when a build this CPU cannot run is made global
    if out["blas"] is None and "needs CPU instructions" in out["reason"]:
        assert "MLX keeps its reference BLAS" in out["reason"]


def test_status_reports_a_reason():
    path, reason = _blas.status()
    assert reason
    if path is None:
        assert reason != "loaded"


# Which modules are imported, and whether OpenBLAS (cmeel-openblas' libopenblas.so.0; numpy's own
# libscipy_openblas64_ is a different library) is mapped into the process, after each step; and
# whether it was mapped at the moment mlx.core started loading (a meta-path hook sees that).
IMPORTS = textwrap.dedent(
    """
    import json, os, sys

    def openblas_mapped():
        with open("/proc/self/maps") as maps:
            return any(os.path.basename(line.split()[-1]).startswith("libopenblas.so")
                       for line in maps if "/" in line)

    seen = {}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name == "mlx.core" and "at_mlx_import" not in seen:
                seen["at_mlx_import"] = openblas_mapped()
            return None

    sys.meta_path.insert(0, Watch())
    steps = {}
    for label, modules in json.loads(sys.argv[1]):
        for name in modules:
            __import__(name)
        steps[label] = {"mlx": "mlx.core" in sys.modules, "openblas": openblas_mapped()}
    from livegen import _blas
    json.dump({"steps": steps, "at_mlx_import": seen.get("at_mlx_import"), "status": _blas.status()},
              sys.stdout)
    """
)
PURE = ["livegen", "livegen.settings", "livegen.mapping", "livegen.request", "livegen.control.osc"]


def _imports(steps: list[tuple[str, list[str]]]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LIVEGEN_BLAS"}
    proc = subprocess.run([sys.executable, "-c", IMPORTS, json.dumps(steps)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
def test_importing_livegen_loads_no_blas_and_no_mlx():
    got = _imports([("pure", PURE)])
    assert got["steps"]["pure"] == {"mlx": False, "openblas": False}
    assert got["status"] == [None, "not attempted"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")
@pytest.mark.parametrize("entry", ["livegen.models.stable_audio.pipeline", "livegen.models.musicgen.pipeline",
                                   "livegen.device"])
def test_entry_points_load_openblas_before_mlx(entry):
    got = _imports([("pure", PURE), ("entry", [entry]), ("mlx", ["mlx.core"])])
    assert got["steps"]["pure"] == {"mlx": False, "openblas": False}
    if got["status"][0] is None:
        pytest.fail(f"the optimised BLAS did not load: {got['status'][1]}")
    assert got["steps"]["mlx"] == {"mlx": True, "openblas": True}
    assert got["at_mlx_import"] is True  # mapped before mlx.core began to load
