"""The audio file ``livegen generate`` writes: format from the extension, checked before rendering.

:func:`check_output` runs before any model is loaded: the extension must name a format libsndfile
(soundfile) can write here, and the folder must exist and be writable, or be creatable (a file is
created and removed there to be sure: permission bits say nothing for root or read-only mounts).
:func:`write_output` then writes atomically in that format.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livegen.audio_io import AudioFileError

# extension -> (soundfile format, subtype): float where the format holds it, else the best it has
_CANDIDATES: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "FLOAT"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aiff": ("AIFF", "FLOAT"),
    ".aif": ("AIFF", "FLOAT"),
    ".caf": ("CAF", "FLOAT"),
    ".w64": ("W64", "FLOAT"),
    ".rf64": ("RF64", "FLOAT"),
    ".au": ("AU", "FLOAT"),
}
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


@dataclass(frozen=True)
class OutputFile:
    path: Path
    format: str  # soundfile format, e.g. "WAV"
    subtype: str  # soundfile subtype, e.g. "FLOAT"
    create_dirs: bool = False  # the folder does not exist yet and is created when writing

    @property
    def description(self) -> str:
        return f"{self.format} {self.subtype.replace('_', ' ').lower()}"


def writable_formats() -> dict[str, tuple[str, str]]:
    """The extensions this installation's libsndfile can write, with their format and subtype."""
    import soundfile as sf

    formats = sf.available_formats()
    out = {}
    for ext, (fmt, subtype) in _CANDIDATES.items():
        try:
            usable = fmt in formats and sf.check_format(fmt, subtype)
        except (ValueError, TypeError):
            usable = False
        if usable:
            out[ext] = (fmt, subtype)
    return out


def _accepted() -> str:
    return ", ".join(writable_formats())


def _probe_folder(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None (a file is created and removed)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".livegen-probe-", dir=str(folder))
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(tmp)
    return None


def check_output(path: str | Path) -> OutputFile:
    """The output file of ``path``, or AudioFileError with one sentence (no file is left behind)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AudioFileError(f"the output path {path} is a folder; give a file name such as {path / 'out.wav'}.")
    formats = writable_formats()
    ext = path.suffix.lower()
    if ext not in formats:
        what = f"the extension {ext}" if ext else "no extension"
        raise AudioFileError(f"the output file {path.name} has {what}, which livegen cannot write; "
                             f"use one of {_accepted()}.")
    fmt, subtype = formats[ext]
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AudioFileError(f"the output folder {parent} cannot be created because {existing} is a file.")
    why = _probe_folder(existing)
    if why is not None:
        where = f"the output folder {parent}" if existing == parent else \
            f"the output folder {parent} cannot be created and {existing}"
        raise AudioFileError(f"{where} is not writable ({why.lower()}); choose another --output.")
    if path.exists() and not os.access(path, os.W_OK):
        raise AudioFileError(f"the output file {path} exists and is not writable; choose another --output.")
    return OutputFile(path, fmt, subtype, create_dirs=existing != parent)


def write_output(out: OutputFile, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``[channels, frames]`` float audio as ``out`` says, atomically (temp file, then rename)."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if out.subtype not in _FLOAT_SUBTYPES:  # integer and lossy encoders wrap or distort past full scale
        audio = np.clip(audio, -1.0, 1.0)
    tmp = None
    try:
        if out.create_dirs:
            out.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.path.name}.", suffix=".tmp", dir=str(out.path.parent))
        os.close(fd)
        sf.write(tmp, np.ascontiguousarray(audio.T), int(sample_rate), format=out.format, subtype=out.subtype)
        os.replace(tmp, out.path)
    except Exception as exc:  # OSError, soundfile.LibsndfileError
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        detail = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise AudioFileError(f"could not write {out.path} ({detail}).") from None
    return out.path
