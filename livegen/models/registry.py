"""Model names -> Hugging Face repo ids, and which engine runs a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from livegen.errors import ModelTypeError, WeightsError

STABLE_AUDIO: dict[str, str] = {
    "stable-audio-small": "stabilityai/stable-audio-open-small",
    "stable-audio-1.0": "stabilityai/stable-audio-open-1.0",
}

MUSICGEN: dict[str, str] = {
    f"musicgen-{v}": f"facebook/musicgen-{v}"
    for v in (
        "small", "medium", "large", "melody", "melody-large",
        "stereo-small", "stereo-medium", "stereo-large", "stereo-melody", "stereo-melody-large",
    )
}

MODELS: dict[str, str] = {**STABLE_AUDIO, **MUSICGEN}

ENGINES = ("stable_audio", "musicgen")
_MUSICGEN_TYPES = ("musicgen", "musicgen_melody")


def repo_id(name: str) -> str:
    """The repo id of a short model name; anything else (repo id, path) is returned unchanged."""
    return MODELS.get(name, name)


def _read_json(path: Path) -> dict:
    from livegen.weights import json_problem

    problem = json_problem(path)
    if problem is not None:
        raise WeightsError(f"{path} {problem}; download or convert the model again, or fix the file.")
    return json.loads(path.read_text(encoding="utf-8"))


def engine_of_dir(path: str | Path) -> str:
    """``"stable_audio"`` if ``model_config.json`` (or a converted ``config.json``) has model_type
    ``diffusion_cond``; ``"musicgen"`` if ``config.json`` has model_type musicgen/musicgen_melody."""
    path = Path(path)
    seen = []
    for name in ("model_config.json", "config.json"):
        cfg_path = path / name
        if not cfg_path.is_file():
            continue
        model_type = _read_json(cfg_path).get("model_type")
        seen.append(f"{name}: model_type {model_type!r}")
        if model_type == "diffusion_cond":
            return "stable_audio"
        if model_type in _MUSICGEN_TYPES:
            return "musicgen"
    if not seen:
        raise ModelTypeError(
            f"{path} has neither model_config.json nor config.json; it is not a model livegen knows."
        )
    raise ModelTypeError(
        f"{path} is not a supported model ({'; '.join(seen)}); livegen runs Stable Audio (diffusion_cond) "
        "and MusicGen (musicgen, musicgen_melody)."
    )


def engine_for(name_or_path: str) -> str:
    """Which engine runs a short name, local directory or repo id (a repo id not in the table is
    resolved through the hub cache, fetching only its JSON files)."""
    if name_or_path in STABLE_AUDIO or name_or_path in STABLE_AUDIO.values():
        return "stable_audio"
    if name_or_path in MUSICGEN or name_or_path in MUSICGEN.values():
        return "musicgen"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return engine_of_dir(path)
    from livegen.weights import resolve

    snapshot, _ = resolve(name_or_path, allow_patterns=["*.json"])
    return engine_of_dir(snapshot)
