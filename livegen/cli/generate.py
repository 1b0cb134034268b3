"""`livegen generate`: one clip from a prompt, written as an audio file (32-bit float WAV by default;
the extension of ``--output`` picks the format: .flac, .ogg, .mp3, .aiff, ...).

Stable Audio models run here; MusicGen models are handed to ``livegen.cli.generate_musicgen``.
Every argument, the output file's format and folder included, is checked before any model is
loaded, so a typo costs no waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from livegen.cli import UsageError
from livegen.errors import Cancelled, LivegenError
from livegen.models import registry

SA_ONLY = ("steps", "sampler", "init_audio", "init_strength", "cfg_scale")
MG_ONLY = ("top_k", "top_p", "temperature", "guidance", "melody", "continue_")

# Known checkpoints' limits, so that arguments are checked without downloading anything.
_KNOWN_SA = {
    "stabilityai/stable-audio-open-small": ("rf_denoiser", 524288 / 44100),
    "stabilityai/stable-audio-open-1.0": ("v", 2097152 / 44100),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate one clip from a prompt and write it as WAV")
    names = ", ".join(registry.MODELS)
    p.add_argument("--model", default="stable-audio-small", metavar="MODEL",
                   help=f"{names}, a Hugging Face repo id or a local/converted model directory")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--output", "-o", default="out.wav",
                   help="output file (default out.wav); the extension picks the format: .wav (32-bit float), "
                        ".flac (24-bit), .ogg, .mp3, .aiff, .caf, .w64, .rf64, .au; a missing folder is created")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    sa = p.add_argument_group("Stable Audio")
    sa.add_argument("--steps", type=int, default=None, help="sampling steps (default: model's, 8 or 100)")
    sa.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (default 1 or 7)")
    sa.add_argument("--sampler", default=None,
                    help="pingpong|euler|rk4|dpmpp (small) or dpmpp-3m-sde|dpmpp-2m-sde|dpmpp-2m (1.0)")
    sa.add_argument("--init-audio", default=None, metavar="F", help="audio file to start from (audio-to-audio)")
    sa.add_argument("--init-strength", type=float, default=None, metavar="S",
                    help="how much of the init audio is replaced by noise, in (0, 1] (default 0.5)")
    sa.add_argument("--t5", default=None, metavar="DIR_OR_REPO", help="T5 encoder (default google-t5/t5-base)")
    mg = p.add_argument_group("MusicGen")
    mg.add_argument("--top-k", type=int, default=None, help="top-k sampling (default 250)")
    mg.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default off)")
    mg.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    mg.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default 3.0)")
    mg.add_argument("--melody", default=None, metavar="F", help="melody audio file (melody models)")
    mg.add_argument("--continue", dest="continue_", default=None, metavar="F", help="audio file to continue")
    p.set_defaults(func=run)


@dataclass
class ModelInfo:
    engine: str
    source: str  # repo id or directory
    objective: str | None = None
    max_seconds: float | None = None


def _sa_limits(config: dict, where: str) -> tuple[str, float]:
    try:
        objective = config["model"]["diffusion"].get("diffusion_objective", "v")
        return objective, int(config["sample_size"]) / int(config.get("sample_rate", 44100))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(f"{where} is not a valid Stable Audio model_config.json") from None


def _dir_info(path: Path, t5: str | None = None) -> ModelInfo:
    from livegen.weights_check import require_intact

    engine = registry.engine_of_dir(path)
    require_intact(path, engine, need_t5=t5 is None)  # a damaged converted folder, before "loading"
    if engine != "stable_audio":
        return ModelInfo(engine, str(path))
    cfg_path = path / "model_config.json"
    if not cfg_path.is_file():
        cfg_path = path / "config.json"
    from livegen.weights import read_json

    objective, max_s = _sa_limits(read_json(cfg_path, "download or convert the model again"), str(cfg_path))
    return ModelInfo(engine, str(path), objective, max_s)


def model_info(model: str, t5: str | None = None) -> ModelInfo:
    """Engine and limits of a model argument, without loading weights (UsageError if unknown)."""
    repo = registry.repo_id(model)
    if repo in _KNOWN_SA:
        objective, max_s = _KNOWN_SA[repo]
        return ModelInfo("stable_audio", repo, objective, max_s)
    if repo in registry.MUSICGEN.values():
        return ModelInfo("musicgen", repo)
    path = Path(model).expanduser()
    try:
        if path.is_dir():
            return _dir_info(path, t5)
        if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
            raise UsageError(
                f"unknown model {model!r}: choose one of {', '.join(registry.MODELS)}, a Hugging Face repo id "
                "(owner/name) or a model directory"
            )
        from livegen.weights import resolve

        snapshot, _ = resolve(model, allow_patterns=["*.json"])
        info = _dir_info(snapshot)
        info.source = model
        return info
    except LivegenError as exc:
        raise UsageError(str(exc)) from None


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + n.rstrip("_").replace("_", "-") for n in names if getattr(args, n, None) is not None]


def validate(args: argparse.Namespace) -> ModelInfo:
    """Check every argument before loading anything; raises UsageError with one clear line.

    Sets ``args.output_file`` (a :class:`livegen.cli.output_file.OutputFile`)."""
    from livegen.audio_io import AudioFileError
    from livegen.cli.output_file import check_output

    if not args.prompt or not args.prompt.strip():
        raise UsageError("--prompt must not be empty")
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds:g}")
    info = model_info(args.model, getattr(args, "t5", None))
    if info.engine == "stable_audio":
        bad = _given(args, MG_ONLY)
        if bad:
            raise UsageError(f"{', '.join(bad)} only apply to MusicGen models, not {args.model}")
        if info.max_seconds is not None and args.seconds > info.max_seconds + 1e-9:
            raise UsageError(f"--seconds {args.seconds:g} is too long for {args.model} (at most {info.max_seconds:.2f})")
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {args.steps}")
        if args.cfg_scale is not None and args.cfg_scale < 0:
            raise UsageError(f"--cfg-scale must not be negative, got {args.cfg_scale:g}")
        if args.sampler is not None:
            from livegen.models.stable_audio.sampling import RF_SAMPLERS, V_SAMPLERS

            allowed = V_SAMPLERS if info.objective == "v" else RF_SAMPLERS
            if args.sampler not in allowed:
                raise UsageError(f"--sampler {args.sampler!r} does not suit {args.model}; choose from {', '.join(allowed)}")
        if args.init_strength is not None and not 0 < args.init_strength <= 1:
            raise UsageError(f"--init-strength must be in (0, 1], got {args.init_strength:g}")
        if args.init_strength is not None and args.init_audio is None:
            raise UsageError("--init-strength needs --init-audio")
        files = [("--init-audio", args.init_audio)]
        if args.t5 is not None and args.t5.startswith((".", "/", "~")) and not Path(args.t5).expanduser().is_dir():
            raise UsageError(f"--t5 directory {args.t5} does not exist")
    else:
        bad = _given(args, SA_ONLY)
        if bad:
            raise UsageError(f"{', '.join(bad)} only apply to Stable Audio models, not {args.model}")
        for name, val in (("--top-k", args.top_k), ("--temperature", args.temperature)):
            if val is not None and val <= 0:
                raise UsageError(f"{name} must be positive, got {val:g}")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {args.top_p:g}")
        if args.guidance is not None and args.guidance < 0:
            raise UsageError(f"--guidance must not be negative, got {args.guidance:g}")
        files = [("--melody", args.melody), ("--continue", args.continue_)]
    for flag, value in files:
        if value is not None and not Path(value).expanduser().is_file():
            raise UsageError(f"{flag} file {value} does not exist")
    try:
        args.output_file = check_output(args.output)
    except AudioFileError as exc:
        raise UsageError(str(exc)) from None
    return info


def run(args: argparse.Namespace) -> int:
    info = validate(args)
    if info.engine == "musicgen":
        try:
            from livegen.cli.generate_musicgen import run_musicgen
        except ImportError as exc:
            raise UsageError(f"MusicGen is unavailable in this installation ({exc})") from None
        return int(run_musicgen(args) or 0)
    return run_stable_audio(args, info)


def run_stable_audio(args: argparse.Namespace, info: ModelInfo) -> int:
    from livegen.audio_io import AudioFileError, read_audio
    from livegen.cli.output_file import check_output, write_output
    from livegen.models.stable_audio import StableAudioPipeline
    from livegen.progress import StepProgress

    try:
        t0 = time.perf_counter()
        print(f"loading {info.source} ...", file=sys.stderr)
        pipe = StableAudioPipeline.from_pretrained(info.source, t5=args.t5)
        print(f"loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        init = None
        if args.init_audio is not None:
            init, _ = read_audio(Path(args.init_audio).expanduser(), pipe.sample_rate, channels=pipe.audio_channels)
        bar = StepProgress("sampling")
        t1 = time.perf_counter()
        audio = pipe.generate(
            args.prompt, seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler,
            seed=args.seed, negative_prompt=args.negative_prompt, init_audio=init,
            init_strength=args.init_strength, progress=bar,
        )
        bar.close()
        print(f"seed {pipe.last_seed}; generated {args.seconds:g} s in {time.perf_counter() - t1:.1f} s",
              file=sys.stderr)
        out = write_output(getattr(args, "output_file", None) or check_output(args.output), audio, pipe.sample_rate)
    except (LivegenError, AudioFileError) as exc:
        if isinstance(exc, Cancelled):
            return 130
        raise UsageError(str(exc)) from None
    print(out)
    return 0
