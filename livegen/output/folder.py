"""Atomic WAV (+ JSON sidecar) files in a folder a DAW watches.

Writing one clip:

1. The audio is written with ``soundfile`` (libsndfile headers) to a temporary file in the
   target folder, named ``.livegen-<32 hex digits>.wav.part`` (hidden, and clearly the daemon's
   own), locked with ``flock`` until it is published, and fsync'ed.
2. The temporary file is **published** under its final name with an operation that is atomic
   and never replaces an existing file, so a folder watcher (Ableton Live's browser,
   ``inotifywait``) sees one complete file appear and no other program's file is overwritten,
   even when several processes write the same name at once. The methods, tried in this order
   (:class:`Publish`); a method the file system does not support is skipped from then on:

   * ``RENAME_NOREPLACE``: ``renameat2(RENAME_NOREPLACE)`` (Linux) or
     ``renamex_np(RENAME_EXCL)`` (macOS); watchers see ``MOVED_TO``, as with a plain rename
     (watchers listening for ``close_write,moved_to`` only would miss a hard link);
   * ``LINK``: ``os.link(temp, final)`` then ``unlink(temp)``; watchers see ``CREATE``;
   * ``RESERVE``, for file systems without hard links (FAT, exFAT, some network shares): the
     final name is reserved with ``os.open(final, O_CREAT | O_EXCL)`` (an empty file of our own),
     then the temporary file is ``os.replace``'d over it. Never overwrites another program's
     file either, but a watcher may briefly see the empty reserved file before the rename, and a
     crash between the two steps leaves that empty file behind.

   When the name is taken (``EEXIST``), ``-2``, ``-3`` ... is appended and the next name tried. A
   name whose ``.json`` sidecar already exists is skipped as well.
3. Only after the WAV is published, the JSON sidecar is written the same way (temporary file
   ``.livegen-<hex>.json.part``, fsync, atomic no-overwrite publish) under the WAV's stem.

On a failure before the WAV is published, the temporary file is removed and :class:`FolderError`
says what happened in one sentence (``the disk is full``, ``permission denied``, ...). If only the
sidecar fails, the complete WAV stays and the :class:`FolderError` names it (``.wav_path``).

Leftovers: a process killed during a write leaves its ``.livegen-*.part`` file. Constructing a
:class:`FolderWriter` removes such files (exactly the names matching :data:`TEMP_NAME`, and only
those no live writer holds locked: another daemon writing into the same folder keeps its files);
nothing else in the folder is ever deleted.

File names: ``{slot}_{prompt-slug}_{bpm}bpm_{bars}bars_{seed}.wav``; for clips whose duration
was given in seconds ``{seconds}s`` replaces ``{bars}bars`` (e.g. ``3_warm-pad_120bpm_4s_42.wav``);
a clip without a slot uses ``x``.

WAV headers: ``pcm16``/``pcm24`` are plain PCM (``WAVE_FORMAT_EXTENSIBLE`` when there are more
than 2 channels). ``float`` is ``WAVE_FORMAT_IEEE_FLOAT``: libsndfile writes its ``fmt`` chunk
without the ``cbSize`` field that the WAVE spec requires for non-PCM formats (SoX warns "wave
header missing extended part of fmt chunk"), so the writer adds it in place, reusing the room of
libsndfile's optional ``PEAK`` chunk (the audio data does not move). ``WAVE_FORMAT_EXTENSIBLE``
is not used for float because SoX 14.4 warns about every extensible float file.

Injection point: ``FolderWriter(path, opener=...)``; ``opener(path)`` must return a binary file
object opened for exclusive creation (the default is ``open(path, "xb")``). Tests use it to
simulate a full disk (``OSError(ENOSPC)`` from ``write``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import os
import re
import struct
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

import livegen
from livegen.output.folder_publish import (
    Publish,
    _unlink_quietly,
    _Unsupported,
    available_methods,
    publish,
)
from livegen.request import Clip

log = logging.getLogger("livegen.output.folder")

SUBTYPES = ("float", "pcm24", "pcm16")
MAX_SLUG = 40
MAX_NAMES = 100_000  # -2 ... -100000, then give up
TEMP_NAME = re.compile(r"\.livegen-[0-9a-f]{32}\.(?:wav|json)\.part")
"""The daemon's own temporary file names (``fullmatch``); the only files it ever deletes."""

_SF_SUBTYPE = {"float": "FLOAT", "pcm24": "PCM_24", "pcm16": "PCM_16"}


class FolderError(RuntimeError):
    """Writing into the folder failed; the message is one plain sentence.

    ``wav_path`` is the published WAV when only its sidecar failed, else ``None``.
    """

    def __init__(self, message: str, wav_path: Path | None = None) -> None:
        super().__init__(message)
        self.wav_path = wav_path


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


def _samples(chunk: np.ndarray, subtype: str) -> np.ndarray:
    """``chunk`` (frames, C) float32 -> the array handed to soundfile, already quantised.

    Full scale is 2**(bits-1), as libsndfile reads it back; +1.0 saturates at the top code; NaN
    becomes 0 and infinities the extremes. pcm24 goes in as int32 whose top 24 bits are the sample.
    """
    x = np.nan_to_num(chunk, nan=0.0, posinf=1.0, neginf=-1.0)
    if subtype == "float":
        return np.ascontiguousarray(x, dtype=np.float32)
    if subtype == "pcm16":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype(np.int32) << 8


class _Sink:
    """The file object libsndfile writes through (soundfile's virtual I/O).

    An ``OSError`` must not escape the C callback (cffi would print it and carry on): the first
    one is kept in ``error``, libsndfile sees a short write, and the writer re-raises it.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        try:
            n = self.f.write(data)
        except OSError as exc:
            self.error = exc
            return 0
        return len(data) if n is None else int(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return self.f.seek(offset, whence)
        except OSError as exc:
            self.error = self.error or exc
            return -1

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int = -1) -> bytes:  # libsndfile does not read a file it writes
        return b""


def _add_fmt_cbsize(path: Path) -> bool:
    """Give an IEEE-float ``fmt`` chunk written by libsndfile its ``cbSize`` field, in place.

    The chunks between ``WAVE`` and ``data`` are rewritten as: ``fmt`` (18 bytes, cbSize 0),
    the other chunks except ``PEAK``, then a ``JUNK`` chunk over the room left, so that the
    ``data`` chunk keeps its offset. Returns whether the header was changed.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        head = os.pread(fd, 65536, 0)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        pos, chunks = 12, []
        while pos + 8 <= len(head) and head[pos:pos + 4] != b"data":
            cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
            chunks.append((cid, head[pos + 8:pos + 8 + size]))
            pos += 8 + size + (size & 1)
        if head[pos:pos + 4] != b"data" or not chunks or chunks[0][0] != b"fmt ":
            return False
        fmt = chunks[0][1]
        if len(fmt) != 16 or struct.unpack_from("<H", fmt)[0] != 3:
            return False
        new = b"fmt " + struct.pack("<I", 18) + fmt + b"\0\0"
        for cid, body in chunks[1:]:
            if cid != b"PEAK":
                new += cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)
        room = pos - 12 - len(new)
        if room != 0 and room < 8:
            return False
        if room:
            new += b"JUNK" + struct.pack("<I", room - 8) + b"\0" * (room - 8)
        os.pwrite(fd, new, 12)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- the writer
class FolderWriter:
    """Writes clips into ``path`` (created when missing) as WAV + JSON sidecar.

    ``subtype``: one of :data:`SUBTYPES`; ``sidecar``: write the JSON file; ``opener``: see the
    module doc; ``chunk_frames``: frames per write call; ``publish``: the methods to try, in order
    (default :func:`available_methods`). Construction removes the daemon's own leftover
    temporary files (``leftovers_removed`` says how many) and never raises for I/O problems.
    """

    def __init__(self, path: str | Path, subtype: str = "float", sidecar: bool = True,
                 opener: Callable[[str], BinaryIO] | None = None, chunk_frames: int = 65536,
                 publish: Sequence[Publish] | None = None):
        if subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {', '.join(SUBTYPES)}, not {subtype!r}")
        self.path = Path(path).expanduser()
        self.subtype = subtype
        self.sidecar = sidecar
        self.opener = opener or (lambda p: open(p, "xb"))  # noqa: SIM115
        self.chunk_frames = max(1, int(chunk_frames))
        self.methods: list[Publish] = list(publish if publish is not None else available_methods())
        if not self.methods:
            raise ValueError("publish needs at least one method.")
        self.leftovers_removed = self.remove_leftovers()

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
        try:
            with self._temp("wav") as tmp:
                self._write_wav(tmp, audio, int(clip.sample_rate))
                wav = self._publish_free(tmp.path, stem)
        except OSError as exc:
            raise FolderError(f"Could not write {stem}.wav into {self.path}: {_why(exc)}.") from exc
        if self.sidecar:
            meta = self.sidecar_fields(clip, name_fields, wav.name)
            data = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            json_path = wav.with_suffix(".json")
            try:
                with self._temp("json") as tmp:
                    tmp.write(data)
                    tmp.seal()
                    published = self._publish_as(tmp.path, json_path)
            except OSError as exc:
                raise FolderError(f"The clip was written to {wav}, but its sidecar {json_path.name} could not "
                                  f"be written: {_why(exc)}.", wav_path=wav) from exc
            if not published:
                log.warning("The sidecar %s was not written: another program created a file of that name "
                            "just now; the WAV %s is complete.", json_path, wav.name)
        self._fsync_dir()
        return wav

    async def write_async(self, clip: Clip, name_fields: dict[str, Any] | None = None) -> Path:
        """:meth:`write` on a worker thread, so the event loop never blocks on the disk."""
        return await asyncio.to_thread(self.write, clip, name_fields)

    def remove_leftovers(self) -> int:
        """Delete this daemon's unfinished temporary files (:data:`TEMP_NAME`) that no running
        writer holds; returns how many were removed. Never touches any other file."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("Could not look for unfinished temporary files in %s: %s.", self.path, _why(exc))
            return 0
        removed = 0
        for e in entries:
            if not TEMP_NAME.fullmatch(e.name) or not e.is_file(follow_symlinks=False):
                continue
            try:
                fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live writer; skip it
                if not os.path.samestat(os.fstat(fd), os.lstat(e.path)):
                    continue
                os.unlink(e.path)  # while holding the lock (see _Temp)
                removed += 1
            except OSError:
                continue
            finally:
                os.close(fd)
        if removed:
            log.info("Removed %d unfinished temporary file%s (.livegen-*.part) from %s, left by an "
                     "interrupted write.", removed, "" if removed == 1 else "s", self.path)
        return removed

    def sidecar_fields(self, clip: Clip, name_fields: dict[str, Any] | None, wav_name: str) -> dict[str, Any]:
        """What the JSON sidecar holds: every value the clip was made with, as it was given."""
        f = _fields(clip, name_fields)
        r = clip.request
        created = _dt.datetime.fromtimestamp(clip.created, tz=_dt.timezone.utc)
        meta: dict[str, Any] = {
            "file": wav_name,
            "prompt": f["prompt"],
            "negative_prompt": f["negative_prompt"],
            "model": f["model"],
            "seed": int(f["seed"]),
            "steps": f["steps"],
            "cfg": f["cfg"],
            "sampler": f["sampler"],
            "seconds": r.seconds,
            "duration": round(clip.seconds, 6),
            "frames": clip.frames,
            "sample_rate": int(clip.sample_rate),
            "channels": clip.channels,
            "subtype": self.subtype,
            "bpm": f["bpm"],
            "bars": f["bars"],
            "beats_per_bar": f["beats_per_bar"],
            "slot": f["slot"],
            "job_id": clip.job_id,
            "render_seconds": round(float(clip.render_seconds), 3),
            "levels": clip.levels.as_dict() if clip.levels is not None else None,
            **({"action": r.action, "strength": r.strength, "source_job": r.source.job_id}  # extend / vary
               if r.action != "generate" and r.source is not None else {}),
            "created": created.isoformat(timespec="milliseconds"),
            "livegen_version": livegen.__version__,
        }
        meta = {k: _plain(v) for k, v in meta.items()}
        for k, v in (name_fields or {}).items():
            v = v.item() if isinstance(v, np.generic) else v
            if k not in meta and _jsonable(v):
                meta[k] = v
        return meta

    # ------------------------------------------------------------------ internals
    def _temp(self, kind: str) -> _Temp:
        return _Temp(self.path, kind, self.opener)

    def _publish_free(self, tmp: Path, stem: str) -> Path:
        """Publish ``tmp`` as ``stem.wav``, else ``stem-2.wav``, ``stem-3.wav`` ..."""
        for n in range(1, MAX_NAMES + 1):
            name = stem if n == 1 else f"{stem}-{n}"
            wav = self.path / f"{name}.wav"
            if self.sidecar and os.path.lexists(wav.with_suffix(".json")):
                continue  # a stray sidecar: its WAV would get somebody else's metadata
            if self._publish_as(tmp, wav):
                return wav
        raise OSError(errno.EEXIST, f"more than {MAX_NAMES} files are named {stem}")

    def _publish_as(self, tmp: Path, final: Path) -> bool:
        """Publish with the first method the file system offers; False when ``final`` exists."""
        methods = self.methods
        for i, method in enumerate(methods):
            try:
                publish(method, tmp, final)
            except FileExistsError:
                return False
            except _Unsupported:
                if i + 1 < len(methods):
                    log.info("%s does not support %s; using %s.", self.path, method.value, methods[i + 1].value)
                continue
            self.methods = methods[i:]  # unsupported methods are not tried again
            return True
        raise OSError(errno.ENOTSUP, "the file system offers no safe way to add a file without "
                                     "overwriting another")

    def _write_wav(self, tmp: _Temp, audio: np.ndarray, rate: int) -> None:
        c, n = audio.shape
        fmt = "WAVEX" if c > 2 and self.subtype != "float" else "WAV"
        assert tmp.file is not None
        sink = _Sink(tmp.file)
        try:
            with sf.SoundFile(sink, "w", samplerate=rate, channels=c, subtype=_SF_SUBTYPE[self.subtype],
                              format=fmt) as out:
                for s in range(0, n, self.chunk_frames):
                    chunk = np.ascontiguousarray(audio[:, s:s + self.chunk_frames].T, dtype=np.float32)
                    out.write(_samples(chunk, self.subtype))
                    if sink.error is not None:
                        raise sink.error
        except (sf.LibsndfileError, RuntimeError, AssertionError) as exc:
            if sink.error is not None:
                raise sink.error from None
            raise OSError(errno.EIO, f"the audio library failed ({exc})") from exc
        if sink.error is not None:  # while libsndfile wrote the final header
            raise sink.error
        tmp.file.flush()
        if self.subtype == "float":
            _add_fmt_cbsize(tmp.path)
        tmp.seal()

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


class _Temp:
    """A locked temporary file ``.livegen-<hex>.<kind>.part`` in ``folder``.

    A second, read-only descriptor holds an ``flock`` (released when it is closed, also when the
    process is killed): it tells :meth:`FolderWriter.remove_leftovers` of any process that the
    file is in use, and it stays held while the file is published, after the writable file was
    closed (so a watcher sees ``CLOSE_WRITE`` only under the temporary name). A clean-up can only
    delete the file in the instant between its creation and the lock; then the link count is 0
    and a fresh name is taken. On leaving the ``with`` block the lock is dropped and, if the file
    was not published, it is removed.
    """

    def __init__(self, folder: Path, kind: str, opener: Callable[[str], BinaryIO]) -> None:
        self.folder, self.kind, self.opener = folder, kind, opener
        self.path = folder
        self.file: BinaryIO | None = None
        self._lock_fd = -1

    def __enter__(self) -> _Temp:
        for _ in range(8):
            self.path = self.folder / f".livegen-{uuid.uuid4().hex}.{self.kind}.part"
            self.file = self.opener(str(self.path))
            try:
                try:
                    self._lock_fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    self._release(remove=False)
                    continue
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                st = os.fstat(self._lock_fd)
                if st.st_nlink > 0 and os.path.samestat(st, os.fstat(self.file.fileno())):
                    return self
            except BaseException:
                self._release(remove=True)
                raise
            self._release(remove=False)  # removed by a clean-up before we locked it
        raise OSError(errno.EAGAIN, "the temporary files keep disappearing")

    def write(self, data: bytes) -> None:
        assert self.file is not None
        self.file.write(data)
    def seal(self) -> None:
        """Flush, fsync and close the writable file; the lock stays."""
        assert self.file is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        f, self.file = self.file, None
        f.close()

    def _release(self, remove: bool) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            try:
                f.close()
            except OSError:
                pass
        if remove:  # after publishing by rename the name is gone: a no-op
            _unlink_quietly(self.path)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __exit__(self, *exc: object) -> None:
        self._release(remove=True)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers; non-finite floats -> None (JSON has no NaN)."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable(v: Any) -> bool:
    return math.isfinite(v) if isinstance(v, float) else isinstance(v, (str, int, bool, type(None)))


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno == errno.ENOENT:
        return "the folder does not exist"
    if exc.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    return (exc.strerror or str(exc)).lower()
