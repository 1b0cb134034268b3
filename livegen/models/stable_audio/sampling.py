"""Stable Audio samplers as pure functions over a ``denoise(x, t) -> v`` callable.

``x`` is an MLX array in NLC layout ``[B, L, C]``; ``t`` a Python float. The maths follows
stable-audio-tools (``inference/sampling.py``: ``sample_rf``, ``sample_flow_pingpong``,
``sample_discrete_euler``, ``sample_rk4``, ``sample_flow_dpmpp``, ``sample_k``) and k-diffusion
(``VDenoiser``, ``get_sigmas_polyexponential``, ``sample_dpmpp_2m``, ``sample_dpmpp_3m_sde``).

Randomness: every fresh noise draw comes from a :class:`NoiseSource`, by default a seeded
``mx.random`` key chain; tests inject pre-drawn arrays to compare with the reference. Between
steps the state is evaluated, ``progress(step, total)`` is called and ``cancel()`` is polled
(raising :class:`livegen.errors.Cancelled`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np

from livegen.errors import Cancelled

DenoiseFn = Callable[[mx.array, float], mx.array]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

RF_SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
V_SAMPLERS = ("dpmpp-3m-sde", "dpmpp-2m-sde", "dpmpp-2m")
V_SIGMA_MIN = 0.3
V_SIGMA_MAX = 500.0


class NoiseSource:
    """Standard-normal draws: ``next(shape)`` from a key chain, or from injected arrays."""

    def __init__(self, key: mx.array | int | None = None, arrays: Sequence | None = None):
        if arrays is None and key is None:
            raise ValueError("NoiseSource needs a key/seed or injected arrays")
        self._key = mx.random.key(key) if isinstance(key, int) else key
        self._arrays = None if arrays is None else list(arrays)
        self.count = 0

    def next(self, shape: Sequence[int], dtype: mx.Dtype = mx.float32) -> mx.array:
        self.count += 1
        if self._arrays is not None:
            if not self._arrays:
                raise RuntimeError("injected noise exhausted")
            out = mx.array(np.asarray(self._arrays.pop(0)))
            if tuple(out.shape) != tuple(shape):
                raise ValueError(f"injected noise has shape {tuple(out.shape)}, expected {tuple(shape)}")
            return out.astype(dtype)
        self._key, sub = mx.random.split(self._key)
        return mx.random.normal(tuple(shape), dtype=dtype, key=sub)


# ----------------------------------------------------------------------------- schedules


def rf_schedule(steps: int, sigma_max: float = 1.0) -> np.ndarray:
    """``sample_rf``'s times: t = sigmoid(-linspace(logsnr_max, 2, steps+1)), t[0]=sigma_max, t[-1]=0."""
    _check_steps(steps)
    sigma_max = min(float(sigma_max), 1.0)
    logsnr_max = math.log((1 - sigma_max) / sigma_max + 1e-6) if sigma_max < 1 else -6.0
    logsnr = np.linspace(logsnr_max, 2.0, steps + 1, dtype=np.float32)
    t = (1.0 / (1.0 + np.exp(logsnr.astype(np.float64)))).astype(np.float32)
    t[0] = sigma_max
    t[-1] = 0.0
    return t


def linear_schedule(steps: int, sigma_max: float = 1.0) -> np.ndarray:
    """``torch.linspace(sigma_max, 0, steps+1)``: the schedule ``sample_rf`` gives rk4.

    (The reference would time-shift it for models with ``distribution_shift_options``; the config
    loader rejects those models.)"""
    _check_steps(steps)
    return np.linspace(min(float(sigma_max), 1.0), 0.0, steps + 1, dtype=np.float32)


def v_sigmas(steps: int, sigma_min: float = V_SIGMA_MIN, sigma_max: float = V_SIGMA_MAX,
             rho: float = 1.0) -> np.ndarray:
    """k-diffusion ``get_sigmas_polyexponential`` followed by a final zero."""
    _check_steps(steps)
    ramp = np.linspace(1.0, 0.0, steps, dtype=np.float32).astype(np.float64) ** rho
    sig = np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return np.concatenate([sig, [0.0]]).astype(np.float32)


def strength_to_sigma(strength: float) -> float:
    """Map an init strength in (0, 1] to a v-objective sigma: tan(strength*pi/2), capped at 500.

    This is the inverse of k-diffusion's ``VDenoiser.sigma_to_t``, so a strength means the same
    fraction of the noise time for both objectives."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"init strength must be in (0, 1], got {strength}")
    return min(math.tan(strength * math.pi / 2), V_SIGMA_MAX)


def _check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")


class _Loop:
    def __init__(self, total: int, progress: ProgressFn | None, cancel: CancelFn | None):
        self.total, self.progress, self.cancel = total, progress, cancel

    def before(self, i: int) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"generation cancelled before step {i + 1} of {self.total}")

    def after(self, i: int, *arrays: mx.array) -> None:
        mx.eval(*arrays)
        if self.progress is not None:
            self.progress(i + 1, self.total)


def _f(v) -> float:
    return float(np.float32(v))


# ----------------------------------------------------------------------------- rf samplers


def sample_pingpong(denoise: DenoiseFn, x: mx.array, ts: np.ndarray, noise: NoiseSource, *,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> mx.array:
    """``sample_flow_pingpong``: denoised = x - t_i v; x = (1 - t_next) denoised + t_next noise."""
    loop = _Loop(len(ts) - 1, progress, cancel)
    for i in range(len(ts) - 1):
        loop.before(i)
        t, t_next = _f(ts[i]), _f(ts[i + 1])
        denoised = x - t * denoise(x, t)
        if t_next == 0.0:
            x = denoised
        else:
            x = (1 - t_next) * denoised + t_next * noise.next(x.shape, x.dtype)
        loop.after(i, x)
    return x


def sample_euler(denoise: DenoiseFn, x: mx.array, ts: np.ndarray, *, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> mx.array:
    """``sample_discrete_euler``: x += (t_next - t) v."""
    loop = _Loop(len(ts) - 1, progress, cancel)
    for i in range(len(ts) - 1):
        loop.before(i)
        t = _f(ts[i])
        dt = _f(np.float32(ts[i + 1]) - np.float32(ts[i]))
        x = x + dt * denoise(x, t)
        loop.after(i, x)
    return x


def sample_rk4(denoise: DenoiseFn, x: mx.array, ts: np.ndarray, *, progress: ProgressFn | None = None,
               cancel: CancelFn | None = None) -> mx.array:
    """``sample_rk4`` (classic 4th-order Runge-Kutta on the velocity field)."""
    loop = _Loop(len(ts) - 1, progress, cancel)
    for i in range(len(ts) - 1):
        loop.before(i)
        t0, t1 = np.float32(ts[i]), np.float32(ts[i + 1])
        dt = np.float32(t1 - t0)
        half = _f(dt / np.float32(2))
        t_mid = _f(t0 + dt / np.float32(2))
        k1 = denoise(x, _f(t0))
        k2 = denoise(x + half * k1, t_mid)
        k3 = denoise(x + half * k2, t_mid)
        k4 = denoise(x + _f(dt) * k3, _f(t1))
        x = x + _f(dt / np.float32(6)) * (k1 + 2 * k2 + 2 * k3 + k4)
        loop.after(i, x)
    return x


def sample_flow_dpmpp(denoise: DenoiseFn, x: mx.array, ts: np.ndarray, *, progress: ProgressFn | None = None,
                      cancel: CancelFn | None = None) -> mx.array:
    """``sample_flow_dpmpp``: DPM-Solver++(2M) in the rectified-flow parametrisation."""
    loop = _Loop(len(ts) - 1, progress, cancel)
    t = ts.astype(np.float64)

    def log_snr(v: float) -> float:  # -inf at t=1, +inf at t=0, as torch computes it
        if v <= 0:
            return math.inf
        return math.log((1 - v) / v) if v < 1 else -math.inf

    old = None
    for i in range(len(t) - 1):
        loop.before(i)
        t_curr, t_next = t[i], t[i + 1]
        denoised = x - _f(t_curr) * denoise(x, _f(t_curr))
        alpha = 1 - t_next
        h = log_snr(t_next) - log_snr(t_curr)
        coef = -alpha * math.expm1(-h)
        if old is None or t_next == 0:
            x = _f(t_next / t_curr) * x + _f(coef) * denoised
        else:
            r = (log_snr(t_curr) - log_snr(t[i - 1])) / h
            d = _f(1 + 1 / (2 * r)) * denoised - _f(1 / (2 * r)) * old
            x = _f(t_next / t_curr) * x + _f(coef) * d
        old = denoised
        loop.after(i, x, old)
    return x


def sample_rf(denoise: DenoiseFn, noise: mx.array, noise_source: NoiseSource, *, steps: int,
              sampler: str = "pingpong", init: mx.array | None = None, sigma_max: float = 1.0,
              progress: ProgressFn | None = None,
              cancel: CancelFn | None = None) -> mx.array:
    """stable-audio-tools ``sample_rf``: start from noise (or init*(1-s) + noise*s) and integrate."""
    sigma_max = min(float(sigma_max), 1.0)
    x = noise if init is None else init * (1 - sigma_max) + noise * sigma_max
    hooks = {"progress": progress, "cancel": cancel}
    if sampler == "rk4":
        return sample_rk4(denoise, x, linear_schedule(steps, sigma_max), **hooks)
    ts = rf_schedule(steps, sigma_max)
    if sampler == "pingpong":
        return sample_pingpong(denoise, x, ts, noise_source, **hooks)
    if sampler == "euler":
        return sample_euler(denoise, x, ts, **hooks)
    if sampler == "dpmpp":
        return sample_flow_dpmpp(denoise, x, ts, **hooks)
    raise ValueError(
        f"unknown sampler {sampler!r} for a rectified-flow model; choose from {', '.join(RF_SAMPLERS)}"
    )


# ----------------------------------------------------------------------------- v-objective samplers


def v_denoiser(model: DenoiseFn) -> Callable[[mx.array, float], mx.array]:
    """k-diffusion ``VDenoiser``: turns a v-prediction model into a denoiser D(x, sigma)."""

    def denoised(x: mx.array, sigma: float) -> mx.array:
        s = np.float32(sigma)
        c_skip = _f(1 / (s * s + 1))
        c_out = _f(-s / np.sqrt(s * s + 1))
        c_in = _f(1 / np.sqrt(s * s + 1))
        t = _f(np.arctan(s) / np.float32(math.pi) * 2)
        return model(x * c_in, t) * c_out + x * c_skip

    return denoised


def sample_dpmpp_3m_sde(model: Callable[[mx.array, float], mx.array], x: mx.array, sigmas: np.ndarray,
                        noise: NoiseSource | None, *, eta: float = 1.0, s_noise: float = 1.0,
                        progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> mx.array:
    """k-diffusion ``sample_dpmpp_3m_sde`` over a denoiser ``model(x, sigma)``; eta=0 is deterministic."""
    loop = _Loop(len(sigmas) - 1, progress, cancel)
    sig = sigmas.astype(np.float64)
    d_1 = d_2 = None
    h_1 = h_2 = None
    h = None
    for i in range(len(sig) - 1):
        loop.before(i)
        denoised = model(x, _f(sig[i]))
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            h_eta = h * (eta + 1)
            x = _f(math.exp(-h_eta)) * x + _f(-math.expm1(-h_eta)) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / _f(r0)
                d1_1 = (d_1 - d_2) / _f(r1)
                d1 = d1_0 + (d1_0 - d1_1) * _f(r0 / (r0 + r1))
                dd = (d1_0 - d1_1) / _f(r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + _f(phi_2) * d1 - _f(phi_3) * dd
            elif h_1 is not None:
                x = x + _f(phi_2) * ((denoised - d_1) / _f(h_1 / h))
            if eta:
                scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + noise.next(x.shape, x.dtype) * _f(scale)
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        loop.after(i, x, d_1)
    return x


def sample_dpmpp_2m(model: Callable[[mx.array, float], mx.array], x: mx.array, sigmas: np.ndarray, *,
                    progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> mx.array:
    """k-diffusion ``sample_dpmpp_2m`` (deterministic) over a denoiser ``model(x, sigma)``."""
    loop = _Loop(len(sigmas) - 1, progress, cancel)
    sig = sigmas.astype(np.float64)
    old = None
    for i in range(len(sig) - 1):
        loop.before(i)
        denoised = model(x, _f(sig[i]))
        if sig[i + 1] == 0:
            x = denoised  # sigma_fn(inf)/sigma_fn(t) = 0 and -expm1(-inf) = 1
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            ratio = sig[i + 1] / sig[i]
            if old is None:
                x = _f(ratio) * x - _f(math.expm1(-h)) * denoised
            else:
                r = (math.log(sig[i - 1]) - math.log(sig[i])) / h
                d = _f(1 + 1 / (2 * r)) * denoised - _f(1 / (2 * r)) * old
                x = _f(ratio) * x - _f(math.expm1(-h)) * d
        old = denoised
        loop.after(i, x, old)
    return x


def sample_dpmpp_2m_sde(model: Callable[[mx.array, float], mx.array], x: mx.array, sigmas: np.ndarray,
                        noise: NoiseSource | None, *, eta: float = 1.0, s_noise: float = 1.0,
                        progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> mx.array:
    """k-diffusion ``sample_dpmpp_2m_sde`` (midpoint solver) over a denoiser ``model(x, sigma)``."""
    loop = _Loop(len(sigmas) - 1, progress, cancel)
    sig = sigmas.astype(np.float64)
    old = None
    h_last = None
    h = None
    for i in range(len(sig) - 1):
        loop.before(i)
        denoised = model(x, _f(sig[i]))
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            eta_h = eta * h
            x = _f(sig[i + 1] / sig[i] * math.exp(-eta_h)) * x + _f(-math.expm1(-h - eta_h)) * denoised
            if old is not None:
                r = h_last / h
                x = x + _f(0.5 * -math.expm1(-h - eta_h) * (1 / r)) * (denoised - old)
            if eta:
                scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                x = x + noise.next(x.shape, x.dtype) * _f(scale)
        old = denoised
        h_last = h
        loop.after(i, x, old)
    return x


def sample_v(model: DenoiseFn, noise: mx.array, noise_source: NoiseSource | None, *, steps: int,
             sampler: str = "dpmpp-3m-sde", init: mx.array | None = None, sigma_min: float = V_SIGMA_MIN,
             sigma_max: float = V_SIGMA_MAX, rho: float = 1.0, eta: float = 1.0,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> mx.array:
    """stable-audio-tools ``sample_k`` for the v-objective: sigmas, x = noise*sigma_0 (+ init)."""
    if sampler not in V_SAMPLERS:
        raise ValueError(
            f"unknown sampler {sampler!r} for a v-objective model; choose from {', '.join(V_SAMPLERS)}"
        )
    sigmas = v_sigmas(steps, sigma_min, sigma_max, rho)
    x = noise * _f(sigmas[0])
    if init is not None:
        x = init + x
    den = v_denoiser(model)
    hooks = {"progress": progress, "cancel": cancel}
    if sampler == "dpmpp-3m-sde":
        return sample_dpmpp_3m_sde(den, x, sigmas, noise_source, eta=eta, **hooks)
    if sampler == "dpmpp-2m-sde":
        return sample_dpmpp_2m_sde(den, x, sigmas, noise_source, eta=eta, **hooks)
    return sample_dpmpp_2m(den, x, sigmas, **hooks)
