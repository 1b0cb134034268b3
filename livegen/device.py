"""Which MLX device and BLAS this process computes with (detected, never assumed)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from livegen import _blas


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "gpu" or "cpu"
    backend: str  # "metal", "cuda" or "cpu"
    blas: str  # path of the optimised BLAS, or a reason why MLX's own is in use

    def describe(self) -> str:
        return f"MLX {self.backend} ({self.device}); BLAS: {self.blas}"


def detect() -> DeviceInfo:
    import mlx.core as mx

    gpu = mx.is_available(mx.gpu)
    if gpu:
        backend = "metal" if mx.metal.is_available() else "cuda"
    else:
        backend = "cpu"
    path, reason = _blas.status()
    return DeviceInfo(device="gpu" if gpu else "cpu", backend=backend, blas=path or f"bundled ({reason})")


def gemm_gflops(n: int = 1024, repeats: int = 3) -> float:
    """Measured fp32 GEMM throughput of the default device (best of ``repeats``)."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
