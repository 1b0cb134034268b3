"""Load an optimised BLAS before MLX on Linux: call :func:`preload` before ``import mlx.core``.

The ``mlx[cpu]`` wheel for Linux links the netlib reference BLAS (about 20x slower than an
optimised one for fp32 GEMM). Its symbols are resolved lazily, so a library with unprefixed
CBLAS symbols loaded with ``RTLD_GLOBAL`` *before* ``mlx.core`` is imported takes their place.
We ship one through our dependencies: ``cmeel-openblas`` (``cmeel.prefix/lib/libopenblas.so.0``).

Nothing happens at import: loading a native library into the process (and OpenBLAS starting its
threads) is an explicit call. livegen's entry points make it: ``livegen.cli.main``, the
``livegen.models`` package (the engines, whose modules import ``mlx.core``; so the Python API,
e.g. ``from livegen.models.stable_audio import StableAudioPipeline``, gets it) and
``livegen.device``. Any other module that imports ``mlx.core`` calls ``preload()`` first.
``preload()`` is idempotent; called after ``mlx.core`` was imported it loads nothing and
:func:`status` says why.

``LIVEGEN_BLAS`` overrides: ``bundled`` keeps MLX's own BLAS, a path loads that library.
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
from pathlib import Path

_loaded: str | None = None
_reason: str = "not attempted"


def _candidates() -> list[Path]:
    roots: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.append(path)
    roots.extend(p for p in sys.path if p)
    seen: set[Path] = set()
    found: list[Path] = []
    for root in roots:
        lib = Path(root) / "cmeel.prefix" / "lib" / "libopenblas.so.0"
        if lib not in seen:
            seen.add(lib)
            if lib.exists():
                found.append(lib)
    return found


# What a single-target OpenBLAS build needs of the CPU (its config names the target). Builds for
# one target are shipped: cmeel-openblas 0.3.29 is ZEN (AVX2), 0.3.31 SKYLAKEX (AVX-512); loaded on
# a CPU without those instructions the first GEMM dies of SIGILL (seen on an AVX2-only EPYC VM).
# A DYNAMIC_ARCH build picks its kernels at run time and needs nothing here.
_TARGET_NEEDS: dict[str, frozenset[str]] = {
    "SAPPHIRERAPIDS": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16"}),
    "COOPERLAKE": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}),
    "SKYLAKEX": frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}),
    "ZEN": frozenset({"avx2", "fma"}),
    "HASWELL": frozenset({"avx2", "fma"}),
    "SANDYBRIDGE": frozenset({"avx"}),
}


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty when it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def missing_for(config: str, flags: frozenset[str]) -> frozenset[str]:
    """The CPU flags an OpenBLAS build (its ``openblas_get_config()``) needs and ``flags`` lacks."""
    words = config.upper().split()
    if "DYNAMIC_ARCH" in words or not flags:
        return frozenset()  # picks its kernels at run time / nothing known of the CPU: trust it
    for target, needs in _TARGET_NEEDS.items():
        if target in words:
            return needs - flags
    return frozenset()


def _config(lib: ctypes.CDLL) -> str:
    try:
        fn = lib.openblas_get_config
    except AttributeError:
        return ""
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode(errors="replace")


def preload() -> str | None:
    """Load the optimised BLAS globally if possible; returns its path (or None)."""
    global _loaded, _reason
    if _loaded is not None:
        return _loaded
    if not sys.platform.startswith("linux"):
        _reason = "not Linux: MLX uses Accelerate/Metal or its GPU backend"
        return None
    choice = os.environ.get("LIVEGEN_BLAS", "").strip()
    if choice == "bundled":
        _reason = "LIVEGEN_BLAS=bundled"
        return None
    if "mlx.core" in sys.modules:
        _reason = "mlx.core was imported before livegen._blas.preload(); its BLAS is already bound"
        return None
    paths = [Path(choice)] if choice else _candidates()
    for path in paths:
        try:
            # Local first: its symbols take MLX's place only once the build is known to run here.
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        except OSError as exc:
            _reason = f"could not load {path}: {exc}"
            continue
        config = _config(lib)
        missing = missing_for(config, cpu_flags())
        if missing:
            _reason = (f"{path} ({config}) needs CPU instructions this machine lacks ({', '.join(sorted(missing))}):"
                       " MLX keeps its reference BLAS (slow); install a build for this CPU"
                       " (pip install 'cmeel-openblas!=0.3.31') or point LIVEGEN_BLAS at one")
            continue
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)  # the same library, its symbols now global
        except OSError as exc:
            _reason = f"could not load {path}: {exc}"
            continue
        _loaded = str(path)
        _reason = "loaded"
        return _loaded
    if not paths:
        _reason = "cmeel-openblas is not installed"
    return None


def status() -> tuple[str | None, str]:
    """(path of the optimised BLAS or None, a short reason)."""
    return _loaded, _reason
