"""Render a bank ahead of a set: every prompt times N variations, into the pre-render cache (as kept
clips the daemon plays as cached pads from its start) and/or a DAW folder.

* **The plan.** A mapping file gives the requests the daemon itself would pre-render for its
  fixed-prompt pads, for every bank (:meth:`livegen.session.Session.prerender_requests` with the
  bank selected); a mapping without such pads gives one request per bank prompt. A CSV gives one
  request per row (column ``prompt``; optional ``negative_prompt``, ``model``, ``seconds``,
  ``bars``, ``bpm``, ``beats_per_bar``, ``steps``, ``cfg``, ``sampler``, ``loop``, ``seed``). The
  requests are completed by a :class:`~livegen.session.Session` with the settings and the loaded
  models' capabilities, exactly as the daemon completes a pad press, so the cache key is the one
  the daemon looks up. Variation ``i`` has the seed the daemon's idle pre-rendering derives
  (:func:`livegen.output.prerender.variation_seed`), or ``seed + i`` when the CSV gives a seed.
* **The render.** A :class:`ClipRenderer`: :class:`LocalRenderer` runs the daemon's own
  generation worker (same options: loudness, fades, model defaults) so a clip equals the
  daemon's for the same request and seed; the Ray pool (livegen.engine.ray_pool) spreads clips
  over its replicas.
* **Resumable.** A clip whose outputs are all there is skipped. Every output is written atomically
  (the cache's ``.npy`` then ``.json`` through temporary names; the folder writer's no-replace
  publish), so a killed run loses only the clips in flight.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from livegen.limits import ModelCaps
from livegen.output import prerender as pc
from livegen.request import Clip, Request, RequestError

log = logging.getLogger("livegen.render")

CSV_FIELDS = {"prompt": str, "negative_prompt": str, "model": str, "seconds": float, "bars": float,
              "bpm": float, "beats_per_bar": int, "steps": int, "cfg": float, "sampler": str,
              "loop": bool, "seed": int}
_PART = re.compile(r"^\.[0-9a-f]{24}\.(npy|json)\.(\d+)\.part$")


class BankError(ValueError):
    """The bank file cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Item:
    """One clip of the plan: a complete request with its seed set."""

    request: Request
    variation: int

    @property
    def label(self) -> str:
        return f"{self.request.prompt[:40]} #{self.variation + 1}"


@dataclass
class Summary:
    planned: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


class ClipRenderer(Protocol):
    """What renders the clips of a plan (the local worker or the Ray pool)."""

    capacity: int  # clips to keep in flight

    def caps(self) -> dict[str, ModelCaps]: ...

    def submit(self, request: Request) -> cf.Future: ...  # of a Clip

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------ the plan
def _session(settings: Any, mapping: Path | None, caps: dict[str, ModelCaps]) -> Any:
    from livegen.mapping import Mapper
    from livegen.session import Session

    mapper = Mapper.from_files([mapping] if mapping is not None else [])
    return Session(settings, mapper, caps)


def _csv_value(name: str, text: str, where: str) -> Any:
    kind = CSV_FIELDS[name]
    text = text.strip()
    if text == "":
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise BankError(f"{where}: {name} must be {kind.__name__}, not {text!r}.") from None


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a bank CSV as request specs (only the cells that are filled)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "prompt" not in columns:
                raise BankError(f"{path}: the CSV has no 'prompt' column (columns: {', '.join(columns) or 'none'}).")
            unknown = [c for c in columns if c not in CSV_FIELDS]
            if unknown:
                raise BankError(f"{path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(CSV_FIELDS)}.")
            specs = []
            for n, row in enumerate(reader, start=2):
                spec = {}
                for key, text in row.items():
                    if key is None or text is None:
                        continue
                    value = _csv_value(key.strip(), text, f"{path}:{n}")
                    if value is not None:
                        spec[key.strip()] = value
                if spec.get("prompt"):
                    specs.append(spec)
    except OSError as exc:
        raise BankError(f"cannot read {path}: {exc.strerror or exc}.") from None
    return specs


def plan(settings: Any, bank: Path, caps: dict[str, ModelCaps], variations: int) -> list[Item]:
    """Every request of ``bank`` times ``variations``, in order (first variations first)."""
    if bank.suffix.lower() == ".csv":
        session = _session(settings, None, caps)
        base = []
        for spec in read_csv(bank):
            seed = spec.pop("seed", None)
            if "cfg" in spec:
                spec["cfg_scale"] = spec.pop("cfg")
            base.append((_build(session, spec, bank), seed))
    else:
        session = _session(settings, bank, caps)
        base = [(r, None) for r in mapping_requests(session)]
        if not base:
            raise BankError(f"{bank}: the mapping has no fixed-prompt pads and no bank prompts to render.")
    seen: set = set()
    unique = []
    for request, seed in base:
        vk = pc.variation_key(request, settings.tempo.bpm)
        if vk not in seen:
            seen.add(vk)
            unique.append((request, seed))
    items = []
    for i in range(max(1, int(variations))):
        for request, seed in unique:
            s = seed + i if seed is not None else pc.variation_seed(request, i, settings.tempo.bpm)
            # no slot: the worker would coalesce a pad's variations (the slot changes no sample)
            items.append(Item(request.replace(seed=s, slot=None, priority=0), i))
    return items


def _build(session: Any, spec: dict[str, Any], where: Path) -> Request:
    try:
        return session.build_request({**spec, "seed": None, "slot": None, "outputs": ("play",)}, "render")
    except RequestError as exc:
        raise BankError(f"{where}: {spec.get('prompt')!r}: {exc}") from None


def mapping_requests(session: Any) -> list[Request]:
    """What the daemon pre-renders for the mapping's fixed-prompt pads, in every bank; without
    such pads, one request per bank prompt (with the mapping's params)."""
    out: list[Request] = []
    banks = max(1, len(session.mapper.banks))
    for b in range(banks):
        session.state.bank = b
        out += session.prerender_requests()
    session.state.bank = 0
    if out:
        return [r.replace(origin="render") for r in out]
    for bank in session.mapper.banks:
        for prompt in bank.prompts:
            out.append(session.build_request({"prompt": prompt, "seed": None}, "render"))
    return out


# ------------------------------------------------------------------------------------ outputs
class Outputs:
    """Where the clips go and whether one is there already."""

    def __init__(self, cache: Path | None, folder: Path | None, default_bpm: float, subtype: str = "float") -> None:
        self.cache = cache
        self.folder = folder
        self.default_bpm = default_bpm
        self.writer = None
        if folder is not None:
            from livegen.output.folder import FolderWriter

            self.writer = FolderWriter(folder, subtype=subtype)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            remove_dead_parts(cache)

    def _wav(self, request: Request) -> Path | None:
        if self.folder is None:
            return None
        from livegen.output.folder import clip_stem

        stub = Clip(request=request, audio=np.zeros((1, 0), np.float32), sample_rate=1, seed=int(request.seed),
                    model=request.model, job_id=0)
        return self.folder / f"{clip_stem(stub)}.wav"

    def _cached(self, request: Request) -> bool:
        return self.cache is not None and pc.kept_path(self.cache, request, self.default_bpm).with_suffix(
            ".json").is_file()

    def done(self, request: Request) -> bool:
        wav = self._wav(request)
        return (self.cache is None or self._cached(request)) and (wav is None or wav.is_file())

    def from_cache(self, request: Request) -> Clip | None:
        """The kept clip of ``request`` when only the folder output is missing."""
        if not self._cached(request):
            return None
        cache = pc.PrerenderCache(directory=self.cache, default_bpm=self.default_bpm)
        cache.scan()
        return cache.get(request)

    def write(self, request: Request, clip: Clip) -> None:
        if self.cache is not None and not self._cached(request):
            pc.write_kept(self.cache, request, clip, self.default_bpm)
        wav = self._wav(request)
        if self.writer is not None and wav is not None and not wav.is_file():
            self.writer.write(clip)


def remove_dead_parts(directory: Path) -> int:
    """Remove the temporary files of cache writers that are no longer running (a killed render)."""
    removed = 0
    for p in directory.iterdir():
        m = _PART.match(p.name)
        if m is None or _alive(int(m.group(2))):
            continue
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------ the run
def run(items: list[Item], renderer: ClipRenderer, outputs: Outputs, progress: bool = True,
        on_clip: Callable[[Item, Clip], None] | None = None) -> Summary:
    """Render what is missing of ``items`` (``capacity`` clips in flight), writing each clip as it
    arrives; a clip that fails is reported and the rest carry on."""
    from tqdm import tqdm

    t0 = time.monotonic()
    summary = Summary(planned=len(items))
    todo: collections.deque[Item] = collections.deque()
    for item in items:
        if outputs.done(item.request):
            summary.skipped += 1
            continue
        clip = outputs.from_cache(item.request) if outputs.folder is not None else None
        if clip is not None:  # rendered before; only the folder copy is missing
            outputs.write(item.request, clip)
            summary.skipped += 1
            continue
        todo.append(item)
    bar = tqdm(total=len(items), initial=summary.skipped, unit="clip", desc="render", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    inflight: dict[cf.Future, Item] = {}
    try:
        while todo or inflight:
            while todo and len(inflight) < max(1, renderer.capacity):
                item = todo.popleft()
                inflight[renderer.submit(item.request)] = item
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for future in done:
                item = inflight.pop(future)
                try:
                    clip = future.result()
                except Exception as exc:  # noqa: BLE001 - one clip's failure is reported, the rest go on
                    summary.failed.append(f"{item.label}: {exc}")
                    bar.write(f"failed: {item.label}: {exc}", file=sys.stderr)
                else:
                    outputs.write(item.request, clip)
                    summary.rendered += 1
                    if on_clip is not None:
                        on_clip(item, clip)
                bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.monotonic() - t0
    return summary


class LocalRenderer:
    """The daemon's generation worker in this process (see :mod:`livegen.engine.host`)."""

    capacity = 2  # one rendering, one queued behind it: the engine never waits for the writer

    def __init__(self, settings: Any) -> None:
        from livegen.engine.host import WorkerHost
        from livegen.engine.loaders import build_loaders, worker_options

        self.settings = settings
        self.host = WorkerHost(build_loaders(settings), worker_options(settings, render_nice=0))
        self.host.wait_ready()

    def caps(self) -> dict[str, ModelCaps]:
        return {name: ModelCaps.from_engine(name, engine, self.settings.models.get(name))
                for name, engine in self.host.worker.engines.items()}

    def submit(self, request: Request) -> cf.Future:
        return self.host.render(request)[1]

    def close(self) -> None:
        self.host.close()
