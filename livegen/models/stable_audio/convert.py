"""Stable Audio checkpoint (hub snapshot or local dir) -> converted MLX directory in the cache.

A converted directory holds::

    model.safetensors   # MLX keys: dit.*, vae.*, conditioner.* (the model's own parameter names)
    config.json         # the original model_config.json
    manifest.json       # kind, source repo/revision or path, dtype, t5 source, livegen version, created
    t5/                 # the T5 encoder (encoder weights in MLX keys + config + tokenizer files)

``livegen convert`` and ``StableAudioPipeline.from_pretrained`` share :func:`ensure_converted`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from livegen.errors import ModelTypeError, WeightsError
from livegen.models.registry import repo_id
from livegen.models.stable_audio.conditioners import Conditioner
from livegen.models.stable_audio.config import StableAudioConfig
from livegen.models.stable_audio.dit import DiffusionTransformer
from livegen.models.stable_audio.vae import AudioAutoencoder, AutoencoderConfig
from livegen.weights import (
    check_keys,
    converted_dir,
    find_weights_file,
    load_weights,
    resolve,
    save_converted,
)

KIND = "stable_audio"
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DEFAULT_T5 = ("google-t5/t5-base", "t5-base")
T5_PATTERNS = [
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
    "spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
]
T5_COPY = ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_OWN_PREFIXES = ("model.model.", "pretransform.model.", "conditioner.conditioners.")


class StableAudioModel(nn.Module):
    """DiT + Oobleck VAE + number conditioners of one checkpoint (the T5 lives apart)."""

    def __init__(self, config: StableAudioConfig):
        super().__init__()
        self.config = config
        self.dit = DiffusionTransformer(config.dit)
        self.vae = AudioAutoencoder(AutoencoderConfig.from_dict(config.pretransform.get("config") or {}))
        self.conditioner = Conditioner.from_config(config)

    def expected_shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in tree_flatten(self.parameters())}

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """A stable-audio-tools state dict -> ``dit.*``/``vae.*``/``conditioner.*`` keys.

        Keys outside the DiT (``model.model.``), the autoencoder (``pretransform.model.``) and the
        number conditioners are kept unchanged, so that a strict check reports them."""
        out = {f"dit.{k}": v for k, v in DiffusionTransformer.sanitize(weights).items()}
        out.update({f"vae.{k}": v for k, v in AudioAutoencoder.sanitize(weights).items()})
        out.update({f"conditioner.{k}": v for k, v in Conditioner.sanitize(weights).items()})
        out.update({k: v for k, v in weights.items() if not k.startswith(_OWN_PREFIXES)})
        return out


def parse_config(config: dict, source: str) -> StableAudioConfig:
    """``StableAudioConfig.from_dict`` with errors that name the file."""
    if config.get("model_type") != "diffusion_cond":
        raise ModelTypeError(
            f"{source} has model_type {config.get('model_type')!r}; the Stable Audio engine needs 'diffusion_cond'."
        )
    try:
        return StableAudioConfig.from_dict(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelTypeError(f"{source} describes a model livegen cannot run: {exc}.") from None


def read_config(directory: Path) -> tuple[dict, Path]:
    for name in ("model_config.json", "config.json"):
        path = directory / name
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except ValueError as exc:
                raise WeightsError(f"{path} is not valid JSON ({exc}).") from None
    raise ModelTypeError(f"{directory} has no model_config.json; it is not a Stable Audio checkpoint.")


def is_converted(path: Path) -> bool:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("kind") == KIND and (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def _dtype(dtype: str | None) -> str:
    name = dtype or "float32"
    if name not in DTYPES:
        raise WeightsError(f"dtype {name!r} is not supported; choose one of {', '.join(DTYPES)}.")
    return name


def _local_revision(directory: Path, allow_pickle: bool) -> str:
    """Stand-in for a commit hash for a local checkpoint: changes when its files change."""
    h = hashlib.sha1(str(directory.resolve()).encode())
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cast(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    return {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}


def resolve_t5(t5: str | None, allow_pickle: bool = False) -> tuple[Path, dict]:
    """The T5 directory: ``t5`` (dir or repo) or google-t5/t5-base, falling back to t5-base."""
    candidates = (t5,) if t5 else DEFAULT_T5
    patterns = T5_PATTERNS + (["pytorch_model.bin"] if allow_pickle else [])
    errors = []
    for name in candidates:
        try:
            return resolve(name, allow_patterns=patterns)
        except WeightsError as exc:
            errors.append(str(exc))
    raise WeightsError(errors[0] if len(errors) == 1 else " / ".join(errors))


def convert_t5(t5_dir: Path, dtype: mx.Dtype, allow_pickle: bool = False) -> tuple[dict[str, mx.array], dict[str, Path]]:
    """T5 encoder weights (MLX keys, checked against its config) and the files to copy."""
    from livegen.models.t5 import T5Config, T5Encoder

    cfg_path = t5_dir / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{t5_dir} has no config.json; is it a T5 model directory?")
    try:
        config = T5Config.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{cfg_path} is not a usable T5 config ({exc}).") from None
    source = find_weights_file(t5_dir, allow_pickle=allow_pickle)
    weights = T5Encoder.sanitize(load_weights(source, allow_pickle=allow_pickle))
    expected = {k: tuple(v.shape) for k, v in tree_flatten(T5Encoder(config).parameters())}
    check_keys(expected, weights, str(source))
    files = {f"t5/{n}": t5_dir / n for n in T5_COPY if (t5_dir / n).is_file()}
    if not any(n in ("t5/spiece.model", "t5/tokenizer.json") for n in files):
        raise WeightsError(f"{t5_dir} has no tokenizer (spiece.model or tokenizer.json).")
    return _cast(weights, dtype), files


def convert_dir(
    src: Path,
    out: Path,
    manifest: dict,
    *,
    t5: str | None = None,
    dtype: str = "float32",
    allow_pickle: bool = False,
) -> Path:
    """Convert the checkpoint in ``src`` into ``out`` (atomically)."""
    config_dict, config_path = read_config(src)
    config = parse_config(config_dict, str(config_path))
    weights_file = find_weights_file(src, allow_pickle=allow_pickle)
    weights = StableAudioModel.sanitize(load_weights(weights_file, allow_pickle=allow_pickle))
    model = StableAudioModel(config)
    check_keys(model.expected_shapes(), weights, str(weights_file))
    mx_dtype = DTYPES[dtype]
    t5_dir, t5_info = resolve_t5(t5, allow_pickle)
    t5_weights, t5_files = convert_t5(t5_dir, mx_dtype, allow_pickle)
    full = {
        "kind": KIND,
        "dtype": dtype,
        "weights_file": weights_file.name,
        "t5": t5_info.get("repo") or t5_info.get("source"),
        "t5_revision": t5_info.get("revision"),
        **manifest,
    }
    save_converted(out, _cast(weights, mx_dtype), config_dict, full,
                   extra_weights={"t5/model.safetensors": t5_weights}, extra_files=t5_files)
    return out


def ensure_converted(
    model: str,
    *,
    t5: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    output: str | Path | None = None,
    force: bool = False,
) -> Path:
    """The converted directory of ``model`` (short name, repo id, snapshot dir or converted dir),
    converting it first when the cache does not hold it yet (or when ``force``/``output``)."""
    dtype = _dtype(dtype)
    path = Path(model).expanduser()
    if path.is_dir() and is_converted(path):
        if output is not None:
            raise WeightsError(f"{path} is already a converted livegen model; copy it instead of converting it.")
        return path
    repo = repo_id(model)
    if path.is_dir():
        src, info = resolve(str(path))
        revision = _local_revision(src, allow_pickle)
        manifest = {"source": str(src), "revision": revision}
        key = str(src)
    else:
        # the config alone tells the revision; the weights are fetched only when needed
        _, info = resolve(repo, allow_patterns=["model_config.json"])
        revision = info["revision"]
        key = repo
        manifest = {"repo": repo, "revision": revision}
        src = None
    suffix = "" if t5 is None else "-t5-" + hashlib.sha1(str(t5).encode()).hexdigest()[:8]
    out = Path(output).expanduser() if output is not None else converted_dir(KIND, key, revision, dtype + suffix)
    if output is None and not force and is_converted(out):
        return out
    if src is None:
        patterns = ["*.json", "model.safetensors", "model-*.safetensors"]
        if allow_pickle:
            patterns += ["model.ckpt", "*.bin"]
        src, _ = resolve(repo, allow_patterns=patterns, revision=revision if revision != "unknown" else None)
    return convert_dir(src, out, manifest, t5=t5, dtype=dtype, allow_pickle=allow_pickle)
