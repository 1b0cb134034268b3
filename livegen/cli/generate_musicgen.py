"""`livegen generate` for MusicGen models: text (+ melody or an audio prompt) -> 32 kHz audio file.

Called by ``livegen.cli.generate.run`` after its argument checks. ``--continue F`` continues the
audio in F (resampled to 32 kHz); the file holds only the continuation, ``--seconds`` long. The
output format comes from the extension of ``--output`` (see ``livegen.cli.output_file``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from livegen.cli import UsageError
from livegen.errors import Cancelled, LivegenError
from livegen.progress import TokenProgress


def run_musicgen(args: argparse.Namespace) -> int:
    from livegen.audio_io import AudioFileError, read_audio
    from livegen.cli.output_file import check_output, write_output
    from livegen.models import registry
    from livegen.models.musicgen import MusicGenPipeline

    source = registry.repo_id(args.model)
    try:
        output = getattr(args, "output_file", None) or check_output(args.output)
        t0 = time.perf_counter()
        print(f"loading {source} ...", file=sys.stderr)
        pipe = MusicGenPipeline.from_pretrained(source)
        print(f"loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.melody is not None and not pipe.config.is_melody:
            raise UsageError(f"--melody needs a melody model (e.g. musicgen-melody), not {args.model}")
        if args.seconds > pipe.max_seconds:
            raise UsageError(
                f"--seconds {args.seconds:g} is too long for {args.model} (at most {pipe.max_seconds:.1f})"
            )
        melody = None
        if args.melody is not None:
            melody = read_audio(Path(args.melody).expanduser())
        prompt_audio = None
        if args.continue_ is not None:
            prompt_audio, _ = read_audio(
                Path(args.continue_).expanduser(), pipe.sample_rate, channels=pipe.audio_channels
            )
        bar = TokenProgress(pipe.frame_rate)
        t1 = time.perf_counter()
        audio = pipe.generate(
            args.prompt,
            seconds=args.seconds,
            top_k=250 if args.top_k is None else args.top_k,
            top_p=0.0 if args.top_p is None else args.top_p,
            temperature=1.0 if args.temperature is None else args.temperature,
            guidance_scale=pipe.config.guidance_scale if args.guidance is None else args.guidance,
            seed=args.seed,
            melody=melody,
            audio_prompt=prompt_audio,
            progress=bar,
        )
        bar.close()
        print(
            f"seed {pipe.last_seed}; generated {args.seconds:g} s in {time.perf_counter() - t1:.1f} s",
            file=sys.stderr,
        )
        out = write_output(output, audio, pipe.sample_rate)
    except Cancelled:
        return 130
    except (LivegenError, AudioFileError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(out)
    return 0
