"""Which MLX device and BLAS this process computes with (detected, never assumed)."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

from livegen import _blas

# This module's functions import mlx.core: the optimised BLAS must be in place before that.
_blas.preload()


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


# ----------------------------------------------------------------------------- runtime settings

_configured: dict[str, object] | None = None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _env_int(name: str, minimum: int, what: str) -> int | None:
    """The integer in environment variable ``name`` (None when unset or empty); ValueError if it
    is not an integer >= ``minimum``."""
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name} must be {what}, got {env!r}")
    return value


def default_blas_threads(realtime: bool = False) -> int:
    """``LIVEGEN_CPU_THREADS`` if set; else every usable core for batch work (``livegen generate``,
    the Python API), and every core but one (at least one) when ``realtime`` (the daemon).

    The daemon leaves a core to the audio callback, the event loop and the host's other programs
    (a DAW): OpenBLAS workers spin while they wait, and when a core they count on is busy
    elsewhere every GEMM waits a scheduler time slice (on the 2-vCPU test machine under load, a
    full-size DiT forward took 7.1 s with 2 BLAS threads and 1.4 s with 1). A batch job on a
    quiet machine is fastest with every core (the same forward: 0.81 s with 2, 1.11 s with 1)."""
    value = _env_int("LIVEGEN_CPU_THREADS", minimum=1, what="a positive integer")
    if value is not None:
        return value
    cores = _cpu_count()
    return max(1, cores - 1) if realtime else cores


def realtime() -> bool:
    """Whether ``configure_mlx(realtime=True)`` was applied: generation shares the process (and
    the GIL) with an audio callback written in Python (the daemon's ``audio.backend: python``), so
    work that frees many arrays from Python is avoided (see ``AudioAutoencoder.tile_latents``).
    With the C callback (``audio.backend: rtmixer``) the daemon runs as batch work does."""
    return bool(_configured and _configured.get("realtime"))


def profile() -> str:
    """What the runtime settings were chosen for: ``batch``, ``daemon`` (audio callback in C: the
    batch settings) or ``daemon-python-audio`` (the compromises of ``realtime``)."""
    if not _configured:
        return "batch"
    return str(_configured.get("profile", "batch"))


def default_cache_limit() -> int:
    """MLX buffer cache for the CPU: ``LIVEGEN_MLX_CACHE_MB`` if set, else 1 GiB, or a sixteenth of
    the physical memory if that is less (at least 64 MiB)."""
    value = _env_int("LIVEGEN_MLX_CACHE_MB", minimum=0, what="a whole number of MiB")
    if value is not None:
        return value << 20
    limit = 1 << 30
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return limit
    return min(limit, max(memory // 16, 64 << 20))


def set_blas_threads(threads: int) -> bool:
    """Set the preloaded OpenBLAS's thread count; False when no OpenBLAS was preloaded."""
    path, _ = _blas.status()
    if path is None:
        return False
    try:
        lib = ctypes.CDLL(path)
        setter = lib.openblas_set_num_threads
    except (OSError, AttributeError):
        return False
    setter(int(threads))
    return True


def configure_mlx(*, threads: int | None = None, cache_limit: int | None = None,
                  force: bool = False, realtime: bool = False, daemon: bool = False) -> dict[str, object]:
    """Runtime settings for fast inference, applied once per process (the pipelines call it; the
    daemon calls it first with ``realtime=True``).

    - CPU: the preloaded OpenBLAS runs ``threads`` threads (default
      ``default_blas_threads(realtime)``).
    - ``cache_limit`` (bytes): MLX's buffer cache limit; on the CPU by default
      ``default_cache_limit()`` (1 GiB, less on small machines) for batch work, and MLX's own
      (32 MB) in the daemon and on GPUs. In the daemon the large cache cost audio: a minute of
      back-to-back full-size generation on the JACK dummy server gave 11 xruns and 5 callback
      underflows with 1 GiB and 0 and 0 with MLX's default (bench/daemon_latency.py, same run). MLX's CPU
      default (32 MB) gives arrays above it fresh pages on every allocation, which makes
      element-wise work on them several times slower: on the CPU test machine the attention of a
      Stable Audio small block at batch 2 took 39 ms at 32 MB and 12.5 ms at 1 GB, and the
      batch-2 forward 2.32 s vs 2.06 s. The Oobleck decode, which once was slower with a large
      cache, now runs in tiles that fit either way (``AudioAutoencoder.tile_latents``).
    - ``realtime``: this process plays audio from a Python callback while it generates (the
      daemon with ``audio.backend: python``); see ``realtime()``.
    - ``daemon``: the daemon with its audio callback in C (``audio.backend: rtmixer``) or without
      audio: the batch cache and tiled decode (the GIL no longer matters to the callback), marked
      in ``profile()``; the BLAS keeps every core but one, decided by measurement
      (bench/daemon_speed.py, docs/benchmarks.md): on the 2-core test machine under load, 2 BLAS
      threads gave 21 underflows and 24 JACK xruns over six renders even with rtmixer's C callback
      (spinning OpenBLAS workers starve it of a core), 1 thread 3 and 0, and rendered faster.
    Returns what was applied (``{"blas_threads": n or None, "cache_limit": bytes or None,
    "realtime": bool, "profile": str}``)."""
    global _configured
    if _configured is not None and not force and threads is None and cache_limit is None and not realtime:
        return _configured
    import mlx.core as mx

    applied: dict[str, object] = {"blas_threads": None, "cache_limit": None, "realtime": bool(realtime),
                                  "profile": "daemon-python-audio" if realtime else "daemon" if daemon else "batch"}
    if not mx.is_available(mx.gpu):
        n = threads if threads is not None else default_blas_threads(realtime or daemon)
        if set_blas_threads(n):
            applied["blas_threads"] = n
    if cache_limit is None and mx.default_device().type == mx.DeviceType.cpu and not realtime:
        cache_limit = default_cache_limit()
    if cache_limit is not None:
        mx.set_cache_limit(int(cache_limit))
        applied["cache_limit"] = int(cache_limit)
    _configured = applied
    return applied
