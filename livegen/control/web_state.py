"""What the browser control surface shows: one JSON snapshot of the daemon, built on the loop.

:class:`SurfaceState` follows the generation thread's events (which pad is queued, where in the
queue, which one renders and at which step) and the replies (a finished clip's file), and reads
the rest from the daemon when a snapshot is taken: the pads of the current mapping and bank, the
parameters in force (the same values ``/livegen/get`` answers), the slots playing, the
pre-rendered variations, recent clips with a small peak array for a waveform thumbnail, and
health (ready, models, backend, queue, underflows, refused messages, the log's last warnings).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livegen import limits as lim
from livegen.control import osc_verbs as verbs
from livegen.control.web_security import relative_clip
from livegen.engine import worker as wk
from livegen.mapping import Generate, MidiEvent
from livegen.musical import SCALES
from livegen.request import LAUNCHES, Request, RequestError

PARAMS = ("seed", "steps", "cfg", "seconds", "bars", "bpm", "launch", "model", "sampler", "key", "scale")
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")  # the key menu ("" clears it)
PEAKS = 64  # points of a clip's waveform thumbnail
CLIPS_KEPT = 24
WARNINGS_KEPT = 20
PAD_VELOCITY = 100  # a click plays the pad like a note of this velocity (as pre-rendering does)


class LogRing(logging.Handler):
    """The last warnings and errors of the ``livegen`` loggers, for the health panel."""

    def __init__(self, size: int = WARNINGS_KEPT) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            text = str(record.msg)
        self.records.append({"time": record.created, "level": record.levelname.lower(), "text": text[:400]})
        self.count += 1


def peaks(audio: np.ndarray, points: int = PEAKS) -> list[float]:
    """Peak level of ``audio`` [C, N] in ``points`` equal spans (0..1, three decimals)."""
    a = np.abs(np.asarray(audio, dtype=np.float32))
    if a.ndim == 1:
        a = a[None, :]
    if a.size == 0:
        return []
    mono = a.max(axis=0)
    edges = np.linspace(0, mono.shape[0], min(points, mono.shape[0]) + 1).astype(int)
    return [round(float(min(1.0, mono[s:e].max())), 3) for s, e in zip(edges[:-1], edges[1:], strict=True)]


@dataclass
class JobView:
    id: int
    slot: int | None
    prompt: str
    priority: int
    rendering: bool = False
    step: int = 0
    total: int = 0


@dataclass
class ClipView:
    job: int
    prompt: str
    seconds: float
    slot: int | None
    created: float
    file: str = ""  # the file's name ("" when no file was written)
    url: str = ""  # where the page may fetch it ("" when it is not in one of the daemon's folders)
    peaks: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Pad:
    index: int
    note: int | None
    channel: int
    slot: int | None
    prompt: str  # the prompt a hit renders
    bank_prompt: str | None  # the bank's prompt for this pad (editable), None when the rule has none
    spec: dict[str, Any]


class SurfaceState:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.jobs: dict[int, JobView] = {}
        self.clips: collections.deque[ClipView] = collections.deque(maxlen=CLIPS_KEPT)
        self._finished: dict[int, ClipView] = {}  # rendered, waiting for the done reply (its file)
        self.backend = ""
        self.log_ring = LogRing()

    # ---- folders clips may be served from ------------------------------------------------
    def roots(self) -> dict[str, Path | None]:
        s = self.daemon.settings
        cache = self.daemon.prerender.directory if self.daemon.prerender is not None else None
        return {"folder": s.folder.path, "cache": cache}

    # ---- events --------------------------------------------------------------------------
    def on_worker(self, event: wk.WorkerEvent) -> bool:
        """Follow one generation event; True when what the page shows changed."""
        r = event.request
        if event.kind == wk.DEVICE:
            self.backend = event.reason
            return True
        if event.job_id is None or r is None or r.origin == "prerender":
            return event.kind in (wk.READY, wk.LOADED, wk.FATAL)
        if event.kind == wk.QUEUED:
            self.jobs[event.job_id] = JobView(event.job_id, r.slot, r.prompt, r.priority)
        elif event.kind in (wk.STARTED, wk.PROGRESS):
            job = self.jobs.setdefault(event.job_id, JobView(event.job_id, r.slot, r.prompt, r.priority))
            job.rendering = True
            if event.kind == wk.PROGRESS:
                job.step, job.total = event.step, event.total
        elif event.kind in (wk.DONE, wk.FAILED, wk.CANCELLED, wk.REPLACED):
            self.jobs.pop(event.job_id, None)
            if event.kind == wk.DONE and event.clip is not None:
                c = event.clip
                view = ClipView(event.job_id, r.prompt, float(c.seconds), r.slot, time.time(), peaks=peaks(c.audio))
                self._finished[event.job_id] = view
                while len(self._finished) > CLIPS_KEPT:
                    self._finished.pop(next(iter(self._finished)))
        return True

    def on_done(self, job: int, path: str, seconds: float) -> ClipView:
        """The ``/livegen/done`` reply: the clip joins the recent list (with its file, if any)."""
        view = self._finished.pop(job, None) or ClipView(job, "", float(seconds), None, time.time())
        if path:
            view.file = Path(path).name
            place = relative_clip(self.roots(), path)
            if place is not None:
                view.url = f"/clip/{place[0]}/{place[1]}"
            if not view.prompt:
                view.prompt = view.file
        self.clips.appendleft(view)
        return view

    # ---- pads ----------------------------------------------------------------------------
    def pads(self) -> list[Pad]:
        """The pads of the current mapping and bank: the first note rule that generates, one pad per
        note (as a note-on of velocity 100 would play it); without one, the bank's prompts."""
        session = self.daemon.session
        mapper, state = session.mapper, session.state
        bank = mapper.banks[state.bank] if 0 <= state.bank < len(mapper.banks) else None
        for rule in mapper.rules:
            if rule.action != "generate" or rule.event != "note_on" or rule.numbers is None:
                continue
            uses_pad_prompt = "{pad_prompt}" in str(rule.opts.get("prompt", ""))
            ch = min(rule.channels) if rule.channels else 0
            out = []
            for i, note in enumerate(rule.numbers):
                spec: dict[str, Any] = {}
                for action in mapper.handle(MidiEvent("note_on", ch, note, PAD_VELOCITY), state):
                    if isinstance(action, Generate):
                        spec = dict(action.spec)
                        break
                bank_prompt = bank.prompts[i] if uses_pad_prompt and bank and i < len(bank.prompts) else None
                out.append(Pad(i, note, ch, spec.get("slot"), str(spec.get("prompt", "")), bank_prompt, spec))
            return out
        if bank is None:
            return []
        return [Pad(i, None, 0, i, p, p, {"prompt": p, "slot": i}) for i, p in enumerate(bank.prompts)]

    def _variations(self, spec: dict[str, Any]) -> int:
        cache = self.daemon.prerender
        if cache is None or not spec:
            return 0
        try:
            request: Request = self.daemon.session.build_request({**spec, "seed": None}, "prerender")
        except RequestError:
            return 0
        return cache.ready(request)

    def pad_views(self, player: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        d = self.daemon
        if player is None:
            player = d.player.stats() if d.player is not None else {}
        playing = set(player.get("slots_playing", []))
        levels = player.get("slot_levels") or {}  # {slot: peak of the last ~50 ms}, where the player has it
        places = player.get("slot_positions") or {}  # {slot: [frame in the clip, its length]}
        rate = float(getattr(d.player, "sample_rate", 0) or 0)
        queued = sorted((j for j in self.jobs.values() if not j.rendering), key=lambda j: (-j.priority, j.id))
        position = {j.slot: n for n, j in reversed(list(enumerate(queued, 1)))}
        rendering = {j.slot: j for j in self.jobs.values() if j.rendering}
        out = []
        for pad in self.pads():
            s = pad.slot
            variations = self._variations(pad.spec)
            if s in rendering:
                state = "rendering"
            elif s in position:
                state = "queued"
            elif s in playing:
                state = "playing"
            elif variations:
                state = "cached"
            else:
                state = "idle"
            job = rendering.get(s)
            out.append({"index": pad.index, "note": pad.note, "slot": s, "prompt": pad.prompt,
                        "bank_prompt": pad.bank_prompt, "state": state, "playing": s in playing,
                        "position": position.get(s, 0), "step": job.step if job else 0,
                        "total": job.total if job else 0, "variations": variations,
                        "has_clip": s in d.delivery.slot_clips, **_meter(s in playing, levels.get(s),
                                                                          places.get(s), rate)})
        return out

    # ---- parameters ----------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        session = self.daemon.session
        return {name: session.value_in_force(name)[0] for name in PARAMS}

    def controls(self) -> dict[str, Any]:
        """Ranges and choices of the parameter controls, from the limits in force."""
        limits = self.daemon.session.limits
        caps = limits.caps(self.daemon.session.state.params.get("model"))
        window = (caps.max_seconds if caps and caps.max_seconds else None) or limits.max_seconds
        return {
            "seed": {"min": -1, "max": lim.SEED_RANGE[1]},
            "steps": {"min": 1, "max": int(limits.max_steps), "enabled": bool(caps is None or caps.takes_steps)},
            "cfg": {"min": lim.CFG_RANGE[0], "max": 15.0, "step": 0.1},
            "seconds": {"min": 0.0, "max": round(min(window, limits.max_seconds), 3), "step": 0.01},
            "bars": {"min": 0.0, "max": 16.0, "step": 0.25},
            "bpm": {"min": 20.0, "max": 400.0, "step": 0.1},
            "launch": {"choices": list(LAUNCHES)},
            "model": {"choices": sorted(limits.models)},
            "sampler": {"choices": list(caps.samplers) if caps else [], "enabled": bool(caps and caps.samplers)},
            "key": {"choices": ["", *KEYS]},
            "scale": {"choices": ["", *SCALES]},
        }

    # ---- the snapshot --------------------------------------------------------------------
    def health(self, st: dict[str, Any] | None = None) -> dict[str, Any]:
        d = self.daemon
        w = d.worker.stats() if d.worker is not None else {}
        if st is None:
            st = d.player.stats() if d.player is not None else {}
        models = []
        for name, caps in sorted(d.session.limits.models.items()):
            models.append({"name": name, "engine": caps.engine.value, "sample_rate": caps.sample_rate,
                           "max_seconds": caps.max_seconds, "loaded": caps.loaded})
        return {"ready": d.ready_at is not None, "models": models, "backend": self.backend,
                "queued": int(w.get("queued", 0)), "running": w.get("running"), "done": int(w.get("done", 0)),
                "failed": int(w.get("failed", 0)), "underflows": int(st.get("underflows", 0)),
                "xruns": int(st.get("xruns", st.get("underflows", 0))),
                "last_underflow": _wall_time(st.get("last_underflow_time")), "stalled": bool(st.get("stalled")),
                "audio_backend": st.get("backend"), "refused": int(d.refused), "dropped": self.dropped(),
                "feedback": d.feedback.stats() if getattr(d, "feedback", None) is not None else None,
                "clips_played": d.delivery.clips_played,
                "files_written": d.delivery.files_written, "warnings": list(self.log_ring.records)[::-1],
                "warnings_total": self.log_ring.count}

    def dropped(self) -> dict[str, int]:
        """Messages that never reached the session: OSC that did not parse or came from a sender
        outside the allow-list, MIDI that was malformed or not understood."""
        d = self.daemon
        osc = d.osc.stats() if d.osc is not None else {}
        return {"osc_malformed": int(osc.get("malformed", 0)), "osc_rejected": int(osc.get("rejected", 0)),
                "midi_discarded": int(getattr(d.midi, "discarded", 0)) if d.midi is not None else 0}

    def snapshot(self) -> dict[str, Any]:
        session = self.daemon.session
        player = self.daemon.player.stats() if self.daemon.player is not None else {}
        mapper = session.mapper
        return {
            "type": "state",
            "mapping": ", ".join(mapper.names),
            "bank": session.state.bank,
            "banks": [b.name for b in mapper.banks],
            "pads": self.pad_views(player),
            "params": self.params(),
            "tempo": {"source": session.tempo_source.value},  # internal, midi_clock or link: what moves bpm
            "controls": self.controls(),
            "clips": [asdict(c) for c in self.clips],
            "health": self.health(player),
        }


def _meter(playing: bool, level: float | None, place: list[int] | None, rate: float) -> dict[str, Any]:
    """A playing pad's level (0..1, two decimals) and place in its clip (seconds, and the fraction);
    None where the player does not report them."""
    if not playing:
        return {"level": None, "loop_pos": None, "loop_len": None, "loop_frac": None}
    out: dict[str, Any] = {"level": round(min(1.0, float(level)), 2) if level is not None else None,
                           "loop_pos": None, "loop_len": None, "loop_frac": None}
    if place and len(place) == 2 and rate > 0:
        pos, length = int(place[0]), int(place[1])
        out.update(loop_pos=round(pos / rate, 1), loop_len=round(length / rate, 2),
                   loop_frac=round(min(1.0, pos / length), 2) if length > 0 else None)
    return out


_WALL_OFFSET = time.time() - time.monotonic()  # one offset: the same instant always gives the same text


def _wall_time(t_monotonic: float | None) -> float | None:
    """A monotonic time as Unix time (what the page shows), None stays None."""
    if t_monotonic is None:
        return None
    return round(_WALL_OFFSET + float(t_monotonic), 3)


def is_done_reply(address: str, args: tuple) -> bool:
    return address == verbs.DONE and len(args) >= 3
