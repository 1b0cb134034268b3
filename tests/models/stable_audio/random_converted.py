"""A tiny Stable Audio model with random weights, written as a converted livegen directory.

Built with MLX alone (a tiny T5 and tokenizer included), for tests that need a runnable pipeline
but no PyTorch reference.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path


def write_random_converted(out: Path, sample_size: int | None = None) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from livegen.models.stable_audio.convert import StableAudioModel, parse_config
    from livegen.models.t5 import T5Config, T5Encoder
    from livegen.weights import save_converted
    from tests.models.t5_fixtures import make_tiny_tokenizer
    from tests.reference.sa_checkpoint import shrink_config

    cfg = shrink_config("small", dit={"depth": 1}, sample_size=sample_size)
    mx.random.seed(0)
    model = StableAudioModel(parse_config(cfg, "shrunk config"))
    weights = {k: 0.2 * mx.random.normal(v.shape) for k, v in tree_flatten(model.parameters())}
    tok = make_tiny_tokenizer()
    t5cfg = T5Config(vocab_size=len(tok) + 3, d_model=768, d_kv=32, d_ff=64, num_layers=1, num_heads=2)
    t5 = {k: 0.2 * mx.random.normal(v.shape) for k, v in tree_flatten(T5Encoder(t5cfg).parameters())}
    save_converted(out, weights, cfg, {"kind": "stable_audio", "dtype": "float32", "source": "tiny"},
                   extra_weights={"t5/model.safetensors": t5})
    (out / "t5" / "config.json").write_text(json.dumps({"model_type": "t5", **dataclasses.asdict(t5cfg)}))
    tok.save_pretrained(str(out / "t5"))
    return out


BREAKAGES = ("truncated config.json", "config.json not JSON", "no manifest.json", "no t5", "truncated safetensors")


def broken_copy(src: Path, dst: Path, how: str) -> Path:
    """A copy of the converted folder ``src`` at ``dst`` damaged as ``how`` (one of BREAKAGES) says."""
    shutil.copytree(src, dst)
    if how == "truncated config.json":
        text = (dst / "config.json").read_text()
        (dst / "config.json").write_text(text[: len(text) // 2])
    elif how == "config.json not JSON":
        (dst / "config.json").write_text("model_type: diffusion_cond\n")
    elif how == "no manifest.json":
        (dst / "manifest.json").unlink()
    elif how == "no t5":
        shutil.rmtree(dst / "t5")
    elif how == "truncated safetensors":
        w = dst / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    else:
        raise ValueError(f"unknown breakage {how!r}")
    return dst
