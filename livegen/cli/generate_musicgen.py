"""`livegen generate` for MusicGen models: text (+ melody or an audio prompt) -> 32 kHz float WAV.

Called by ``livegen.cli.generate.run`` after its argument checks. ``--continue F`` continues the
audio in F (resampled to 32 kHz); the WAV holds only the continuation, ``--seconds`` long.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from livegen.cli import UsageError
from livegen.errors import Cancelled, LivegenError


class TokenProgress:
    """``progress(step, total)`` drawing ``generating [####   ] 120/250  41.3 tokens/s (x0.83 real time)``.

    One step is one decoder step (one token per codebook, 1/50 s of audio).
    """

    def __init__(self, frame_rate: int, stream: TextIO | None = None, width: int = 24):
        self.frame_rate = frame_rate
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False
        self._every = 1

    def __call__(self, step: int, total: int) -> None:
        if step == 1:
            self.start = time.perf_counter()
            self._every = 1 if self._tty else max(1, total // 20)
        if step % self._every and step != total:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (step - 1) / elapsed if step > 1 else 0.0
        filled = int(self.width * step / total) if total else self.width
        text = (
            f"generating [{'#' * filled}{' ' * (self.width - filled)}] {step}/{total}  "
            f"{rate:.1f} tokens/s (x{rate / self.frame_rate:.2f} real time)"
        )
        if self._tty:
            self.stream.write("\r" + text + ("\n" if step >= total else ""))
            self._open = step < total
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def run_musicgen(args: argparse.Namespace) -> int:
    from livegen.audio_io import AudioFileError, read_audio, write_wav
    from livegen.models import registry
    from livegen.models.musicgen import MusicGenPipeline

    source = registry.repo_id(args.model)
    try:
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
        out = write_wav(Path(args.output).expanduser(), audio, pipe.sample_rate)
    except Cancelled:
        return 130
    except (LivegenError, AudioFileError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(out)
    return 0
