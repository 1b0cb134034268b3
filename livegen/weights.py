"""Checkpoints: Hugging Face hub snapshot (or local dir) -> MLX arrays -> converted cache.

Only safetensors are read at run time. Pickle checkpoints (``.bin``/``.ckpt``/``.pt``) are read
with ``torch.load(weights_only=True)`` and only when the caller passes ``allow_pickle=True``
(``livegen convert --allow-pickle``); the result is saved as safetensors in the cache.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import struct
import sys
import uuid
from pathlib import Path

import numpy as np

import livegen
from livegen import _blas
from livegen.errors import WeightsError

_blas.preload()  # this module is an entry point of the Python API too: the optimised BLAS before mlx.core

import mlx.core as mx  # noqa: E402

__all__ = [
    "WeightsError",
    "cache_root",
    "resolve",
    "load_weights",
    "check_keys",
    "save_converted",
    "converted_dir",
    "hub_cache_dir",
    "read_json",
    "json_problem",
    "safetensors_problem",
]

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_TRUE = ("1", "true", "yes", "on")


def cache_root() -> Path:
    """``$LIVEGEN_CACHE``, else the platform's user cache dir + ``livegen``."""
    env = os.environ.get("LIVEGEN_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "livegen"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / "livegen" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else home / ".cache") / "livegen"


def hub_cache_dir() -> Path | None:
    """The Hugging Face hub cache named by the environment *now* (huggingface_hub reads its
    variables once at import, so a later change of ``HF_HUB_CACHE``/``HF_HOME`` would be missed)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return None


def _offline() -> bool:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in names)


def _revision_from_snapshot(path: Path) -> str | None:
    # <cache>/models--org--name/snapshots/<commit>
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{7,64}", path.name):
        return path.name
    return None


def resolve(
    repo_or_path: str, *, allow_patterns: list[str] | None = None, revision: str | None = None
) -> tuple[Path, dict]:
    """Return ``(directory, info)`` for a local directory or a hub repo id.

    A local directory gives ``{"source": str(path)}``; a repo id is fetched with
    ``huggingface_hub.snapshot_download`` (honouring ``HF_TOKEN``, ``HF_HOME``/``HF_HUB_CACHE`` and
    ``HF_HUB_OFFLINE``) and gives ``{"repo": id, "revision": commit}``.
    """
    path = Path(repo_or_path).expanduser()
    if path.is_dir():
        return path.resolve(), {"source": str(path.resolve())}
    if path.exists():
        raise WeightsError(f"{repo_or_path} is a file; give the model directory (or a Hugging Face repo id).")
    # "owner/name", or a legacy id without an owner ("t5-base"); anything else is a path
    looks_like_path = repo_or_path.startswith((".", "/", "~")) or repo_or_path.count("/") > 1 or not repo_or_path
    if looks_like_path:
        raise WeightsError(
            f"{repo_or_path} is neither an existing directory nor a Hugging Face repo id (owner/name)."
        )
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise WeightsError(
            f"huggingface_hub is not installed ({exc}); install it with `pip install huggingface_hub`."
        ) from None

    offline = _offline()
    cache_dir = hub_cache_dir()
    where = str(cache_dir) if cache_dir else "the default Hugging Face cache"
    try:
        snap = huggingface_hub.snapshot_download(
            repo_or_path,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=offline,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except hf_errors.GatedRepoError:
        raise WeightsError(
            f"{repo_or_path} is gated: accept its licence at https://huggingface.co/{repo_or_path} and run "
            "`hf auth login` (or set HF_TOKEN)."
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise WeightsError(
            f"{repo_or_path} was not found on the Hugging Face hub (check the name; private repos need "
            "`hf auth login` or HF_TOKEN)."
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise WeightsError(f"revision {revision!r} of {repo_or_path} does not exist on the hub.") from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        if offline:
            why = "downloading is off (HF_HUB_OFFLINE is set): unset it, or download it on a connected machine"
        else:
            why = "it could not be downloaded (no connection to the hub?): connect and retry, or copy the cache"
        raise WeightsError(
            f"{repo_or_path} is not in the Hugging Face cache ({where}) and {why} "
            f"(`hf download {repo_or_path}`)."
        ) from None
    except (OSError, ValueError, hf_errors.HfHubHTTPError) as exc:
        raise WeightsError(f"could not download {repo_or_path} into {where}: {_one_line(exc)}.") from None
    snap_path = Path(snap)
    commit = _revision_from_snapshot(snap_path) or revision or "unknown"
    return snap_path, {"repo": repo_or_path, "revision": commit}


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (whole: a cut message would lose the useful end)."""
    return " ".join(str(exc).split()).rstrip(".")


def json_problem(path: Path) -> str | None:
    """What is wrong with a JSON-object file, as the end of a sentence that starts with its name;
    None when it parses to an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return "is missing"
    except IsADirectoryError:
        return "is a folder, not a file"
    except UnicodeDecodeError:
        return "is not text (not JSON)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or _one_line(exc)})"
    if not text.strip():
        return "is empty"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        body = text.rstrip()
        if exc.pos >= len(body) or exc.msg.startswith("Unterminated string"):
            line = body.count("\n") + 1
            column = len(body) - (body.rfind("\n") + 1) + 1
            return f"ends early at line {line}, column {column} (the file is truncated)"
        return f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if not isinstance(data, dict):
        return "holds JSON that is not an object"
    return None


def read_json(path: Path, fix: str = "delete it and download or convert the model again") -> dict:
    """A JSON object from ``path``; WeightsError naming the file, the problem and ``fix``."""
    problem = json_problem(path)
    if problem is not None:
        raise WeightsError(f"{path} {problem}; {fix}.")
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- loading


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size (no tensor is read);
    ValueError/OSError with the problem."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"the file has {size} bytes, fewer than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"truncated: the header needs {n + 8} bytes, the file has {size}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("the header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    end = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the header entry {key} has no data offsets") from None
        if not 0 <= lo <= hi:
            raise ValueError(f"bad offsets for {key}")
        end = max(end, hi)
    if 8 + n + end > size:
        raise ValueError(f"truncated: tensors need {8 + n + end} bytes, the file has {size}")
    return header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (end of a sentence after its name), or None."""
    path = Path(path)
    if not path.exists():
        return "is missing"
    if not path.is_file():
        return "is not a file"
    try:
        safetensors_header(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or _one_line(exc)})"
    except ValueError as exc:
        return f"is not a valid safetensors file ({_one_line(exc)})"
    return None


def _check_safetensors(path: Path) -> None:
    """Validate a safetensors header against the file size (mx.load is lazy about data)."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise WeightsError(f"{path} {problem}; delete it and download (or convert) the model again.")


def _load_safetensors(path: Path) -> dict[str, mx.array]:
    _check_safetensors(path)
    try:
        weights = mx.load(str(path))
    except Exception as exc:
        raise WeightsError(
            f"{path} could not be read as safetensors ({_one_line(exc)}); delete it and download again."
        ) from None
    if not isinstance(weights, dict):
        raise WeightsError(f"{path} holds no named tensors.")
    return weights


def _torch_to_mx(t) -> mx.array:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return mx.array(t.float().numpy()).astype(mx.bfloat16)
    return mx.array(np.ascontiguousarray(t.numpy()))


def _load_pickle(path: Path) -> dict[str, mx.array]:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"{path} is a PyTorch pickle checkpoint and reading it needs torch, which is not installed "
            "(`pip install torch`), or use a repo that ships safetensors."
        ) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} could not be read as a PyTorch checkpoint ({_one_line(exc)}).") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state dict.")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k] = _torch_to_mx(v)
    if not out:
        raise WeightsError(f"{path} holds no tensors.")
    return out


def _load_index(index: Path, allow_pickle: bool) -> dict[str, mx.array]:
    try:
        weight_map = read_json(index, "download the model again")["weight_map"]
        files = sorted(set(weight_map.values()))
    except (KeyError, TypeError, AttributeError):
        raise WeightsError(f"{index} is not a valid shard index (no weight_map); download the model again.") from None
    out: dict[str, mx.array] = {}
    for name in files:
        shard = index.parent / name
        if not shard.is_file():
            raise WeightsError(f"shard {shard} listed in {index} is missing; download the model again.")
        out.update(_load_file(shard, allow_pickle))
    return out


def _load_file(path: Path, allow_pickle: bool) -> dict[str, mx.array]:
    if path.name.endswith(".index.json"):
        return _load_index(path, allow_pickle)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in _PICKLE_SUFFIXES:
        if not allow_pickle:
            raise WeightsError(
                f"{path} is a pickle checkpoint, which can run code when loaded; pass --allow-pickle "
                "(allow_pickle=True) to convert it once with torch.load(weights_only=True)."
            )
        return _load_pickle(path)
    raise WeightsError(f"{path} is not a weights file livegen can read (.safetensors, or .bin/.ckpt/.pt).")


def find_weights_file(path: Path, *, allow_pickle: bool = False) -> Path:
    """The weights file (or shard index) inside a model directory."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (path / name).is_file():
            return path / name
    safes = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if len(safes) == 1:
        return safes[0]
    pickles = [path / n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt")]
    pickles = [p for p in pickles if p.is_file()] or sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in _PICKLE_SUFFIXES
    )
    if pickles:
        if not allow_pickle:
            raise WeightsError(
                f"{path} has only pickle weights ({pickles[0].name}), which can run code when loaded; pass "
                "--allow-pickle (allow_pickle=True) to convert them once with torch.load(weights_only=True)."
            )
        return pickles[0]
    if len(safes) > 1:
        raise WeightsError(f"{path} has several .safetensors files and no model.safetensors.index.json.")
    raise WeightsError(f"{path} has no weights (model.safetensors or a shard index).")


def load_weights(path: Path, *, allow_pickle: bool = False) -> dict[str, mx.array]:
    """Load every tensor of a weights file or model directory as MLX arrays (lazily)."""
    path = Path(path)
    if path.is_dir():
        path = find_weights_file(path, allow_pickle=allow_pickle)
    elif not path.is_file():
        raise WeightsError(f"{path} does not exist.")
    return _load_file(path, allow_pickle)


def check_keys(expected: dict[str, tuple], got: dict[str, mx.array], source: str) -> None:
    """Strict match of names and shapes; raises WeightsError listing the differences."""
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    mismatched = sorted(
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k])}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            parts.append(f"{label} {len(items)}: {', '.join(items[:10])}{more}")
    raise WeightsError(
        f"{source} does not match the model config ({'; '.join(parts)}); "
        "is it the right checkpoint for this config?"
    )


# ----------------------------------------------------------------------------- converted cache


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text.strip().strip("/")) or "model"


def converted_dir(kind: str, repo: str, revision: str, dtype: str) -> Path:
    """``cache_root()/converted/<kind>/<repo>/<revision>/<dtype>``."""
    parts = (kind, repo, revision, dtype)
    return cache_root().joinpath("converted", *(_safe_name(p) for p in parts))


def save_converted(
    out_dir: Path,
    weights: dict[str, mx.array],
    config: dict,
    manifest: dict,
    *,
    extra_weights: dict[str, dict[str, mx.array]] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> None:
    """Write model.safetensors + config.json + manifest.json atomically (temp dir, then rename).

    ``extra_weights`` maps relative paths to more safetensors files, ``extra_files`` relative
    paths to files copied in (e.g. a text encoder's ``t5/model.safetensors`` and tokenizer)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        full = {
            "livegen_version": livegen.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **manifest,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for rel, arrays in (extra_weights or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            mx.save_safetensors(str(tmp / rel), arrays, metadata={"format": "mlx"})
        for rel, src in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2))
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsError(f"could not write the converted model to {out_dir} ({_one_line(exc)}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def __getattr__(name: str):  # noqa: ANN202 - lazy re-export (livegen.weights_check imports this module)
    if name in ("preflight", "WeightsCheck", "WeightsState", "converted_problem", "require_intact",
                "looks_converted"):
        from livegen import weights_check

        return getattr(weights_check, name)
    raise AttributeError(f"module 'livegen.weights' has no attribute {name!r}")
