"""Tiny random Stable Audio Open checkpoints in the real on-disk format, plus the reference model.

``build_tiny_stable_audio(out_dir, "small" | "1.0")`` takes the real ``model_config.json`` of
Stable Audio Open small / 1.0, shrinks the widths (see ``shrink_config``), builds the reference
``stable_audio_tools`` model from it with a tiny random T5 in place of the ``t5-base`` download,
re-randomises every parameter (the reference zero-initialises several layers, which would let a
wrong port pass) and writes::

    out_dir/stable-audio/model.safetensors   # the wrapper's whole state_dict, real key names
    out_dir/stable-audio/model_config.json   # the shrunk config
    out_dir/t5-base/                         # transformers save_pretrained: T5 encoder + tokenizer

It returns the reference model (eval mode, fp32) so that parity tests compare against exactly the
weights that were written.

T5 precision: the reference conditioner casts its T5 to fp16. By default (``t5_fp32=True``) the
returned reference model's T5 is the fp32 model that was saved (not the fp16 cast), so parity
tests compare fp32 with fp32;
pass ``t5_fp32=False`` to keep the reference's fp16 T5 (to measure the fp16-vs-fp32 gap). Do not
cast a T5 to fp16 and back in place: the fp16 rounding stays (use ``swap_t5`` with a copy).

Shrinking notes:
- small: DiT embed 64, depth 2, 2 heads (head dim 32), qk_norm "ln", project_cond_tokens true.
- 1.0: project_cond_tokens is false there, so the DiT's cross-attention keys/values stay 768 wide
  (cond_dim of t5-base) and the reference splits them into ``768 // head_dim`` heads which must
  divide the number of query heads. With embed 64 this breaks the reference (24 kv heads for
  2 query heads), so the 1.0 shape uses embed 768 with 12 heads (head dim 64 as in the real 1.0;
  rotary on half the head). ``global_cond_dim`` is left as in the real configs: it is
  (number of global conditioners) * cond_dim, i.e. 768 for small and 1536 for 1.0.
- Oobleck: channels 8, c_mults [1, 2], strides [2, 2], so downsampling_ratio 4; latent_dim 64
  (encoder 128 for the VAE bottleneck) and T5 max_length (64 / 128) are kept.

Import only from tests that hold the ``sat_ref`` fixture (torch and stable_audio_tools are
imported lazily inside the functions).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

# The real configs, as published with stabilityai/stable-audio-open-small and -1.0
# (identical to /work/shared/reference/*.model_config.json; kept here so CI needs no network).
_OOBLECK = {
    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
                                              "strides": [2, 4, 4, 8, 8], "latent_dim": 128, "use_snake": True}},
    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
                                              "strides": [2, 4, 4, 8, 8], "latent_dim": 64, "use_snake": True,
                                              "final_tanh": False}},
    "bottleneck": {"type": "vae"},
    "latent_dim": 64,
    "downsampling_ratio": 2048,
    "io_channels": 2,
}

REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "small": {
        "model_type": "diffusion_cond",
        "sample_size": 524288,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "model_half": False,
                             "config": copy.deepcopy(_OOBLECK)},
            "conditioning": {
                "configs": [
                    {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}},
                ],
                "cond_dim": 768,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "diffusion_objective": "rf_denoiser",
                "type": "dit",
                "config": {"io_channels": 64, "embed_dim": 1024, "depth": 16, "num_heads": 8,
                           "cond_token_dim": 768, "global_cond_dim": 768, "project_cond_tokens": True,
                           "transformer_type": "continuous_transformer", "attn_kwargs": {"qk_norm": "ln"}},
            },
            "io_channels": 64,
        },
    },
    "1.0": {
        "model_type": "diffusion_cond",
        "sample_size": 2097152,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "model_half": False,
                             "config": copy.deepcopy(_OOBLECK)},
            "conditioning": {
                "configs": [
                    {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                    {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                ],
                "cond_dim": 768,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "type": "dit",
                "config": {"io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24,
                           "cond_token_dim": 768, "global_cond_dim": 1536, "project_cond_tokens": False,
                           "transformer_type": "continuous_transformer"},
            },
            "io_channels": 64,
        },
    },
}

TINY_DIT: dict[str, dict[str, int]] = {
    "small": {"embed_dim": 64, "depth": 2, "num_heads": 2},
    "1.0": {"embed_dim": 768, "depth": 2, "num_heads": 12},
}

# Tiny T5 with t5-base's width (cond_dim 768 is fixed by the conditioner).
TINY_T5: dict[str, int] = {"d_model": 768, "num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64}

DEFAULT_REVISION = "0123456789abcdef0123456789abcdef01234567"


from tests.reference.sat import install_torchaudio_stand_in  # noqa: E402,F401  (re-export)


def load_reference():
    """``tests.reference.sat.load()`` plus the model modules that need the torchaudio stand-in."""
    from tests.reference import sat

    return sat.load()


def real_config(kind: str) -> dict[str, Any]:
    """A deep copy of the real model_config.json of ``kind`` ("small" or "1.0")."""
    if kind not in REAL_CONFIGS:
        raise ValueError(f"kind must be one of {sorted(REAL_CONFIGS)}, got {kind!r}")
    return copy.deepcopy(REAL_CONFIGS[kind])


def shrink_config(
    kind: str,
    *,
    dit: dict[str, Any] | None = None,
    sample_size: int | None = None,
) -> dict[str, Any]:
    """The real config of ``kind`` with tiny widths (see the module docstring). ``dit`` overrides
    DiT config entries (e.g. ``{"depth": 1}``); ``sample_size`` defaults to 256 latents."""
    cfg = real_config(kind)
    model = cfg["model"]
    model["diffusion"]["config"].update(TINY_DIT[kind])
    if dit:
        model["diffusion"]["config"].update(dit)
    ae = model["pretransform"]["config"]
    for part in ("encoder", "decoder"):
        ae[part]["config"].update({"channels": 8, "c_mults": [1, 2], "strides": [2, 2]})
    ae["downsampling_ratio"] = 4
    cfg["sample_size"] = sample_size if sample_size is not None else 256 * ae["downsampling_ratio"]
    return cfg


def randomize_(module, seed: int = 0) -> None:
    """Re-randomise every parameter and float buffer of a torch module in place (deterministic).

    Weight-norm magnitudes (``weight_g``), layer-norm gains (``gamma``, ``*_norm.weight``) are
    drawn in [0.5, 1.5) so they stay positive; Snake ``alpha``/``beta`` (log scale) and layer-norm
    ``beta`` ~ 0.3 N(0, 1); Fourier frequencies (``timestep_features.weight``, number embedders'
    ``weights``) ~ N(0, 1); biases ~ 0.1 N(0, 1); weights ~ N(0, 1/fan_in). Rotary ``inv_freq``
    buffers are fixed tables and are left alone.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = dict(module.named_parameters())
    tensors.update({k: v for k, v in module.named_buffers() if v is not None and v.is_floating_point()})
    with torch.no_grad():
        for name in sorted(tensors):
            p = tensors[name]
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "inv_freq":
                continue
            if leaf in ("weight_g", "gamma") or name.endswith("_norm.weight"):
                new = 0.5 + torch.rand(p.shape, generator=gen)
            elif leaf in ("alpha", "beta"):
                new = 0.3 * torch.randn(p.shape, generator=gen)
            elif name.endswith(("timestep_features.weight", "embedding.0.weights")):
                new = torch.randn(p.shape, generator=gen)
            elif p.ndim <= 1:
                new = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                new = torch.randn(p.shape, generator=gen) / math.sqrt(max(math.prod(p.shape[1:]), 1))
            p.copy_(new.to(p.dtype))


def _build_reference(cfg: dict[str, Any], t5_dir: Path):
    """Build the reference wrapper with the T5 conditioner reading from ``t5_dir``."""
    from unittest import mock

    import transformers

    ref = load_reference()
    orig_model = transformers.T5EncoderModel.from_pretrained
    orig_tok = transformers.AutoTokenizer.from_pretrained

    def model_from_local(*_args, **kwargs):
        return orig_model(str(t5_dir), **kwargs)

    def tokenizer_from_local(*_args, **kwargs):
        return orig_tok(str(t5_dir), **kwargs)

    with mock.patch.object(transformers.T5EncoderModel, "from_pretrained", side_effect=model_from_local), \
            mock.patch.object(transformers.AutoTokenizer, "from_pretrained", side_effect=tokenizer_from_local):
        return ref.factory.create_model_from_config(cfg)


def build_tiny_stable_audio(
    out_dir: str | Path,
    kind: str = "small",
    seed: int = 0,
    *,
    dit: dict[str, Any] | None = None,
    sample_size: int | None = None,
    t5_fp32: bool = True,
) -> dict[str, Any]:
    """Write a tiny random Stable Audio checkpoint of ``kind`` ("small" | "1.0") under ``out_dir``.

    Returns a dict with ``model`` (the reference ConditionedDiffusionModelWrapper, eval mode),
    ``config`` (the shrunk config dict), ``checkpoint_dir``, ``weights`` and ``config_path``
    (``out_dir/stable-audio/...``), ``t5_dir`` (``out_dir/t5-base``), ``t5`` (the reference
    conditioner's T5EncoderModel) and ``tokenizer``.
    """
    import torch
    from safetensors.torch import save_file

    from tests.models.t5_fixtures import make_tiny_t5

    out_dir = Path(out_dir)
    cfg = shrink_config(kind, dit=dit, sample_size=sample_size)
    t5_dir = out_dir / "t5-base"
    t5_fp32_model, _ = make_tiny_t5(t5_dir, seed=seed + 1, **TINY_T5)

    torch.manual_seed(seed)
    model = _build_reference(cfg, t5_dir)
    randomize_(model, seed=seed)
    model = model.float().eval()

    t5_conditioners = [c for c in model.conditioner.conditioners.values() if hasattr(c, "tokenizer")]
    for cond in t5_conditioners:
        if t5_fp32:
            # The conditioner cast its T5 to fp16 on construction; casting back would keep the
            # fp16 rounding, so hand it the fp32 model that was saved instead.
            cond.__dict__["model"] = t5_fp32_model.eval()
        cond.model.eval()

    ckpt_dir = out_dir / "stable-audio"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    weights = ckpt_dir / "model.safetensors"
    save_file(state, str(weights))
    config_path = ckpt_dir / "model_config.json"
    config_path.write_text(json.dumps(cfg, indent=2))

    t5 = t5_conditioners[0].model if t5_conditioners else None
    tokenizer = t5_conditioners[0].tokenizer if t5_conditioners else None
    return {
        "model": model,
        "config": cfg,
        "checkpoint_dir": ckpt_dir,
        "weights": weights,
        "config_path": config_path,
        "t5_dir": t5_dir,
        "t5": t5,
        "tokenizer": tokenizer,
    }


def swap_t5(model, t5):
    """Put ``t5`` (a T5EncoderModel) into the reference model's T5 conditioner(s); returns the
    previous one. The conditioner keeps its T5 outside ``state_dict`` (``__dict__["model"]``)."""
    previous = None
    for cond in model.conditioner.conditioners.values():
        if hasattr(cond, "tokenizer"):
            previous = cond.model
            cond.__dict__["model"] = t5
    return previous


def hub_cache_layout(
    cache_root: str | Path,
    repo_id: str,
    src_dir: str | Path,
    revision: str = DEFAULT_REVISION,
) -> Path:
    """Lay ``src_dir``'s files out as the Hugging Face hub cache holds a snapshot of ``repo_id``:
    ``cache_root/models--org--name/{snapshots/<revision>/..., refs/main}`` (files are copied; the
    real cache uses ``blobs/`` plus symlinks). Returns the snapshot directory."""
    src_dir = Path(src_dir)
    repo_dir = Path(cache_root) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(src_dir.rglob("*")):
        if path.is_file():
            dest = snapshot / path.relative_to(src_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot
