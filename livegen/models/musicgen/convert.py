"""Convert a transformers-format MusicGen checkpoint into livegen's MLX cache.

The converted directory holds ``model.safetensors`` with MLX names (decoder ``decoder.*``,
``lm_heads.*``, ``enc_to_dec_proj.*``, ``audio_enc_to_dec_proj.*``; T5 under ``text_encoder.``;
EnCodec with weight norm fused and conv weights in MLX layout under ``audio_encoder.``),
``config.json`` (the checkpoint's config plus its ``generation_config``), ``manifest.json``, and the
tokenizer / feature-extractor files copied from the snapshot. Pickle (``.bin``) weights are read
only with ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from livegen.errors import ModelTypeError, WeightsError
from livegen.models.musicgen.config import MusicGenConfig
from livegen.models.musicgen.encodec import Encodec, EncodecConfig
from livegen.models.musicgen.transformer import MusicGenLM
from livegen.models.t5 import T5Config, T5Encoder

FORMAT = "livegen-musicgen-mlx"
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "added_tokens.json",
    "preprocessor_config.json",
    "generation_config.json",
)
_PATTERNS = ["*.json", "*.safetensors", "spiece.model"]
_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def is_converted(path: str | Path) -> bool:
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except ValueError:
        return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not readable JSON ({' '.join(str(exc).split())}).") from None


def _expected(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}


def convert_weights(
    config: MusicGenConfig,
    weights: dict[str, mx.array],
    dtype: str = "float32",
    source: str = "MusicGen checkpoint",
) -> dict[str, mx.array]:
    """transformers MusicGen weights -> one dict of MLX-named arrays, checked strictly per part."""
    from livegen.weights import check_keys

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    dt = _DTYPES[dtype]
    lm = MusicGenLM.sanitize(weights)
    check_keys(_expected(MusicGenLM(config)), lm, f"{source} (decoder)")
    t5 = T5Encoder.sanitize(weights, prefix="text_encoder.")
    check_keys(_expected(T5Encoder(T5Config.from_dict(config.text_encoder))), t5, f"{source} (text_encoder)")
    audio = {k[len("audio_encoder.") :]: v for k, v in weights.items() if k.startswith("audio_encoder.")}
    audio = Encodec.sanitize(audio)
    check_keys(
        _expected(Encodec(EncodecConfig.from_dict(config.audio_encoder))), audio, f"{source} (audio_encoder)"
    )
    out = {k: v.astype(dt) for k, v in lm.items()}
    out.update({"text_encoder." + k: v.astype(dt) for k, v in t5.items()})
    out.update({"audio_encoder." + k: v.astype(mx.float32) for k, v in audio.items()})
    return out


def convert(
    source: str,
    out_dir: str | Path | None = None,
    dtype: str = "float32",
    allow_pickle: bool = False,
    force: bool = False,
) -> Path:
    """Convert ``source`` (short name, repo id or transformers-format dir) and return the MLX dir.

    Without ``out_dir`` the result goes to ``converted_dir("musicgen", repo, revision, dtype)`` and is
    reused when already there (``force`` redoes it).
    """
    from livegen.models import registry
    from livegen.weights import converted_dir, load_weights, resolve, save_converted

    repo = registry.repo_id(source)
    patterns = _PATTERNS + (["*.bin", "*.bin.index.json"] if allow_pickle else [])
    snapshot, info = resolve(repo, allow_patterns=patterns)
    if is_converted(snapshot):
        return snapshot
    config_path = snapshot / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{snapshot} has no config.json; it is not a transformers MusicGen checkpoint.")
    config_data = _read_json(config_path)
    if config_data.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise ModelTypeError(
            f"{snapshot} is not a MusicGen checkpoint (model_type {config_data.get('model_type')!r})."
        )
    gen_path = snapshot / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.is_file() else {}
    if out_dir is None:
        if "repo" in info:
            key, revision = info["repo"], info.get("revision", "unknown")
        else:
            weights_files = sorted(snapshot.glob("*.safetensors")) + sorted(snapshot.glob("*.bin"))
            stamp = max((int(p.stat().st_mtime) for p in weights_files), default=0)
            key, revision = str(snapshot), f"local-{stamp}"
        out_dir = converted_dir("musicgen", key, revision, dtype)
    out_dir = Path(out_dir)
    if is_converted(out_dir) and not force:
        return out_dir
    if not any(snapshot.glob("*.safetensors")) and not allow_pickle:
        raise WeightsError(
            f"{source} has no safetensors weights; its pickle (.bin) weights can run code when loaded: "
            "pass --allow-pickle (allow_pickle=True) to convert them once."
        )
    config = MusicGenConfig.from_dict(config_data, gen)
    weights = load_weights(snapshot, allow_pickle=allow_pickle)
    converted = convert_weights(config, weights, dtype, source=str(snapshot))
    manifest = {"format": FORMAT, "engine": "musicgen", "dtype": dtype, "source": str(source), **info}
    save_converted(out_dir, converted, {**config_data, "generation_config": gen}, manifest)
    for name in _SIDE_FILES:
        if (snapshot / name).is_file():
            shutil.copyfile(snapshot / name, out_dir / name)
    return out_dir
