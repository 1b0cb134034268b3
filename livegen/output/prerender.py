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
                entry = self._mem.get(key) or self._disk.get(key)
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
            for store in (self._mem, self._disk):
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
            return key in self._mem or key in self._disk

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._mem) + list(self._disk):
                self._remove(key)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"memory_clips": len(self._mem), "memory_bytes": self._mem_bytes,
                    "disk_clips": len(self._disk), "disk_bytes": self._disk_bytes,
                    "hits": self.hits, "misses": self.misses, "evicted": self.evicted,
                    "targets": len(self._targets)}

    # ------------------------------------------------------------------ internals (lock held)
    def _count(self, vk: Key) -> int:
        return sum(1 for e in self._mem.values() if e.vkey == vk) + sum(
            1 for e in self._disk.values() if e.vkey == vk)

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
        name = hashlib.sha256(repr(entry.key).encode("utf-8")).hexdigest()[:24]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{name}.npy"
            np.save(path, np.ascontiguousarray(clip.audio, dtype=np.float32), allow_pickle=False)
            meta = {"request": clip.request.to_dict(), "sample_rate": clip.sample_rate, "seed": clip.seed,
                    "model": clip.model, "job_id": clip.job_id, "created": clip.created,
                    "render_seconds": clip.render_seconds}
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
        rd = meta["request"]
        rd["outputs"] = tuple(rd["outputs"])
        return Clip(request=Request(**rd), audio=audio, sample_rate=int(meta["sample_rate"]),
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
