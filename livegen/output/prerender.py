"""A budgeted cache of pre-rendered clips for pads mapped to fixed prompts.

In idle time the daemon renders :meth:`PrerenderCache.wanted` requests and stores them with
:meth:`PrerenderCache.put`; a pad press asks :meth:`PrerenderCache.get` first.

* The key is every parameter that changes the audio: model, prompt, negative prompt, seed,
  duration (seconds, or bars + bpm + beats per bar), steps, CFG scale, sampler.
* ``get`` with a seed looks up that exact clip; ``get`` with ``seed=None`` ("any variation")
  *takes* one cached variation, so the next press gets a different one and ``wanted`` asks
  for a replacement.
* Clips live in RAM up to ``memory_mb``; the least recently used spill to ``directory`` (as
  ``.npy`` + ``.json``) up to ``disk_mb``, and beyond that are dropped. Only files written by
  this cache are ever deleted.
* Clips rendered ahead of a set (``livegen render``, :func:`write_kept`) lie in the same
  directory under the same names, marked ``kept``: :meth:`PrerenderCache.scan` indexes them at
  start; they are outside both budgets, read from disk when played, and never deleted (taking
  one removes it from this run's index only, so the next start has the whole bank again).

Thread-safe (one lock; nothing here runs in the audio callback).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from livegen.request import Clip, Request

Key = tuple


def _f(v: float | None) -> float | None:
    return None if v is None else float(v)


def variation_key(request: Request, default_bpm: float = 120.0) -> Key:
    """Every audio-changing parameter except the seed."""
    if request.seconds is not None or request.bars is None:
        duration: tuple = ("seconds", _f(request.seconds))
    else:
        bpm = request.bpm if request.bpm is not None else default_bpm
        duration = ("bars", float(request.bars), float(bpm), int(request.beats_per_bar))
    return (request.model, request.prompt, request.negative_prompt or None, duration,
            request.steps, _f(request.cfg_scale), request.sampler)


def cache_key(request: Request, default_bpm: float = 120.0) -> Key:
    """:func:`variation_key` plus the seed."""
    return variation_key(request, default_bpm) + (request.seed,)


def entry_name(key: Key) -> str:
    """The file stem (``.npy`` + ``.json``) of the clip with cache key ``key``."""
    return hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:24]


def variation_seed(request: Request, n: int, default_bpm: float = 120.0) -> int:
    """The seed of variation ``n`` (0-based) of ``request``: the daemon's idle pre-rendering and
    ``livegen render`` derive the same seeds."""
    return _derive_seed(variation_key(request, default_bpm), n)


def _meta(clip: Clip, kept: bool) -> dict[str, Any]:
    return {"request": clip.request.to_dict(), "sample_rate": clip.sample_rate, "seed": clip.seed,
            "model": clip.model, "job_id": clip.job_id, "created": clip.created,
            "render_seconds": clip.render_seconds, "kept": kept}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def kept_path(directory: str | Path, request: Request, default_bpm: float = 120.0) -> Path:
    """Where :func:`write_kept` puts the clip for ``request`` (its seed set); the ``.json`` beside
    it is written last, so a clip is complete exactly when that file exists."""
    return Path(directory) / f"{entry_name(cache_key(request, default_bpm))}.npy"


def write_kept(directory: str | Path, request: Request, clip: Clip, default_bpm: float = 120.0) -> Path:
    """Write ``clip`` (rendered for ``request``; its seed is the clip's) as a kept cache entry,
    atomically: the audio, then the metadata (each to a temporary name, fsync'ed, renamed). A
    process killed meanwhile leaves no entry (at most a hidden ``.part`` file or a lone ``.npy``,
    which :meth:`PrerenderCache.scan` ignores and the next write replaces)."""
    req = request.replace(seed=int(clip.seed))
    path = kept_path(directory, req, default_bpm)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
    _atomic_write(path, lambda f: np.save(f, audio, allow_pickle=False))
    meta = _meta(dataclasses.replace(clip, request=req), kept=True)
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode("utf-8")))
    return path


def _derive_seed(vkey: Key, n: int) -> int:
    h = hashlib.sha256(repr((vkey, n)).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass
class _Entry:
    key: Key
    vkey: Key
    clip: Clip | None  # None when spilled to disk
    nbytes: int
    file: Path | None = None
    kept: bool = False  # written by `livegen render`: outside the budgets, never deleted


class PrerenderCache:
    def __init__(self, memory_mb: float = 256.0, disk_mb: float = 0.0, directory: str | Path | None = None,
                 variations: int = 2, default_bpm: float = 120.0):
        self.memory_budget = int(memory_mb * 1024 * 1024)
        self.disk_budget = int(disk_mb * 1024 * 1024)
        self.directory = Path(directory) if directory is not None else (
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "livegen" / "prerender")
        self.variations = max(1, int(variations))
        self.default_bpm = float(default_bpm)
        self._mem: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()  # LRU first
        self._disk: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._kept: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._mem_bytes = 0
        self._disk_bytes = 0
        self._targets: list[Request] = []
        self._generation: dict[Key, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    # ------------------------------------------------------------------ targets
    def set_targets(self, requests: list[Request]) -> None:
        """The fixed-prompt requests to keep variations of (e.g. ``Mapper.fixed_requests``)."""
        with self._lock:
            seen = set()
            self._targets = []
            for r in requests:
                vk = variation_key(r, self.default_bpm)
                if vk not in seen:
                    seen.add(vk)
                    self._targets.append(r)

    def wanted(self) -> list[Request]:
        """Requests to render in idle time: the missing variations of every target, first
        variations of all targets before second ones. Each has a fixed, new seed. Calling it
        again before ``put`` returns the same requests."""
        with self._lock:
            rounds: list[list[Request]] = []
            for target in self._targets:
                vk = variation_key(target, self.default_bpm)
                have = self._count(vk)
                gen = self._generation.get(vk, 0)
                for j in range(self.variations - have):
                    while len(rounds) <= j:
                        rounds.append([])
                    rounds[j].append(target.replace(seed=_derive_seed(vk, gen + j), origin="prerender"))
            return [r for rnd in rounds for r in rnd]

    # ------------------------------------------------------------------ get / put
    def get(self, request: Request) -> Clip | None:
        """The cached clip for ``request`` (see the module doc for ``seed=None``), or None."""
        with self._lock:
            if request.seed is not None:
                key = cache_key(request, self.default_bpm)
                entry = self._mem.get(key) or self._disk.get(key) or self._kept.get(key)
                if entry is None:
                    self.misses += 1
                    return None
                clip = self._load(entry)
                if clip is None:
                    self.misses += 1
                    return None
                if key in self._mem:
                    self._mem.move_to_end(key)
                self.hits += 1
                return self._for(request, clip)
            vk = variation_key(request, self.default_bpm)
            for store in (self._mem, self._disk, self._kept):
                for key, entry in store.items():
                    if entry.vkey == vk:
                        clip = self._load(entry)
                        self._remove(key)
                        if clip is None:
                            continue
                        self.hits += 1
                        return self._for(request, clip)
            self.misses += 1
            return None

    def put(self, request: Request, clip: Clip) -> None:
        """Store ``clip`` rendered for ``request`` (its seed is the clip's seed)."""
        req = request.replace(seed=int(clip.seed))
        key = cache_key(req, self.default_bpm)
        vk = variation_key(req, self.default_bpm)
        nbytes = int(clip.audio.nbytes)
        with self._lock:
            self._remove(key)
            self._generation[vk] = self._generation.get(vk, 0) + 1
            entry = _Entry(key, vk, dataclasses.replace(clip, request=req), nbytes)
            if nbytes > self.memory_budget:
                self._spill(entry)
                return
            self._mem[key] = entry
            self._mem_bytes += nbytes
            while self._mem_bytes > self.memory_budget and self._mem:
                _, old = self._mem.popitem(last=False)
                self._mem_bytes -= old.nbytes
                self._spill(old)

    def ready(self, request: Request) -> int:
        """How many variations of ``request`` (any seed) are ready."""
        with self._lock:
            return self._count(variation_key(request, self.default_bpm))

    def __contains__(self, request: Request) -> bool:
        key = cache_key(request, self.default_bpm)
        with self._lock:
            return key in self._mem or key in self._disk or key in self._kept

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk) + len(self._kept)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._mem) + list(self._disk) + list(self._kept):
                self._remove(key)

    def scan(self) -> int:
        """Index the kept clips in ``directory`` (written by ``livegen render``); returns how many.
        Reads only the small ``.json`` files (the audio is read when a clip is played); a file
        that is incomplete, unreadable or not named after its own key is skipped, never deleted.
        Blocking: call it off the event loop."""
        found: list[_Entry] = []
        try:
            metas = sorted(self.directory.glob("*.json"))
        except OSError:
            return 0
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if not meta.get("kept"):
                    continue
                request = request_from_dict(meta["request"]).replace(seed=int(meta["seed"]))
                npy = meta_path.with_suffix(".npy")
                nbytes = npy.stat().st_size
            except (OSError, ValueError, KeyError, TypeError):
                continue
            key = cache_key(request, self.default_bpm)
            if entry_name(key) != meta_path.stem:
                continue
            found.append(_Entry(key, variation_key(request, self.default_bpm), None, nbytes, npy, kept=True))
        with self._lock:
            for entry in found:
                if entry.key not in self._mem and entry.key not in self._disk:
                    self._kept[entry.key] = entry
            counts = collections.Counter(e.vkey for e in self._kept.values())
            for vk, n in counts.items():  # new variations get seeds after the kept ones'
                self._generation[vk] = max(self._generation.get(vk, 0), n)
            return len(found)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"memory_clips": len(self._mem), "memory_bytes": self._mem_bytes,
                    "disk_clips": len(self._disk), "disk_bytes": self._disk_bytes,
                    "kept_clips": len(self._kept),
                    "hits": self.hits, "misses": self.misses, "evicted": self.evicted,
                    "targets": len(self._targets)}

    # ------------------------------------------------------------------ internals (lock held)
    def _count(self, vk: Key) -> int:
        return sum(1 for store in (self._mem, self._disk, self._kept) for e in store.values() if e.vkey == vk)

    @staticmethod
    def _for(request: Request, clip: Clip) -> Clip:
        return dataclasses.replace(clip, request=request.replace(seed=int(clip.seed)))

    def _remove(self, key: Key) -> None:
        entry = self._mem.pop(key, None)
        if entry is not None:
            self._mem_bytes -= entry.nbytes
        entry = self._disk.pop(key, None)
        if entry is not None:
            self._disk_bytes -= entry.nbytes
            self._delete_files(entry)
        self._kept.pop(key, None)  # a kept file stays on disk

    def _spill(self, entry: _Entry) -> None:
        if entry.nbytes > self.disk_budget or entry.clip is None:
            self.evicted += 1
            return
        while self._disk_bytes + entry.nbytes > self.disk_budget and self._disk:
            _, old = self._disk.popitem(last=False)
            self._disk_bytes -= old.nbytes
            self._delete_files(old)
            self.evicted += 1
        clip = entry.clip
        name = entry_name(entry.key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{name}.npy"
            np.save(path, np.ascontiguousarray(clip.audio, dtype=np.float32), allow_pickle=False)
            meta = _meta(clip, kept=False)
            path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
        except OSError:
            self.evicted += 1
            return
        entry.clip = None
        entry.file = path
        self._disk[entry.key] = entry
        self._disk_bytes += entry.nbytes

    def _load(self, entry: _Entry) -> Clip | None:
        if entry.clip is not None:
            return entry.clip
        if entry.file is None:
            return None
        try:
            audio = np.load(entry.file, allow_pickle=False)
            meta = json.loads(entry.file.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Clip(request=request_from_dict(meta["request"]), audio=audio, sample_rate=int(meta["sample_rate"]),
                    seed=int(meta["seed"]), model=meta["model"], job_id=int(meta["job_id"]),
                    created=float(meta["created"]), render_seconds=float(meta["render_seconds"]))

    @staticmethod
    def _delete_files(entry: _Entry) -> None:
        if entry.file is not None:
            for p in (entry.file, entry.file.with_suffix(".json")):
                try:
                    p.unlink()
                except OSError:
                    pass


def request_from_dict(d: dict[str, Any]) -> Request:
    """A request from :meth:`Request.to_dict` (keys it does not know, e.g. ``source_job``, dropped)."""
    names = {f.name for f in dataclasses.fields(Request)} - {"source"}
    fields = {k: v for k, v in d.items() if k in names}
    fields["outputs"] = tuple(fields.get("outputs") or ("play",))
    return Request(**fields)
