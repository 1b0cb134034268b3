from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from livegen.errors import Cancelled
from livegen.models.stable_audio import sampling as S

B, C, L = 2, 3, 5


def _toy(seed: int = 0):
    """A linear velocity field v = (x W)(1 + t) + c t, as numpy parameters."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((C, C)) * 0.3).astype(np.float32)
    c = rng.standard_normal(C).astype(np.float32)
    return w, c


def _mlx_model(w, c, calls=None):
    wm, cm = mx.array(w), mx.array(c)

    def f(x: mx.array, t: float) -> mx.array:  # x NLC
        if calls is not None:
            calls.append(t)
        return (x @ wm) * (1 + t) + cm * t

    return f


def _torch_model(torch, w, c):
    wt, ct = torch.from_numpy(w), torch.from_numpy(c)

    def f(x, t, **_):  # x [B, C, L], t [B]
        tt = t.reshape(-1, 1, 1)
        return torch.einsum("bcl,cd->bdl", x, wt) * (1 + tt) + ct[None, :, None] * tt

    return f


def _noises(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((B, C, L)).astype(np.float32) for _ in range(n)]


def _nlc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 1))


def _close(ours: mx.array, ref, tol: float = 1e-5) -> float:
    ref = ref.detach().numpy() if hasattr(ref, "detach") else ref
    ours = np.array(ours).transpose(0, 2, 1)
    err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
    assert err <= tol, f"relative error {err:.3g} > {tol}"
    return err


def test_rf_schedule_matches_known_values():
    t = S.rf_schedule(8)
    expected = [1, 0.993307, 0.982014, 0.952574, 0.880797, 0.731059, 0.5, 0.268941, 0]
    np.testing.assert_allclose(t, expected, atol=1e-6)
    assert t.dtype == np.float32
    part = S.rf_schedule(4, sigma_max=0.5)
    assert part[0] == np.float32(0.5) and part[-1] == 0 and np.all(np.diff(part) < 0)
    np.testing.assert_allclose(S.linear_schedule(4), [1, 0.75, 0.5, 0.25, 0])
    sig = S.v_sigmas(3, 0.3, 500, 1.0)
    np.testing.assert_allclose(sig, [500, np.sqrt(0.3 * 500), 0.3, 0], rtol=1e-5)
    with pytest.raises(ValueError):
        S.rf_schedule(0)
    assert S.strength_to_sigma(0.5) == pytest.approx(1.0)
    assert S.strength_to_sigma(1.0) == S.V_SIGMA_MAX


def test_noise_source_seeded_and_injected():
    a = S.NoiseSource(7).next((2, 3))
    b = S.NoiseSource(7).next((2, 3))
    c = S.NoiseSource(8).next((2, 3))
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.allclose(np.array(a), np.array(c))
    src = S.NoiseSource(mx.random.key(7))
    first, second = src.next((4,)), src.next((4,))
    assert not np.allclose(np.array(first), np.array(second))
    inj = S.NoiseSource(arrays=[np.ones((2,), np.float32)])
    np.testing.assert_array_equal(np.array(inj.next((2,))), [1, 1])
    with pytest.raises(RuntimeError):
        inj.next((2,))


def test_progress_and_cancel():
    w, c = _toy()
    calls: list[float] = []
    seen: list[tuple[int, int]] = []
    x = mx.zeros((B, L, C))
    S.sample_rf(_mlx_model(w, c, calls), x, S.NoiseSource(0), steps=4, sampler="pingpong",
                progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(calls) == 4 and calls[0] == 1.0

    state = {"n": 0}

    def cancel() -> bool:
        state["n"] += 1
        return state["n"] > 2

    calls.clear()
    with pytest.raises(Cancelled, match="before step 3 of 5"):
        S.sample_rf(_mlx_model(w, c, calls), x, S.NoiseSource(0), steps=5, sampler="euler", cancel=cancel)
    assert len(calls) == 2
    with pytest.raises(Cancelled):
        S.sample_v(_mlx_model(w, c), x, S.NoiseSource(0), steps=3, cancel=lambda: True)
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample_rf(_mlx_model(w, c), x, S.NoiseSource(0), steps=2, sampler="dpmpp-3m-sde")
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample_v(_mlx_model(w, c), x, S.NoiseSource(0), steps=2, sampler="pingpong")


@pytest.mark.parity
@pytest.mark.parametrize("sampler", ["pingpong", "euler", "rk4", "dpmpp"])
@pytest.mark.parametrize("init_strength", [None, 0.6])
def test_rf_samplers_match_reference(sat_ref, torch_ref, monkeypatch, sampler, init_strength):
    torch = torch_ref
    steps = 6
    w, c = _toy()
    noise0, init = _noises(2, seed=3)
    fresh = _noises(steps, seed=4)
    queue = [torch.from_numpy(a) for a in fresh[: steps - 1]]
    monkeypatch.setattr(torch, "randn_like", lambda x: queue.pop(0) if queue else torch.zeros_like(x))
    sigma_max = 1.0 if init_strength is None else init_strength
    ref = sat_ref.sampling.sample_rf(
        _torch_model(torch, w, c), torch.from_numpy(noise0),
        init_data=None if init_strength is None else torch.from_numpy(init),
        steps=steps, sampler_type=sampler, sigma_max=sigma_max, device="cpu",
    )
    ours = S.sample_rf(
        _mlx_model(w, c), mx.array(_nlc(noise0)), S.NoiseSource(arrays=[_nlc(a) for a in fresh[: steps - 1]]),
        steps=steps, sampler=sampler, init=None if init_strength is None else mx.array(_nlc(init)),
        sigma_max=sigma_max,
    )
    _close(ours, ref)


@pytest.mark.parity
@pytest.mark.parametrize("sampler", ["dpmpp-3m-sde", "dpmpp-2m-sde", "dpmpp-2m"])
@pytest.mark.parametrize("init_sigma", [None, 1.0])
def test_v_samplers_match_reference(sat_ref, torch_ref, monkeypatch, sampler, init_sigma):
    torch = torch_ref
    K = sat_ref.sampling.K
    steps = 7
    w, c = _toy(5)
    noise0, init = _noises(2, seed=6)
    fresh = _noises(steps, seed=7)
    queue = [torch.from_numpy(a) for a in fresh]

    class Injected:
        def __init__(self, *_a, **_k):
            pass

        def __call__(self, sigma, sigma_next):
            return queue.pop(0)

    monkeypatch.setattr(K.sampling, "BrownianTreeNoiseSampler", Injected)
    sigma_max = 500.0 if init_sigma is None else init_sigma
    ref = sat_ref.sampling.sample_k(
        _torch_model(torch, w, c), torch.from_numpy(noise0),
        None if init_sigma is None else torch.from_numpy(init), steps, sampler_type=sampler,
        sigma_min=0.3, sigma_max=sigma_max, rho=1.0, device="cpu",
    )
    ours = S.sample_v(
        _mlx_model(w, c), mx.array(_nlc(noise0)), S.NoiseSource(arrays=[_nlc(a) for a in fresh]),
        steps=steps, sampler=sampler, init=None if init_sigma is None else mx.array(_nlc(init)),
        sigma_min=0.3, sigma_max=sigma_max,
    )
    used = steps - len(queue)
    assert used == (steps - 1 if sampler.endswith("sde") else 0)
    _close(ours, ref)
