"""StableAudioPipeline against the stable-audio-tools reference on tiny random checkpoints.

The checkpoints are written in the real on-disk format (``tests/reference/sa_checkpoint.py``) and
loaded through the same path users take (conversion into the livegen cache). The reference
conditioner rounds its T5 weights to fp16 when it is built; the T5 directory is re-saved from
the reference's (fp32-cast) T5 so that both sides use exactly the same T5 weights.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from livegen.errors import Cancelled, ModelTypeError, WeightsError

TOL = 1e-4  # max abs error / max abs value
PROMPT, NEGATIVE = "warm deep bass loop", "bright snare"


def rel(ours: np.ndarray, ref) -> float:
    ref = ref.detach().float().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def lg_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("livegen-cache")
    mp.setenv("LIVEGEN_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def checkpoints(sat_ref, tmp_path_factory):
    from tests.reference.sa_checkpoint import build_tiny_stable_audio

    built: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in built:
            # 1.0 runs on its whole window: keep it short (32 latents) so that generation is quick
            size = {"small": None, "1.0": 32 * 4}[kind]
            b = build_tiny_stable_audio(tmp_path_factory.mktemp(f"sa-{kind}"), kind, sample_size=size)
            b["t5"].save_pretrained(str(b["t5_dir"]))  # the weights the reference really uses
            built[kind] = b
        return built[kind]

    return get


@pytest.fixture(scope="module", params=["small", "1.0"])
def tiny(request, checkpoints, lg_cache):
    from livegen.models.stable_audio import StableAudioPipeline

    b = checkpoints(request.param)
    pipe = StableAudioPipeline.from_pretrained(str(b["checkpoint_dir"]), t5=str(b["t5_dir"]))
    return types.SimpleNamespace(kind=request.param, ref=b["model"], b=b, pipe=pipe)


def _numbers(kind: str, total: float = 3.0) -> dict:
    return {"seconds_total": total, **({"seconds_start": 1.0} if kind == "1.0" else {})}


def _ref_inputs(torch, tiny, cfg_negative: bool = True) -> dict:
    ref, nums = tiny.ref, _numbers(tiny.kind)
    with torch.no_grad():
        inputs = ref.get_conditioning_inputs(ref.conditioner([{"prompt": PROMPT, **nums}], "cpu"))
        if cfg_negative:
            neg = ref.conditioner([{"prompt": NEGATIVE, **nums}], "cpu")
            inputs.update(ref.get_conditioning_inputs(neg, negative=True))
    return inputs


def _our_cond(tiny, negative: bool = True):
    nums = _numbers(tiny.kind)
    return tiny.pipe.condition(PROMPT, nums["seconds_total"], nums.get("seconds_start", 0.0),
                               negative_prompt=NEGATIVE if negative else None)


@pytest.mark.parity
def test_condition_matches_reference(tiny, torch_ref):
    inputs = _ref_inputs(torch_ref, tiny)
    cond = _our_cond(tiny)
    assert rel(cond.cross_attn, inputs["cross_attn_cond"]) < TOL
    assert rel(cond.global_cond, inputs["global_cond"]) < TOL
    assert rel(cond.negative_cross_attn, inputs["negative_cross_attn_cond"]) < TOL
    np.testing.assert_array_equal(cond.cross_attn_mask, inputs["cross_attn_mask"].numpy().astype(bool))
    expected_tokens = {"small": 64 + 1, "1.0": 128 + 2}[tiny.kind]
    assert cond.cross_attn.shape == (1, expected_tokens, 768)


@pytest.mark.parity
@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_velocity_matches_reference(tiny, torch_ref, cfg):
    torch = torch_ref
    inputs = _ref_inputs(torch, tiny)
    cond = _our_cond(tiny)
    x = np.random.default_rng(1).standard_normal((1, 64, 10)).astype(np.float32)
    with torch.no_grad():
        ref = tiny.ref.model(torch.from_numpy(x), torch.tensor([0.7]), **inputs, cfg_scale=cfg, batch_cfg=True)
    assert rel(tiny.pipe.velocity(x, 0.7, cond, cfg_scale=cfg), ref) < TOL


@pytest.mark.parity
def test_encode_decode_match_reference(tiny, torch_ref):
    torch = torch_ref
    rng = np.random.default_rng(2)
    audio = (0.5 * rng.standard_normal((1, 2, 64))).astype(np.float32)
    lat = rng.standard_normal((1, 64, 9)).astype(np.float32)
    pre = tiny.ref.pretransform
    with torch.no_grad():
        h = pre.model.encoder(torch.from_numpy(audio))
        mean = h[:, :64]
        dec = pre.decode(torch.from_numpy(lat))
    assert rel(tiny.pipe.encode(audio), mean) < TOL
    assert rel(tiny.pipe.decode(lat), dec) < TOL
    assert tiny.pipe.decode(lat).shape == (1, 2, 9 * tiny.pipe.ratio)


def _loop_cases(kind: str):
    if kind == "small":
        return [("pingpong", 1.0), ("euler", 1.0)]
    return [("dpmpp-3m-sde", 3.0)]  # the deterministic v samplers are checked on a toy model


@pytest.mark.parity
def test_sampling_loop_matches_reference(tiny, sat_ref, torch_ref, monkeypatch):
    torch = torch_ref
    steps, length = 4, 8
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((1, 64, length)).astype(np.float32)
    fresh = [rng.standard_normal((1, 64, length)).astype(np.float32) for _ in range(steps)]
    inputs = _ref_inputs(torch, tiny)
    cond = _our_cond(tiny)
    for sampler, cfg in _loop_cases(tiny.kind):
        queue = [torch.from_numpy(a) for a in fresh]
        if tiny.kind == "small":
            monkeypatch.setattr(torch, "randn_like", lambda x, q=queue: q.pop(0))
            with torch.no_grad():
                ref = sat_ref.sampling.sample_rf(tiny.ref.model, torch.from_numpy(noise), steps=steps,
                                                 sampler_type=sampler, device="cpu", **inputs,
                                                 cfg_scale=cfg, batch_cfg=True)
        else:
            class Injected:
                def __init__(self, *_a, q=queue, **_k):
                    self.q = q

                def __call__(self, sigma, sigma_next):
                    return self.q.pop(0)

            monkeypatch.setattr(sat_ref.sampling.K.sampling, "BrownianTreeNoiseSampler", Injected)
            with torch.no_grad():
                ref = sat_ref.sampling.sample_k(tiny.ref.model, torch.from_numpy(noise), None, steps,
                                                sampler_type=sampler, sigma_min=0.3, sigma_max=500, rho=1.0,
                                                device="cpu", **inputs, cfg_scale=cfg, batch_cfg=True)
        ours = tiny.pipe.sample(cond, noise, steps=steps, sampler=sampler, cfg_scale=cfg, noise_arrays=fresh)
        err = rel(ours, ref)
        assert err < TOL, f"{sampler}: {err}"


def test_generate_seeded_shape_and_hooks(tiny):
    pipe = tiny.pipe
    seconds = min(0.02, pipe.max_seconds)
    kw = {"steps": 2, "cfg_scale": 1.0}
    a = pipe.generate(PROMPT, seconds=seconds, seed=5, **kw)
    assert a.shape == (2, round(seconds * 44100)) and a.dtype == np.float32 and pipe.sample_rate == 44100
    assert pipe.last_seed == 5 and np.isfinite(a).all() and np.abs(a).max() > 0
    np.testing.assert_array_equal(a, pipe.generate(PROMPT, seconds=seconds, seed=5, **kw))
    assert not np.allclose(a, pipe.generate(PROMPT, seconds=seconds, seed=6, **kw))
    pipe.generate(PROMPT, seconds=seconds, **kw)
    assert isinstance(pipe.last_seed, int)
    seen = []
    pipe.generate(PROMPT, seconds=seconds, seed=1, steps=3, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(Cancelled):
        pipe.generate(PROMPT, seconds=seconds, seed=1, steps=3, cancel=lambda: True)
    with pytest.raises(ValueError, match="exceeds"):
        pipe.generate(PROMPT, seconds=pipe.max_seconds + 1)
    expected = {"small": ("pingpong", 8, 1.0), "1.0": ("dpmpp-3m-sde", 100, 7.0)}[tiny.kind]
    assert (pipe.defaults["sampler"], pipe.defaults["steps"], pipe.defaults["cfg_scale"]) == expected
    if tiny.kind == "small":
        assert pipe.latent_length(seconds) == -(-round(seconds * 44100) // pipe.ratio)
    else:
        assert pipe.latent_length(seconds) == pipe.config.sample_size // pipe.ratio


def test_init_audio_changes_with_strength(tiny):
    pipe = tiny.pipe
    seconds = min(0.02, pipe.max_seconds)
    t = np.arange(round(seconds * 44100)) / 44100
    init = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 220 * t)]).astype(np.float32)
    kw = {"seconds": seconds, "steps": 3, "seed": 2, "cfg_scale": 1.0, "init_audio": init}
    low = pipe.generate(PROMPT, init_strength=0.3, **kw)
    high = pipe.generate(PROMPT, init_strength=0.9, **kw)
    assert low.shape == high.shape == init.shape
    np.testing.assert_array_equal(low, pipe.generate(PROMPT, init_strength=0.3, **kw))
    assert not np.allclose(low, high)
    assert not np.allclose(low, pipe.generate(PROMPT, seconds=seconds, steps=3, seed=2, cfg_scale=1.0))
    with pytest.raises(ValueError, match="init_strength"):
        pipe.generate(PROMPT, init_strength=1.5, **kw)
    pipe.warmup([seconds])


# ----------------------------------------------------------------------------- hub cache and errors


def test_hub_cache_converts_once(checkpoints, tmp_path, monkeypatch):
    from livegen.models.stable_audio import StableAudioPipeline
    from livegen.models.stable_audio import convert as conv
    from tests.reference.sa_checkpoint import DEFAULT_REVISION, hub_cache_layout

    b = checkpoints("small")
    hub = tmp_path / "hub"
    snap = hub_cache_layout(hub, "stabilityai/stable-audio-open-small", b["checkpoint_dir"])
    hub_cache_layout(hub, "google-t5/t5-base", b["t5_dir"])
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "lc"))
    pipe = StableAudioPipeline.from_pretrained("stable-audio-small")
    out = conv.converted_dir("stable_audio", "stabilityai/stable-audio-open-small", DEFAULT_REVISION, "float32")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["repo"] == "stabilityai/stable-audio-open-small" and manifest["revision"] == DEFAULT_REVISION
    assert manifest["t5"] == "google-t5/t5-base" and manifest["kind"] == "stable_audio"
    assert (out / "t5" / "model.safetensors").is_file()
    first = pipe.generate(PROMPT, seconds=0.01, steps=2, seed=3)

    def no_conversion(*_a, **_k):
        raise AssertionError("converted again")

    monkeypatch.setattr(conv, "convert_dir", no_conversion)
    (snap / "model.safetensors").unlink()  # only model_config.json is needed once converted
    shutil.rmtree(hub / "models--google-t5--t5-base")
    again = StableAudioPipeline.from_pretrained("stabilityai/stable-audio-open-small")
    np.testing.assert_array_equal(first, again.generate(PROMPT, seconds=0.01, steps=2, seed=3))
    direct = StableAudioPipeline.from_pretrained(str(out))
    assert direct.source == "stabilityai/stable-audio-open-small"
    with pytest.raises(WeightsError, match="not in the Hugging Face cache .*downloading is off"):
        StableAudioPipeline.from_pretrained("stable-audio-1.0")
    # the default T5 falls back to the legacy repo id "t5-base" when google-t5/t5-base is not cached
    t5_snap = hub_cache_layout(hub, "t5-base", b["t5_dir"])
    assert conv.resolve_t5(None) == (t5_snap, {"repo": "t5-base", "revision": DEFAULT_REVISION})
    shutil.rmtree(hub / "models--t5-base")
    with pytest.raises(WeightsError, match="google-t5/t5-base is not in the Hugging Face cache"):
        conv.resolve_t5(None)


def _copy_ckpt(b: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(b["checkpoint_dir"], dst)
    return dst


def test_corrupt_missing_key_model_type_and_pickle(checkpoints, lg_cache, tmp_path, torch_ref):
    from safetensors.numpy import load_file, save_file

    from livegen.models.stable_audio import StableAudioPipeline

    b = checkpoints("small")
    t5 = str(b["t5_dir"])
    ckpt = _copy_ckpt(b, tmp_path)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"ckpt/model\.safetensors is not a valid safetensors file"):
        StableAudioPipeline.from_pretrained(str(ckpt), t5=t5)

    state = load_file(str(b["weights"]))
    state.pop("model.model.transformer.project_in.weight")
    save_file(state, str(weights))
    with pytest.raises(WeightsError, match=r"ckpt/model\.safetensors does not match .*missing 1: "
                                           r"dit\.transformer\.project_in\.weight"):
        StableAudioPipeline.from_pretrained(str(ckpt), t5=t5)

    cfg = json.loads(b["config_path"].read_text())
    cfg["model_type"] = "autoencoder"
    (ckpt / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelTypeError, match=r"ckpt/model_config\.json has model_type 'autoencoder'"):
        StableAudioPipeline.from_pretrained(str(ckpt), t5=t5)

    shutil.copy(b["config_path"], ckpt / "model_config.json")
    weights.unlink()
    torch = torch_ref
    torch.save({"state_dict": {k: torch.from_numpy(v.copy()) for k, v in load_file(str(b["weights"])).items()}},
               ckpt / "model.ckpt")
    with pytest.raises(WeightsError, match=r"model\.ckpt.*--allow-pickle"):
        StableAudioPipeline.from_pretrained(str(ckpt), t5=t5)
    pipe = StableAudioPipeline.from_pretrained(str(ckpt), t5=t5, allow_pickle=True)
    ref = StableAudioPipeline.from_pretrained(str(b["checkpoint_dir"]), t5=t5)
    x = np.random.default_rng(0).standard_normal((1, 64, 4)).astype(np.float32)
    c = ref.condition(PROMPT, 2.0)
    np.testing.assert_array_equal(pipe.velocity(x, 0.5, c), ref.velocity(x, 0.5, c))


def test_convert_dtype(checkpoints, lg_cache, tmp_path):
    import mlx.core as mx

    from livegen.models.stable_audio import StableAudioPipeline
    from livegen.models.stable_audio.convert import ensure_converted
    from livegen.weights import load_weights

    b = checkpoints("small")
    out = ensure_converted(str(b["checkpoint_dir"]), t5=str(b["t5_dir"]), dtype="bfloat16",
                           output=tmp_path / "bf16")
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "bfloat16"
    assert all(v.dtype == mx.bfloat16 for v in load_weights(out).values())
    pipe = StableAudioPipeline.from_pretrained(str(out))
    assert pipe.dtype == mx.bfloat16
    audio = pipe.generate(PROMPT, seconds=0.01, steps=1, seed=0)
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    with pytest.raises(WeightsError, match="dtype 'int8' is not supported"):
        ensure_converted(str(b["checkpoint_dir"]), dtype="int8")
