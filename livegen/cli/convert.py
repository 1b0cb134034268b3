"""`livegen convert MODEL`: hub snapshot / local checkpoint -> MLX safetensors in the livegen cache.

Prints the converted directory. Generation and the daemon do the same conversion on first use;
this command does it ahead of time (e.g. before going offline or on stage).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from livegen.cli import UsageError
from livegen.errors import LivegenError
from livegen.models import registry

DTYPES = ("float32", "float16", "bfloat16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model to MLX safetensors in the livegen cache")
    p.add_argument("model", help=f"{', '.join(registry.MODELS)}, a Hugging Face repo id or a model directory")
    p.add_argument("--t5", default=None, metavar="DIR_OR_REPO",
                   help="T5 encoder for Stable Audio (default google-t5/t5-base)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weight dtype (default float32; half precision is slow on CPUs)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept PyTorch pickle weights (.bin/.ckpt), read once with torch.load(weights_only=True)")
    p.add_argument("--output", "-o", default=None, metavar="DIR", help="write here instead of the cache")
    p.add_argument("--force", action="store_true", help="convert again even if the cache holds the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        engine = registry.engine_for(args.model)
        local = Path(args.model).expanduser()
        if local.is_dir():  # a damaged converted folder is named as such, not converted as a checkpoint
            from livegen.weights_check import require_intact

            require_intact(local, engine, need_t5=args.t5 is None)
        if engine == "stable_audio":
            from livegen.models.stable_audio.convert import ensure_converted

            out = ensure_converted(args.model, t5=args.t5, dtype=args.dtype, allow_pickle=args.allow_pickle,
                                   output=args.output, force=args.force)
        else:
            if args.t5 is not None:
                raise UsageError("--t5 applies to Stable Audio models only (MusicGen ships its own T5)")
            try:
                from livegen.models.musicgen.convert import convert as convert_musicgen
            except ImportError as exc:
                raise UsageError(f"MusicGen is unavailable in this installation ({exc})") from None
            out = convert_musicgen(args.model, out_dir=args.output, dtype=args.dtype,
                                   allow_pickle=args.allow_pickle, force=args.force)
    except (LivegenError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"converted {args.model} ({engine}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(out)
    return 0
