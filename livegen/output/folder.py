"""Atomic WAV (+ JSON sidecar) files in a folder a DAW watches.

A clip is written to a hidden temporary file in the target folder, in chunks, fsync'ed and
then renamed into place, so a folder watcher (Ableton Live's browser, ``inotifywait``) sees one
complete file appear (``MOVED_TO``). Existing files are never overwritten: a ``-2``, ``-3`` ...
suffix is added. On any failure the partial files are removed and :class:`FolderError` says
what happened in one sentence.

File names: ``{slot}_{prompt-slug}_{bpm}bpm_{bars}bars_{seed}.wav``; for clips whose duration
was given in seconds ``{seconds}s`` replaces ``{bars}bars`` (e.g. ``3_warm-pad_120bpm_4s_42.wav``);
a clip without a slot uses ``x``.

Injection point: ``FolderWriter(path, opener=...)``; ``opener(path)`` must return a binary file
object opened for exclusive creation (the default is ``open(path, "xb")``). Tests use it to
simulate a full disk (``OSError(ENOSPC)`` from ``write``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import json
import math
import os
import re
import struct
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from livegen.request import Clip

SUBTYPES = ("float", "pcm24", "pcm16")
MAX_SLUG = 40


class FolderError(RuntimeError):
    """Writing into the folder failed; the message is one plain sentence."""


def slugify(text: str, max_len: int = MAX_SLUG) -> str:
    """Lowercase ASCII words joined by '-': no path separators, no dots, bounded length.

    Accented letters lose their accents; other non-ASCII text is dropped; an empty result
    becomes ``clip``.
    """
    norm = unicodedata.normalize("NFKD", str(text))
    ascii_text = norm.encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z0-9]+", ascii_text)
    slug = ""
    for w in words:
        cand = f"{slug}-{w}" if slug else w
        if len(cand) > max_len:
            if not slug:
                slug = w[:max_len]
            break
        slug = cand
    return slug or "clip"


def _num(v: float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}".rstrip("0").rstrip(".")


def clip_stem(clip: Clip, fields: dict[str, Any] | None = None) -> str:
    """The file name without extension (see the module doc)."""
    f = _fields(clip, fields)
    slot = "x" if f["slot"] is None else str(int(f["slot"]))
    bpm = _num(float(f["bpm"])) + "bpm"
    if f["bars"] is not None:
        length = _num(float(f["bars"])) + "bars"
    else:
        length = _num(round(float(f["seconds"]), 3)) + "s"
    seed = str(int(f["seed"]))
    return f"{slot}_{slugify(f['prompt'])}_{bpm}_{length}_{seed}"


def _fields(clip: Clip, fields: dict[str, Any] | None) -> dict[str, Any]:
    r = clip.request
    f: dict[str, Any] = {
        "slot": r.slot, "prompt": r.prompt, "negative_prompt": r.negative_prompt, "model": clip.model,
        "seed": clip.seed, "steps": r.steps, "cfg": r.cfg_scale, "sampler": r.sampler,
        "bpm": r.bpm if r.bpm is not None else 120.0, "bars": r.bars if r.seconds is None else None,
        "beats_per_bar": r.beats_per_bar, "seconds": r.seconds if r.seconds is not None else clip.seconds,
    }
    for k, v in (fields or {}).items():
        f[k] = v
    return f


def _wav_header(subtype: str, channels: int, rate: int, frames: int) -> bytes:
    width = {"float": 4, "pcm24": 3, "pcm16": 2}[subtype]
    data_bytes = frames * channels * width
    block = channels * width
    if subtype == "float":
        fmt = struct.pack("<HHIIHHH", 3, channels, rate, rate * block, block, 32, 0)
        fact = b"fact" + struct.pack("<II", 4, frames)
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, width * 8)
        fact = b""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + fact + b"data" + struct.pack("<I", data_bytes)
    pad = data_bytes & 1
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes + pad) + body


def _encode(chunk: np.ndarray, subtype: str) -> bytes:
    """``chunk`` (frames, C) float32 -> interleaved little-endian bytes."""
    x = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
    if subtype == "float":
        return x.astype("<f4").tobytes()
    # Full scale is 2**(bits-1), as libsndfile reads it back; +1.0 saturates at the top code.
    if subtype == "pcm16":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    ints = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype("<i4")
    return ints.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()


class FolderWriter:
    def __init__(self, path: str | Path, subtype: str = "float", sidecar: bool = True,
                 opener: Callable[[str], BinaryIO] | None = None, chunk_frames: int = 65536):
        if subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {', '.join(SUBTYPES)}, not {subtype!r}")
        self.path = Path(path).expanduser()
        self.subtype = subtype
        self.sidecar = sidecar
        self.opener = opener or (lambda p: open(p, "xb"))  # noqa: SIM115
        self.chunk_frames = int(chunk_frames)
        self._lock = threading.Lock()
        self._counter = 0

    # ------------------------------------------------------------------ public
    def write(self, clip: Clip, name_fields: dict[str, Any] | None = None) -> Path:
        """Write ``clip`` as WAV (+ JSON sidecar); returns the WAV path. Blocking: call it from
        a worker thread (or use :meth:`write_async`)."""
        audio = np.asarray(clip.audio)
        if audio.ndim != 2 or audio.shape[0] < 1:
            raise FolderError(f"The clip's audio has shape {audio.shape}; expected [channels, frames].")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderError(f"Cannot create the folder {self.path}: {_why(exc)}.") from exc
        stem = clip_stem(clip, name_fields)
        with self._lock:
            self._counter += 1
            tmp = self.path / f".{stem}.{os.getpid()}-{self._counter}.part"
            tmp_json = self.path / f".{stem}.{os.getpid()}-{self._counter}.json.part"
        made: list[Path] = []
        try:
            self._write_wav(tmp, audio, clip.sample_rate, made)
            if self.sidecar:
                meta = self._sidecar(clip, name_fields)
                self._write_bytes(tmp_json, (json.dumps(meta, indent=2) + "\n").encode("utf-8"), made)
            with self._lock:
                final = self._free_name(stem)
                if self.sidecar:
                    json_final = final.with_suffix(".json")
                    os.rename(tmp_json, json_final)
                    made.append(json_final)
                os.rename(tmp, final)
                made.remove(tmp)
            self._fsync_dir()
            return final
        except OSError as exc:
            for p in made:
                try:
                    p.unlink()
                except OSError:
                    pass
            raise FolderError(f"Could not write {stem}.wav into {self.path}: {_why(exc)}.") from exc

    async def write_async(self, clip: Clip, name_fields: dict[str, Any] | None = None) -> Path:
        """:meth:`write` on a worker thread, so the event loop never blocks on the disk."""
        return await asyncio.to_thread(self.write, clip, name_fields)

    # ------------------------------------------------------------------ internals
    def _free_name(self, stem: str) -> Path:
        n = 1
        while True:
            name = stem if n == 1 else f"{stem}-{n}"
            wav = self.path / f"{name}.wav"
            if not wav.exists() and not (self.sidecar and wav.with_suffix(".json").exists()):
                return wav
            n += 1

    def _write_wav(self, tmp: Path, audio: np.ndarray, rate: int, made: list[Path]) -> None:
        c, n = audio.shape
        f = self.opener(str(tmp))
        made.append(tmp)
        with f:
            f.write(_wav_header(self.subtype, c, int(rate), n))
            for s in range(0, n, self.chunk_frames):
                chunk = np.ascontiguousarray(audio[:, s:s + self.chunk_frames].T, dtype=np.float32)
                f.write(_encode(chunk, self.subtype))
            width = {"float": 4, "pcm24": 3, "pcm16": 2}[self.subtype]
            if (n * c * width) & 1:
                f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())

    def _write_bytes(self, tmp: Path, data: bytes, made: list[Path]) -> None:
        f = self.opener(str(tmp))
        made.append(tmp)
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _sidecar(self, clip: Clip, name_fields: dict[str, Any] | None) -> dict[str, Any]:
        f = _fields(clip, name_fields)
        created = _dt.datetime.fromtimestamp(clip.created, tz=_dt.timezone.utc)
        meta = {
            "prompt": f["prompt"],
            "negative_prompt": f["negative_prompt"],
            "model": f["model"],
            "seed": int(f["seed"]),
            "steps": f["steps"],
            "cfg": f["cfg"],
            "sampler": f["sampler"],
            "duration": round(clip.seconds, 6),
            "frames": clip.frames,
            "sample_rate": int(clip.sample_rate),
            "channels": clip.channels,
            "bpm": f["bpm"],
            "bars": f["bars"],
            "beats_per_bar": f["beats_per_bar"],
            "slot": f["slot"],
            "job_id": clip.job_id,
            "render_seconds": round(float(clip.render_seconds), 3),
            "created": created.isoformat(timespec="milliseconds"),
        }
        for k, v in (name_fields or {}).items():
            if k not in meta and _jsonable(v):
                meta[k] = v
        return meta


def _jsonable(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (str, int, bool, type(None)))


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno == errno.ENOENT:
        return "the folder does not exist"
    return (exc.strerror or str(exc)).lower()
