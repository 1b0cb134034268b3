"""Cheap checks of model weights before anything is loaded: :func:`preflight` and the integrity of
converted folders.

``preflight(path, engine, t5)`` says, without downloading or loading anything and within a couple
of seconds even without a network, whether a model is converted and ready (CACHED), on disk and
converted on first load (CONVERTIBLE), still to be downloaded (NEEDS_DOWNLOAD), or absent / damaged
(MISSING / BROKEN), with one sentence that says what to do. ``livegen doctor`` prints it for every
configured model; ``livegen serve`` refuses to start when :attr:`WeightsCheck.startable` is false.
Integrity is checked from headers and sizes only: every JSON file parses, every safetensors header
is readable and the file is as long as its tensors need.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from livegen.errors import WeightsError
from livegen.weights import (
    _offline,
    converted_dir,
    hub_cache_dir,
    json_problem,
    safetensors_header,
    safetensors_problem,
)

__all__ = ["WeightsState", "WeightsCheck", "preflight", "converted_problem", "looks_converted",
           "require_intact", "normalise_engine"]

SA, MG = "stable_audio", "musicgen"
ENGINE_LABEL = {SA: "Stable Audio", MG: "MusicGen"}
MG_FORMAT = "livegen-musicgen-mlx"  # livegen.models.musicgen.convert.FORMAT
DEFAULT_T5 = ("google-t5/t5-base", "t5-base")  # livegen.models.stable_audio.convert.DEFAULT_T5
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
PROBE_TIMEOUT = 1.5  # seconds for the hub reachability probe (DNS + TCP connect)


class WeightsState(enum.Enum):
    CACHED = "cached"  # a converted MLX folder is ready
    CONVERTIBLE = "convertible"  # a checkpoint (local folder or hub snapshot) is on disk; converted on first load
    NEEDS_DOWNLOAD = "needs download"  # not on disk; see offline / hub_reachable / gated
    MISSING = "missing"  # a local folder that does not exist, or a name that is no model
    BROKEN = "broken"  # a file is missing, damaged or of the wrong kind (see file and problem)


@dataclass(frozen=True)
class WeightsCheck:
    """The outcome of :func:`preflight`. ``sentence`` is one complete sentence (with the fix when
    something must be done) that reads well alone on a terminal line."""

    state: WeightsState
    sentence: str
    source: str  # the model path / name / repo id asked about
    engine: str  # "stable_audio" or "musicgen"
    location: Path | None = None  # the converted folder, snapshot or local folder found
    file: Path | None = None  # BROKEN/MISSING: the file or folder at fault
    problem: str | None = None  # BROKEN: what is wrong with ``file``
    download: str | None = None  # NEEDS_DOWNLOAD: the repo id to download
    offline: bool = False  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set
    hub_reachable: bool | None = None  # NEEDS_DOWNLOAD only; None when offline (not probed)
    gated: bool = False  # the repo to download needs an accepted licence and a token
    token: bool = False  # a Hugging Face token is available (HF_TOKEN or `hf auth login`)

    @property
    def ready(self) -> bool:
        """On disk: loads without the network."""
        return self.state in (WeightsState.CACHED, WeightsState.CONVERTIBLE)

    @property
    def startable(self) -> bool:
        """Loading can succeed: on disk, or downloadable now (hub reachable, token for a gated repo)."""
        if self.ready:
            return True
        return (self.state is WeightsState.NEEDS_DOWNLOAD and not self.offline and bool(self.hub_reachable)
                and (self.token or not self.gated))


def normalise_engine(engine: str) -> str:
    name = engine.strip().lower().replace("-", "_")
    if name not in (SA, MG):
        raise ValueError(f"unknown engine {engine!r}; choose stable-audio or musicgen")
    return name


# ----------------------------------------------------------------------------- converted folders


def _safetensors_format(path: Path) -> str | None:
    try:
        meta = safetensors_header(path).get("__metadata__") or {}
    except (OSError, ValueError):
        return None
    return meta.get("format") if isinstance(meta, dict) else None


def looks_converted(directory: Path) -> bool:
    """A folder livegen converted (complete or not): it has a manifest.json, a t5/ folder next to a
    model.safetensors, or a model.safetensors written by MLX (original checkpoints come from PyTorch)."""
    directory = Path(directory)
    if (directory / "manifest.json").is_file():
        return True
    weights = directory / "model.safetensors"
    if not weights.is_file() or (directory / "model_config.json").is_file():
        return False
    return (directory / "t5").is_dir() or _safetensors_format(weights) == "mlx"


def _manifest_engine(manifest: dict) -> str | None:
    if manifest.get("kind") == SA:
        return SA
    if manifest.get("format") == MG_FORMAT or manifest.get("engine") == MG:
        return MG
    return None


def converted_problem(directory: Path, engine: str, *, need_t5: bool = True) -> tuple[Path, str] | None:
    """``(file, problem)`` for the first thing wrong with a converted folder, or None when it is
    complete. ``problem`` ends a sentence that starts with the file's name."""
    directory = Path(directory)
    engine = normalise_engine(engine)
    manifest_path = directory / "manifest.json"
    problem = json_problem(manifest_path)
    if problem is not None:
        return manifest_path, problem
    import json

    found = _manifest_engine(json.loads(manifest_path.read_text(encoding="utf-8")))
    if found != engine:
        what = f"a converted {ENGINE_LABEL[found]} model" if found else "not a livegen model manifest"
        return manifest_path, f"says this is {what}, not {ENGINE_LABEL[engine]}"
    for rel in ("config.json",) + (("t5/config.json",) if engine == SA and need_t5 else ()):
        problem = json_problem(directory / rel)
        if problem is not None:
            if rel.startswith("t5/") and not (directory / "t5").is_dir():
                return directory / "t5", "is missing (the T5 text encoder of a converted Stable Audio model)"
            return directory / rel, problem
    for rel in ("model.safetensors",) + (("t5/model.safetensors",) if engine == SA and need_t5 else ()):
        problem = safetensors_problem(directory / rel)
        if problem is not None:
            return directory / rel, problem
    tok_dir = directory / "t5" if engine == SA else directory
    if (engine == MG or need_t5) and not any((tok_dir / n).is_file() for n in TOKENIZER_FILES):
        return tok_dir, "has no tokenizer (spiece.model or tokenizer.json)"
    return None


def _redo(directory: Path) -> str:
    return f"delete {directory} and convert the model again (`livegen convert` with the original checkpoint)"


def require_intact(directory: Path, engine: str, *, need_t5: bool = True) -> None:
    """Raise WeightsError naming the file and the problem when ``directory`` looks converted but is
    incomplete or damaged (checked before loading, so the error is not a confusing later one)."""
    directory = Path(directory)
    if not looks_converted(directory):
        return
    found = converted_problem(directory, engine, need_t5=need_t5)
    if found is not None:
        path, problem = found
        raise WeightsError(f"{path} {problem}; {_redo(directory)}.")


# ----------------------------------------------------------------------------- the hub cache


def _hub_cache() -> Path:
    env = hub_cache_dir()
    if env is not None:
        return env
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _snapshot(repo: str) -> Path | None:
    """The cached snapshot of ``repo``'s main branch (read from refs/main), or None."""
    base = _hub_cache() / ("models--" + repo.replace("/", "--"))
    try:
        commit = (base / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snap = base / "snapshots" / commit
    return snap if snap.is_dir() else None


def _weights_file(directory: Path) -> Path | None:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (directory / name).is_file():
            return directory / name
    safes = sorted(directory.glob("*.safetensors"))
    return safes[0] if len(safes) == 1 else None


def _has_token() -> bool:
    if os.environ.get("HF_TOKEN", "").strip():
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # noqa: BLE001 - an unreadable token file means no token
        return False


_probe_cache: dict[tuple[str, int], bool] = {}


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``, default huggingface.co:443) opens within
    ``timeout`` seconds; DNS included (run in a thread, so a hanging resolver cannot block)."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    if (host, port) in _probe_cache:
        return _probe_cache[(host, port)]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="livegen-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    ok = bool(result and result[0])
    _probe_cache[(host, port)] = ok
    return ok


def _gated(repo: str) -> bool:
    return repo.lower().startswith("stabilityai/stable-audio")


# ----------------------------------------------------------------------------- preflight


def _download_check(repo: str, source: str, engine: str, *, what: str | None = None) -> WeightsCheck:
    """NEEDS_DOWNLOAD for ``repo``; ``what`` names it when it is a part (the T5 encoder)."""
    offline, gated, token = _offline(), _gated(repo), _has_token()
    reachable = None if offline else hub_reachable()
    subject = f"{source} needs {what} {repo}, which" if what else f"{source}"
    where = _hub_cache()
    licence = f"accept its licence at https://huggingface.co/{repo}"
    if offline:
        first = f" ({repo} is gated: {licence} and run `hf auth login` or set HF_TOKEN first)" if gated else ""
        sentence = (f"{subject} is not downloaded and HF_HUB_OFFLINE is set, so livegen cannot fetch it: unset "
                    f"HF_HUB_OFFLINE and start again{first}, or run `hf download {repo}` on a connected machine "
                    f"and copy its Hugging Face cache to {where} (or point HF_HUB_CACHE at the copy).")
    elif not reachable:
        first = f" ({repo} is gated: {licence} and run `hf auth login` or set HF_TOKEN first)" if gated else ""
        sentence = (f"{subject} is not downloaded yet and the Hugging Face hub cannot be reached: connect to the "
                    f"network and run `hf download {repo}`{first}, or copy a Hugging Face cache that holds it "
                    f"to {where} (or set HF_HUB_CACHE).")
    elif gated and not token:
        sentence = (f"{subject} is not downloaded yet and {repo} is gated: {licence}, then run `hf auth login` "
                    "(or set HF_TOKEN) so that it can be downloaded.")
    else:
        note = f" ({licence} for your token's account if you have not)" if gated else ""
        sentence = (f"{subject} is not downloaded yet; it will be downloaded on the first start{note}, "
                    f"or run `livegen convert {source}` ahead of time.")
    return WeightsCheck(WeightsState.NEEDS_DOWNLOAD, sentence, source, engine, download=repo, offline=offline,
                        hub_reachable=reachable, gated=gated, token=token)


def _broken(source: str, engine: str, location: Path | None, file: Path, problem: str, fix: str) -> WeightsCheck:
    return WeightsCheck(WeightsState.BROKEN, f"{file} {problem}; {fix}.", source, engine, location=location,
                        file=file, problem=problem, offline=_offline())


def _check_checkpoint(directory: Path, source: str, engine: str, fix: str) -> WeightsCheck | None:
    """Problems of an original (unconverted) checkpoint folder, or None when it looks complete."""
    config = directory / ("model_config.json" if engine == SA else "config.json")
    problem = json_problem(config)
    if problem is not None:
        return _broken(source, engine, directory, config, problem, fix)
    import json

    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    expected = ("diffusion_cond",) if engine == SA else ("musicgen", "musicgen_melody")
    if model_type not in expected:
        return _broken(source, engine, directory, config,
                       f"has model_type {model_type!r}, not a {ENGINE_LABEL[engine]} model",
                       "check the model path and the model's engine in the settings")
    weights = _weights_file(directory)
    if weights is None:
        pickles = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
        problem = (f"has only pickle weights ({pickles[0]}), which are not loaded at run time" if pickles
                   else "has no weights (model.safetensors)")
        hint = ("convert them once with `livegen convert --allow-pickle`" if pickles else fix)
        return _broken(source, engine, directory, directory, problem, hint)
    files = [weights]
    if weights.name.endswith(".index.json"):
        problem = json_problem(weights)
        if problem is not None:
            return _broken(source, engine, directory, weights, problem, fix)
        import json

        weight_map = json.loads(weights.read_text(encoding="utf-8")).get("weight_map") or {}
        files = [directory / n for n in sorted(set(weight_map.values()))]
    for f in files:
        problem = safetensors_problem(f)
        if problem is not None:
            return _broken(source, engine, directory, f, problem, fix)
    return None


def _converted_for(engine: str, key: str, revision: str, t5: str | None) -> Path:
    if engine == SA:  # as livegen.models.stable_audio.convert.ensure_converted names it
        suffix = "" if t5 is None else "-t5-" + hashlib.sha1(str(t5).encode()).hexdigest()[:8]
        return converted_dir(SA, key, revision, "float32" + suffix)
    return converted_dir(MG, key, revision, "float32")


def _local_revision(directory: Path, engine: str) -> str:
    if engine == SA:
        from livegen.models.stable_audio.convert import _local_revision as sa_revision

        return sa_revision(directory, False)
    # as livegen.models.musicgen.convert.convert names a local checkpoint
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    return f"local-{max((int(p.stat().st_mtime) for p in files), default=0)}"


def _check_t5(t5: str | None, source: str) -> WeightsCheck | None:
    """None when the T5 encoder Stable Audio converts with is on disk, else what is wrong."""
    if t5 is not None:
        local = Path(t5).expanduser()
        if local.is_dir():
            return _check_t5_dir(local, source, t5)
        if t5.startswith((".", "/", "~")) or t5.count("/") > 1:
            return WeightsCheck(WeightsState.MISSING, f"the T5 folder {t5} does not exist; fix the model's t5 "
                                "setting (--t5) or leave it empty to use google-t5/t5-base.", source, SA,
                                file=local, problem="does not exist")
        candidates: tuple[str, ...] = (t5,)
    else:
        candidates = DEFAULT_T5
    for repo in candidates:
        snap = _snapshot(repo)
        if snap is not None and (snap / "config.json").is_file() and _weights_file(snap) is not None:
            return _check_t5_dir(snap, source, repo)
    return _download_check(candidates[0], source, SA, what="the T5 text encoder")


def _check_t5_dir(directory: Path, source: str, name: str) -> WeightsCheck | None:
    fix = f"fix or download the T5 encoder {name} again"
    problem = json_problem(directory / "config.json")
    if problem is not None:
        return _broken(source, SA, directory, directory / "config.json", problem, fix)
    weights = _weights_file(directory)
    if weights is None:
        return _broken(source, SA, directory, directory, "has no T5 weights (model.safetensors)", fix)
    problem = safetensors_problem(weights) if weights.suffix == ".safetensors" else None
    if problem is not None:
        return _broken(source, SA, directory, weights, problem, fix)
    return None


def _with_t5(check: WeightsCheck, t5: str | None) -> WeightsCheck:
    """A CONVERTIBLE Stable Audio check, downgraded when its T5 encoder is not on disk."""
    t5_check = _check_t5(t5, check.source)
    if t5_check is None:
        return check
    return dataclasses.replace(t5_check, location=check.location)


def _check_local(directory: Path, source: str, engine: str, t5: str | None) -> WeightsCheck:
    if looks_converted(directory):
        found = converted_problem(directory, engine, need_t5=t5 is None)
        if found is not None:
            return _broken(source, engine, directory, found[0], found[1], _redo(directory))
        sentence = f"{source} is a converted {ENGINE_LABEL[engine]} model, ready to load."
        check = WeightsCheck(WeightsState.CACHED, sentence, source, engine, location=directory, offline=_offline())
        return check if engine == MG or t5 is None else _with_t5(check, t5)
    bad = _check_checkpoint(directory, source, engine, "download or copy the checkpoint again")
    if bad is not None:
        return bad
    converted = _converted_for(engine, str(directory.resolve()), _local_revision(directory, engine), t5)
    return _finish(source, engine, directory, converted, t5)


def _finish(source: str, engine: str, checkpoint: Path, converted: Path, t5: str | None) -> WeightsCheck:
    """CACHED when the converted folder of a checkpoint on disk is complete, else CONVERTIBLE."""
    if converted.is_dir() and converted_problem(converted, engine) is None:
        sentence = f"{source} is converted and ready in {converted}."
        check = WeightsCheck(WeightsState.CACHED, sentence, source, engine, location=converted, offline=_offline())
        return _with_t5(check, t5) if engine == SA and t5 is not None else check
    sentence = (f"{source} is on disk ({checkpoint}) and is converted for MLX once on its first load "
                f"(or ahead of time with `livegen convert {source}`).")
    check = WeightsCheck(WeightsState.CONVERTIBLE, sentence, source, engine, location=checkpoint,
                         offline=_offline())
    return _with_t5(check, t5) if engine == SA else check


def preflight(path: str, engine: str, t5: str | None = None) -> WeightsCheck:
    """Where the weights of a model stand, without downloading or loading anything.

    ``path``: a short model name (stable-audio-small), a Hugging Face repo id, a checkpoint folder or
    a converted folder (the ``models.<name>.path`` setting); ``engine``: "stable-audio"/"stable_audio"
    or "musicgen"; ``t5``: the Stable Audio text-encoder setting. Returns within about two seconds:
    the only network access is a TCP connect to the hub, and only when not offline and something must
    be downloaded.
    """
    from livegen.models import registry

    engine = normalise_engine(engine)
    source = str(path)
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            return WeightsCheck(WeightsState.MISSING, f"{source} is a file; a model path must be a checkpoint "
                                "folder or a Hugging Face repo id (owner/name).", source, engine, file=local,
                                problem="is a file")
        return _check_local(local, source, engine, t5)
    repo = registry.repo_id(source)
    if source.startswith((".", "/", "~")) or repo.count("/") != 1 or not all(repo.split("/")):
        names = "e.g. " + next(iter(registry.STABLE_AUDIO if engine == SA else registry.MUSICGEN))
        if source.startswith((".", "/", "~")) or "/" in source:
            sentence = (f"the model folder {source} does not exist; fix the model path in the settings, or use a "
                        f"model name ({names}) or a Hugging Face repo id.")
        else:
            sentence = (f"{source} is neither a model name ({names}), an existing folder nor a Hugging Face repo "
                        "id (owner/name); fix the model path in the settings.")
        return WeightsCheck(WeightsState.MISSING, sentence, source, engine, file=local, problem="does not exist")
    snap = _snapshot(repo)
    config_name = "model_config.json" if engine == SA else "config.json"
    if snap is None or not (snap / config_name).is_file() or _weights_file(snap) is None:
        return _download_check(repo, source, engine)
    bad = _check_checkpoint(snap, source, engine, f"delete {snap.parent.parent} and download {repo} again")
    if bad is not None:
        return bad
    return _finish(source, engine, snap, _converted_for(engine, repo, snap.name, t5), t5)
