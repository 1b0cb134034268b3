"""Stable Audio Open (small, 1.0): livegen vs stable-audio-tools, random weights, fp32 on the CPU.

The reference model is built from the real ``model_config.json`` (``tests/reference/sa_checkpoint``)
with a random T5 of t5-base's size (``tests/models/t5_fixtures.make_tiny_t5``: 12 layers, width 768,
a small word-level tokenizer; the compute per token is that of t5-base), every parameter is
re-randomised, and the checkpoint is written in the real on-disk format for livegen to load
through its user path (``StableAudioPipeline.from_pretrained``), so both compute with the same
weights. The reference's T5 runs in fp32 (its conditioner casts t5-base to fp16, which on the
CPU is slower; fp32 is the setting favourable to the reference and equal to livegen's).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from bench.flops import dit_forward_flops
from bench.timing import Pair, alternate

PROMPT = "warm deep techno loop with analog bass"
T5_BASE = {"d_model": 768, "d_kv": 64, "num_heads": 12, "num_layers": 12, "d_ff": 3072}


@dataclass
class Sizes:
    """What a run measures: the real latent lengths, or tiny ones for ``--smoke``."""

    smoke: bool

    def config(self, kind: str) -> dict[str, Any]:
        from tests.reference.sa_checkpoint import real_config, shrink_config

        if not self.smoke:
            return real_config(kind)
        cfg = shrink_config(kind, dit={"depth": 1})
        cfg["sample_size"] = 8 * cfg["model"]["pretransform"]["config"]["downsampling_ratio"]
        return cfg

    def t5(self) -> dict[str, int]:
        from tests.reference.sa_checkpoint import TINY_T5

        return dict(TINY_T5) if self.smoke else dict(T5_BASE)


@dataclass
class Built:
    kind: str
    config: dict[str, Any]
    ref: Any  # stable-audio-tools ConditionedDiffusionModelWrapper (fp32, eval)
    dit: Any  # livegen DiffusionTransformer with the same weights
    pipe: Any | None  # livegen StableAudioPipeline (None when only the DiT is benchmarked)

    @property
    def latent_length(self) -> int:
        return self.config["sample_size"] // self.config["model"]["pretransform"]["config"]["downsampling_ratio"]

    @property
    def seconds(self) -> float:
        return self.config["sample_size"] / self.config["sample_rate"]

    def numbers(self) -> dict[str, float]:
        ids = [c["id"] for c in self.config["model"]["conditioning"]["configs"]]
        out = {"seconds_total": self.seconds}
        if "seconds_start" in ids:
            out["seconds_start"] = 0.0
        return out


def build(kind: str, sizes: Sizes, workdir: Path, *, pipeline: bool, log: Callable[[str], None]) -> Built:
    """Reference model with random weights, and livegen loaded from the same weights."""
    import torch
    from safetensors.torch import save_file

    from tests.models.t5_fixtures import make_tiny_t5
    from tests.reference.sa_checkpoint import _build_reference, randomize_, swap_t5

    cfg = sizes.config(kind)
    root = workdir / f"sa-{kind}"
    t5_dir = root / "t5-base"
    t5_model, _ = make_tiny_t5(t5_dir, seed=1, **sizes.t5())
    torch.manual_seed(0)
    ref = _build_reference(cfg, t5_dir)
    randomize_(ref, seed=0)
    ref = ref.float().eval()
    swap_t5(ref, t5_model.float().eval())
    log(f"  built the reference {kind} ({sum(p.numel() for p in ref.parameters()) / 1e6:.0f} M parameters)")
    if pipeline:
        from livegen.models.stable_audio import StableAudioPipeline

        ckpt = root / "stable-audio"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in ref.state_dict().items()}, str(ckpt / "model.safetensors"))
        (ckpt / "model_config.json").write_text(json.dumps(cfg, indent=2))
        pipe = StableAudioPipeline.from_pretrained(str(ckpt), t5=str(t5_dir))  # kept: the daemon part loads it
        return Built(kind, cfg, ref, pipe.model.dit, pipe)
    from livegen.models.stable_audio.config import StableAudioConfig
    from livegen.models.stable_audio.dit import DiffusionTransformer

    dit = DiffusionTransformer(StableAudioConfig.from_dict(cfg).dit)
    weights = {k: mx.array(v.detach().numpy()) for k, v in ref.state_dict().items() if k.startswith("model.model.")}
    dit.load_weights(list(DiffusionTransformer.sanitize(weights).items()), strict=True)
    dit.eval()
    mx.eval(dit.parameters())
    del weights
    return Built(kind, cfg, ref, dit, None)


def rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (the parity figure used throughout the project)."""
    return float(np.abs(ours - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` with stdout/stderr captured (the reference prints seeds and progress bars)."""

    def run():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn()

    return run


def _unavailable(*_a, **_k):
    raise RuntimeError("torchaudio stand-in: resampling is not available in the benchmark")


def reference_generation_module():
    """``stable_audio_tools.inference.generation`` (imports torchaudio at module level for
    resampling helpers that text-to-audio generation never calls; the same stand-in as
    ``tests/reference/sat.py`` uses for the model modules, removed again after the import)."""
    from tests.reference import sat

    sat.load()
    name = "stable_audio_tools.inference.generation"
    if name in sys.modules:
        return sys.modules[name]
    try:
        import torchaudio  # noqa: F401

        return importlib.import_module(name)
    except Exception:
        for mod in [m for m in sys.modules if m.split(".")[0] == "torchaudio"]:
            del sys.modules[mod]
    ta = types.ModuleType("torchaudio")
    tr = types.ModuleType("torchaudio.transforms")
    for attr in ("Resample", "Loudness", "MelSpectrogram", "Spectrogram"):
        setattr(tr, attr, _unavailable)
    ta.transforms = tr
    sys.modules.update({"torchaudio": ta, "torchaudio.transforms": tr})
    try:
        return importlib.import_module(name)
    finally:
        sys.modules.pop("torchaudio", None)
        sys.modules.pop("torchaudio.transforms", None)


def reference_inputs(b: Built, prompt: str = PROMPT) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        return b.ref.get_conditioning_inputs(b.ref.conditioner([{"prompt": prompt, **b.numbers()}], "cpu"))


def dit_forward_pair(b: Built, cfg_scale: float, repeats: int, log, warm_length: int | None = None
                     ) -> tuple[Pair, dict[str, Any]]:
    """One DiT forward (with CFG: batch 2) on both sides, from the same conditioning and input.

    Both sides do all the work of one reference forward: conditioning projections and every
    layer's cross-attention keys/values (livegen: ``prepare_guidance``), then the transformer."""
    import torch

    from livegen.models.stable_audio.dit import guided_velocity

    inputs = reference_inputs(b)
    np_in = {k: (None if v is None else v.detach().numpy()) for k, v in inputs.items()}
    length = b.latent_length
    x = np.random.default_rng(0).standard_normal((1, b.config["model"]["io_channels"], length)).astype(np.float32)
    t = 0.7

    def lg_at(n: int):
        def run():
            g = b.dit.prepare_guidance(mx.array(np_in["cross_attn_cond"]), mx.array(np_in["global_cond"]),
                                       cfg_scale, cross_attn_mask=mx.array(np_in["cross_attn_mask"]), length=n)
            v = guided_velocity(b.dit, mx.array(x[:, :, :n].transpose(0, 2, 1)), mx.array([t]), g)
            mx.eval(v)
            return np.array(v).transpose(0, 2, 1)

        return run

    def ref_at(n: int):
        xt = torch.from_numpy(np.ascontiguousarray(x[:, :, :n]))

        def run():
            with torch.no_grad():
                return b.ref.model(xt, torch.tensor([t]), **inputs, cfg_scale=cfg_scale, batch_cfg=True).numpy()

        return run

    wl = warm_length or length
    pair, res = alternate(lg_at(length), ref_at(length), repeats, warmup_livegen=lg_at(wl),
                          warmup_reference=ref_at(wl), log=log, label=f"{b.kind} dit cfg={cfg_scale}")
    dcfg = b.dit.config
    cond_tokens = np_in["cross_attn_cond"].shape[1]
    flops = dit_forward_flops(dcfg, length, cond_tokens, batch=2 if cfg_scale != 1.0 else 1)
    extra = {"flops": flops["total"], "flops_breakdown": flops, "latent_length": length,
             "cond_tokens": cond_tokens, "batch": 2 if cfg_scale != 1.0 else 1, "cfg_scale": cfg_scale,
             "max_rel_diff": rel_diff(res["livegen"], res["reference"])}
    return pair, extra


def pingpong_pair(b: Built, steps: int, repeats: int, log) -> tuple[Pair, dict[str, Any]]:
    """The 8-step ping-pong sampling loop (cfg 1), from the conditioning to the final latents."""
    import torch

    ref_mod = b.ref
    sampling = importlib.import_module("stable_audio_tools.inference.sampling")
    inputs = reference_inputs(b)
    cond = b.pipe.condition(PROMPT, b.seconds)
    length = b.latent_length
    noise = np.random.default_rng(1).standard_normal((1, 64, length)).astype(np.float32)

    def lg(n_steps: int):
        return lambda: b.pipe.sample(cond, noise, steps=n_steps, sampler="pingpong", cfg_scale=1.0, seed=0)

    def ref(n_steps: int):
        def run():
            torch.manual_seed(0)
            return sampling.sample_rf(ref_mod.model, torch.from_numpy(noise), steps=n_steps, sampler_type="pingpong",
                                      device="cpu", dist_shift=ref_mod.dist_shift, cfg_scale=1.0,
                                      batch_cfg=True, rescale_cfg=True, **inputs).numpy()

        return _quiet(run)

    pair, _ = alternate(lg(steps), ref(steps), repeats, warmup_livegen=lg(1), warmup_reference=ref(1),
                        log=log, label=f"{b.kind} pingpong")
    flops = steps * dit_forward_flops(b.dit.config, length, inputs["cross_attn_cond"].shape[1], 1)["total"]
    return pair, {"flops": flops, "steps": steps, "latent_length": length,
                  "note": "FLOPs: steps x one reference forward (livegen projects the conditioning once)"}


def vae_decode_pair(b: Built, repeats: int, log) -> tuple[Pair, dict[str, Any]]:
    """One Oobleck VAE decode of the clip's latents [1, 64, L]."""
    import torch

    length = b.latent_length
    lat = np.random.default_rng(2).standard_normal((1, 64, length)).astype(np.float32)
    warm = min(length, 16)

    def lg(n: int):
        return lambda: b.pipe.decode(lat[:, :, :n])

    def ref(n: int):
        lt = torch.from_numpy(np.ascontiguousarray(lat[:, :, :n]))

        def run():
            with torch.no_grad():
                return b.ref.pretransform.decode(lt).numpy()

        return run

    pair, res = alternate(lg(length), ref(length), repeats, warmup_livegen=lg(warm), warmup_reference=ref(warm),
                          log=log, label=f"{b.kind} vae decode")
    return pair, {"flops": vae_decode_flops(b, length), "latent_length": length,
                  "max_rel_diff": rel_diff(res["livegen"], res["reference"])}


def vae_decode_flops(b: Built, length: int) -> float:
    """Convolution FLOPs of the reference decoder (torch's counter on 4 latents, scaled: every
    layer's output length is proportional to the input's)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    probe = 4
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        b.ref.pretransform.decode(torch.zeros(1, 64, probe))
    return counter.get_total_flops() * length / probe


def generate_pair(b: Built, steps: int, repeats: int, log) -> tuple[Pair, dict[str, Any]]:
    """The whole text-to-audio call: prompt -> T5 -> 8 ping-pong steps -> VAE decode -> audio.

    Reference: ``stable_audio_tools.inference.generation.generate_diffusion_cond`` as its README
    calls it (cfg 1, the small model's defaults); livegen: ``StableAudioPipeline.generate``."""
    gen = reference_generation_module()
    sample_size = b.config["sample_size"]
    sr = b.config["sample_rate"]
    seconds = b.seconds

    def lg(n_steps: int, secs: float):
        return lambda: b.pipe.generate(PROMPT, seconds=secs, steps=n_steps, cfg_scale=1.0, sampler="pingpong",
                                       seed=1)

    def ref(n_steps: int, size: int):
        import torch

        def run():
            with torch.no_grad():
                return gen.generate_diffusion_cond(
                    b.ref, steps=n_steps, cfg_scale=1.0,
                    conditioning=[{"prompt": PROMPT, **b.numbers()}], sample_size=size,
                    sampler_type="pingpong", device="cpu", seed=1).numpy()

        return _quiet(run)

    ratio = b.config["model"]["pretransform"]["config"]["downsampling_ratio"]
    warm_size = min(sample_size, 16 * ratio)
    pair, res = alternate(lg(steps, seconds), ref(steps, sample_size), repeats,
                          warmup_livegen=lg(1, warm_size / sr), warmup_reference=ref(1, warm_size),
                          log=log, label=f"{b.kind} generate")
    shape_ok = tuple(res["livegen"].shape) == tuple(res["reference"].shape[1:])
    cond_tokens = reference_inputs(b)["cross_attn_cond"].shape[1]
    flops = steps * dit_forward_flops(b.dit.config, b.latent_length, cond_tokens, 1)["total"]
    flops += vae_decode_flops(b, b.latent_length)
    return pair, {"flops": flops, "steps": steps, "seconds": seconds, "sample_size": sample_size,
                  "output_shapes_match": shape_ok,
                  "note": "FLOPs: DiT steps + VAE decode (the T5 encoder of 64 tokens is left out)"}
