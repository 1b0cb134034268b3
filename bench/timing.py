"""Side-by-side timing: alternate livegen and reference runs, keep every sample, report medians.

Every measurement is a :class:`Pair` of sample lists (seconds) taken in one process, interleaved
(livegen, reference, livegen, reference, ... with the order swapped every repeat so that neither
side always runs on a machine warmed, or slowed, by the other). Absolute times on a shared,
noisy machine mean little; the ratio of medians taken this way is the figure to quote.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass
class Pair:
    """Samples (seconds) of one measurement for livegen and the reference."""

    livegen: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @staticmethod
    def median(samples: list[float]) -> float | None:
        return statistics.median(samples) if samples else None

    def ratio(self) -> float | None:
        """livegen median time / reference median time (below 1: livegen is faster)."""
        lg, ref = self.median(self.livegen), self.median(self.reference)
        if lg is None or ref is None or ref <= 0:
            return None
        return lg / ref


class Threads:
    """BLAS threads per side. livegen preloads one OpenBLAS for the whole process and torch uses it
    too, so its thread count (``openblas_set_num_threads``) is switched before every call: livegen
    runs with its own batch default (``livegen.device.default_blas_threads()``: every core; the
    daemon leaves one to the audio callback) and the reference with 1 BLAS thread beside torch's own
    OpenMP threads (``torch.get_num_threads()``), unless ``--threads N`` gives both N. Giving the
    reference's GEMMs as many BLAS threads as torch has OpenMP threads oversubscribes the cores:
    on 2 vCPUs a MusicGen step took 1.21 s that way and 0.16 s with 1 BLAS thread, the same as
    stock torch (its own MKL, 2 threads) in a process of its own."""

    livegen: int | None = None
    reference: int | None = None

    @classmethod
    def configure(cls, both: int | None = None) -> dict[str, int | None]:
        from livegen import device

        try:
            import torch

            torch_default = torch.get_num_threads()
            if both is not None:
                torch.set_num_threads(both)
        except ImportError:
            torch_default = None
        cls.livegen = both if both is not None else device.default_blas_threads()
        cls.reference = both if both is not None else (1 if torch_default is not None else None)
        return {"livegen_blas_threads": cls.livegen, "reference_blas_threads": cls.reference,
                "torch_intra_op_threads": both if both is not None else torch_default}

    @classmethod
    def use(cls, side: str) -> None:
        from livegen import device

        n = cls.livegen if side == "livegen" else cls.reference
        if n is not None:
            device.set_blas_threads(n)


def alternate(
    livegen: Callable[[], Any] | None,
    reference: Callable[[], Any] | None,
    repeats: int,
    *,
    warmup: bool = True,
    warmup_livegen: Callable[[], Any] | None = None,
    warmup_reference: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> tuple[Pair, dict[str, Any]]:
    """Run ``livegen`` and ``reference`` ``repeats`` times each, interleaved, after one warm-up
    call of each (``warmup_*`` replaces the measured call for the warm-up when given, e.g. a
    shorter run that still builds every kernel). Returns the samples and the last result of each
    side (``{"livegen": ..., "reference": ...}``). Either side may be None (not measured)."""
    sides = {"livegen": livegen, "reference": reference}
    warm = {"livegen": warmup_livegen or livegen, "reference": warmup_reference or reference}
    results: dict[str, Any] = {}
    if warmup:
        for name in ("livegen", "reference"):
            if sides[name] is not None:
                Threads.use(name)
                seconds, _ = timed(warm[name])
                if log:
                    log(f"  {label} {name} warm-up {seconds:.3f} s")
    pair = Pair()
    for i in range(repeats):
        order = ("livegen", "reference") if i % 2 == 0 else ("reference", "livegen")
        for name in order:
            fn = sides[name]
            if fn is None:
                continue
            Threads.use(name)
            seconds, results[name] = timed(fn)
            getattr(pair, name).append(seconds)
            if log:
                log(f"  {label} {name} run {i + 1}/{repeats}: {seconds:.3f} s")
    return pair, results


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, BLAS, library versions and the date (UTC)."""
    from livegen import device

    cpu = _lscpu()
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu.get("Model name") or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "cpu_flags_avx512": "avx512f" in cpu.get("Flags", ""),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("mlx", "torch", "transformers", "stable-audio-tools",
                                                         "numpy", "cmeel-openblas")},
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    dev = device.detect()
    info["mlx_device"] = dev.device
    info["mlx_backend"] = dev.backend
    info["blas"] = dev.blas
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_threads"] = None
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                              "LIVEGEN_BLAS") if k in os.environ}
    return info
