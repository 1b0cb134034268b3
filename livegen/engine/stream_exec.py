"""Executing a job while its audio is handed out: the streaming path of the generation thread.

:func:`render_stream` replaces the worker's ``engine.generate`` -> ``normalize`` -> ``fit_to_length``
for a job that carries a :class:`~livegen.output.stream_sink.ChunkSink`: it iterates the engine's
``generate_stream`` (Stable Audio: VAE tiles of ``chunk_latents`` latents; MusicGen: bursts of
``chunk_seconds``), passes every piece through the same three stages in streaming form and writes
the result to the sink on this (the generation) thread. The DONE clip is the concatenation of what
was written, so the file in the DAW folder, the slot's clip for re-triggering and what sounded are
the same samples by construction.

Levels in a stream (why it differs from :func:`livegen.output.loudness.normalize`): the gain has to
be known before the first chunk sounds, and the whole clip does not exist yet. So

- the **clip gain** is decided from the first chunk that is not silent (its BS.1770 loudness, or
  the mean-square estimate when it is shorter than a 400 ms block), capped at ``max_gain_db``, and
  applied unchanged to the rest of the clip. Chunks before it are under the -70 LUFS gate and pass
  at unity. The loudness of the whole clip therefore lands near, not on, the target (the first
  tile of a clip is usually representative; the sidecar records the loudness actually reached);
- the **true-peak ceiling** is held by a streaming look-ahead limiter: the same gain curve as the
  clip limiter (each peak's reduction reached ``LOOKAHEAD_SECONDS`` before it and held as long after,
  smoothed), computed over a sliding window, so the output is delayed by ``3 * look-ahead`` plus the
  oversampler's context (about 20 ms) and never more. Peaks are measured 4x oversampled over the
  window with context on both sides; the limiter may go deeper than ``max_limit_db`` when a peak
  needs it (it cannot take the excess off a clip gain already sounding);
- the values reached (loudness, true peak, deepest reduction) are measured on the finished clip and
  stored in its :class:`~livegen.output.loudness.Levels` (``method`` prefixed ``stream-``).

Length and loops: one-shots are cut (or padded) to the exact length with the same fades as
``fit_to_length`` (fade-in on the head, fade-out at the end of the material). A loop keeps
``fit_to_length``'s crossfade of the render's natural continuation into its head, but rotated by the
fade length: the clip starts ``fade`` frames into the render and its *last* ``fade`` frames are the
crossfade (head * rise + continuation * fall). The head of that crossfade is known at once and the
continuation arrives last, so the loop can be streamed as it is made, its first pass is exactly the
clip, and the wrap from the last frame to the first is continuous (the same equal-gain ramp as the
buffered loop). When the engine cannot render past the loop (a window limit), the head is faded in
and the end faded out, as ``fit_to_length`` does.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from livegen.errors import Cancelled
from livegen.output.loudness import (
    ABSOLUTE_GATE_LUFS,
    LOOKAHEAD_SECONDS,
    MARGIN_DB,
    Levels,
    _peak_per_sample,
    loudness,
    true_peak,
)
from livegen.output.stream_sink import ChunkSink
from livegen.tempo import _ramp

log = logging.getLogger("livegen.stream")

SA_CHUNK_LATENTS = 16  # Stable Audio tile: 16 latents = 32,768 frames = 0.74 s (the pipeline default is 32)
MG_CHUNK_SECONDS = 0.5  # MusicGen burst
PEAK_CONTEXT = 256  # frames of context on each side of the oversampled peak window
LOOP_SLACK_SECONDS = 0.02  # a streamed loop renders this much more (MusicGen rounds to 20 ms frames)


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


class StreamLevels:
    """Clip gain from the first audible chunk, then a streaming look-ahead true-peak limiter.

    ``push`` takes raw chunks and returns the frames that are final; ``finish`` returns the rest.
    With ``settings`` None (or ``normalize`` false) chunks pass through unchanged, undelayed.
    """

    def __init__(self, sample_rate: int, channels: int, settings: Any = None) -> None:
        self.sr = int(sample_rate)
        self.on = settings is not None and bool(getattr(settings, "normalize", False))
        self.settings = settings
        self.gain_db: float | None = None
        self.measured: float | None = None
        self.method = "silent"
        self.non_finite = 0
        self.half = max(1, int(LOOKAHEAD_SECONDS * self.sr))
        self.ceiling = 10.0 ** (((settings.true_peak_dbtp if self.on else 0.0) - MARGIN_DB) / 20.0)
        self._x = np.zeros((channels, 0), dtype=np.float64)  # gained input so far
        self._need = np.zeros(0, dtype=np.float64)  # per-frame gain the ceiling needs
        self._emitted = 0
        self._raw: list[np.ndarray] = []
        self.deepest = 1.0

    @property
    def delay(self) -> int:
        return 3 * self.half + PEAK_CONTEXT if self.on else 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            self.non_finite += int(bad.sum())
            x = np.where(bad, 0.0, x)
        self._raw.append(x.astype(np.float32))
        if not self.on:
            return x.astype(np.float32)
        if self.gain_db is None:
            value, method = loudness(x, self.sr)
            if math.isfinite(value) and value >= ABSOLUTE_GATE_LUFS:
                s = self.settings
                self.gain_db = min(float(s.target_lufs) - value, float(s.max_gain_db))
                self.measured, self.method = value, method
        g = 10.0 ** ((self.gain_db or 0.0) / 20.0)
        self._x = np.concatenate([self._x, x * g], axis=1)
        return self._advance(final=False)

    def finish(self) -> np.ndarray:
        if not self.on:
            return np.zeros((self._x.shape[0], 0), dtype=np.float32)
        return self._advance(final=True)

    def _advance(self, final: bool) -> np.ndarray:
        n = self._x.shape[1]
        have = self._need.shape[0]
        upto = n if final else max(have, n - PEAK_CONTEXT)
        if upto > have:  # the ceiling's need for frames [have, upto), peaks measured with context
            lo = max(0, have - PEAK_CONTEXT)
            hi = min(n, upto + PEAK_CONTEXT)
            window = self._x[:, lo:hi]
            peaks = _peak_per_sample(window, self.sr) if window.shape[1] >= 4 else np.abs(window).max(axis=0)
            need = np.minimum(1.0, self.ceiling / np.maximum(peaks[have - lo:upto - lo], 1e-12))
            self._need = np.concatenate([self._need, need])
        have = self._need.shape[0]
        h = self.half
        end = have if final else max(self._emitted, have - 3 * h)
        start = self._emitted
        if end <= start:
            return np.zeros((self._x.shape[0], 0), dtype=np.float32)
        from scipy.ndimage import minimum_filter1d, uniform_filter1d

        a = max(0, start - 3 * h)
        b = min(have, end + 3 * h)
        need = self._need[a:b]
        held = minimum_filter1d(need, size=4 * h + 1, mode="nearest")
        curve = np.minimum(uniform_filter1d(held, size=2 * h + 1, mode="nearest"), held)
        curve = np.minimum(curve[start - a:end - a], 1.0)
        self.deepest = min(self.deepest, float(curve.min()))
        out = self._x[:, start:end] * curve[None, :]
        self._emitted = end
        return out.astype(np.float32)

    def result(self, audio: np.ndarray, target_lufs: float) -> Levels | None:
        """The Levels of the finished clip ``audio`` (None when normalisation is off)."""
        if not self.on:
            return None
        raw = np.concatenate(self._raw, axis=1) if self._raw else np.zeros((audio.shape[0], 0), np.float32)
        tp_before = _db(true_peak(raw, self.sr))
        tp_after = _db(true_peak(audio, self.sr))
        after, _ = loudness(audio.astype(np.float64), self.sr)

        def fin(v: float) -> float | None:
            return v if math.isfinite(v) else None

        if self.gain_db is None:
            return Levels("stream-silent", None, float(target_lufs), 0.0, 0.0, fin(tp_before), fin(tp_after),
                          None, self.non_finite)
        return Levels(f"stream-{self.method}", self.measured, float(target_lufs), float(self.gain_db),
                      -_db(self.deepest) if self.deepest < 1.0 else 0.0, fin(tp_before),
                      fin(tp_after), fin(after), self.non_finite)


class StreamShaper:
    """``fit_to_length`` in streaming form (see the module docstring): ``push`` frames of the render,
    get frames of the clip; ``finish`` returns the rest; exactly ``target`` frames come out in all."""

    def __init__(self, channels: int, target: int, fade: int, loop: bool, rotate: bool) -> None:
        self.c = channels
        self.target = int(target)
        self.fade = max(0, min(int(fade), self.target // 2))
        self.loop = loop
        self.rotate = loop and rotate and self.fade > 0
        self.fade_in = self.fade if loop else min(self.fade, 32)
        self._in = 0  # render frames received
        self._out = 0  # clip frames emitted
        self._head = np.zeros((channels, 0), dtype=np.float32)  # rotate: render[0:fade]
        self._tail = np.zeros((channels, 0), dtype=np.float32)  # rotate: render[target:target+fade]
        self._hold = np.zeros((channels, 0), dtype=np.float32)  # plain: the last `fade` frames, not yet out

    def push(self, x: np.ndarray) -> np.ndarray:
        s, n = self._in, x.shape[1]
        self._in += n
        if n == 0:
            return self._empty()
        if self.rotate:
            f, t = self.fade, self.target
            if s < f:
                self._head = np.concatenate([self._head, x[:, :f - s]], axis=1)
            body = x[:, max(0, f - s):max(0, min(n, t - s))]
            if s + n > t:
                self._tail = np.concatenate([self._tail, x[:, max(0, t - s):max(0, t + f - s)]], axis=1)
            self._out += body.shape[1]
            return np.ascontiguousarray(body, dtype=np.float32)
        x = x[:, :max(0, self.target - s)].astype(np.float32, copy=True)
        if s < self.fade_in and x.shape[1]:
            e = min(self.fade_in, s + x.shape[1])
            x[:, :e - s] *= _ramp(self.fade_in)[s:e]
        buf = np.concatenate([self._hold, x], axis=1)
        keep = min(self.fade, buf.shape[1])
        if self._out + buf.shape[1] >= self.target:  # the cut is inside: fade the material's end now
            return self._flush(buf)
        out, self._hold = buf[:, :buf.shape[1] - keep], buf[:, buf.shape[1] - keep:]
        self._out += out.shape[1]
        return out

    def _flush(self, buf: np.ndarray) -> np.ndarray:
        self._hold = self._empty()
        if buf.shape[1] and self.fade > 0:
            k = min(self.fade, buf.shape[1])
            buf = buf.copy()
            buf[:, buf.shape[1] - k:] *= _ramp(self.fade)[::-1][self.fade - k:]
        self._out += buf.shape[1]
        return buf

    def finish(self) -> np.ndarray:
        if self.rotate:
            f = self.fade
            head = np.pad(self._head, ((0, 0), (0, f - self._head.shape[1])))
            tail = self._tail
            if tail.shape[1] < f:  # the render ended early: continue it with its last frame
                last = tail[:, -1:] if tail.shape[1] else np.zeros((self.c, 1), np.float32)
                tail = np.concatenate([tail, np.repeat(last, f - tail.shape[1], axis=1)], axis=1)
            up = _ramp(f)
            region = head * up + tail * up[::-1]
            pad = max(0, self.target - f - self._out)
            out = np.concatenate([np.zeros((self.c, pad), np.float32), region.astype(np.float32)], axis=1)
            self._out += out.shape[1]
            return out
        out = self._flush(self._hold) if self._out < self.target else self._empty()
        pad = self.target - self._out
        if pad > 0:
            out = np.concatenate([out, np.zeros((self.c, pad), np.float32)], axis=1)
            self._out += pad
        return out

    def _empty(self) -> np.ndarray:
        return np.zeros((self.c, 0), dtype=np.float32)


class _GuardedSink:
    """Calls the sink; a sink that raises is dropped (logged) and the render carries on to DONE."""

    def __init__(self, sink: ChunkSink) -> None:
        self.sink: ChunkSink | None = sink

    def call(self, name: str, *args: Any) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, name)(*args)
        except Exception:  # noqa: BLE001 - the clip must still be finished and delivered
            log.warning("the streaming sink failed in %s(); the clip goes on without it", name, exc_info=True)
            sink, self.sink = self.sink, None
            if name != "end":
                try:
                    sink.end(False)
                except Exception:  # noqa: BLE001
                    pass


def stream_kwargs(engine: Any, kwargs: dict[str, Any], chunk_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``kwargs`` plus the chunk size ``engine.generate_stream`` takes (Stable Audio: ``chunk_latents``,
    MusicGen: ``chunk_seconds``); ``chunk_options`` overrides the defaults."""
    params = inspect.signature(engine.generate_stream).parameters
    out = dict(kwargs)
    opts = {"chunk_latents": SA_CHUNK_LATENTS, "chunk_seconds": MG_CHUNK_SECONDS, **(chunk_options or {})}
    for name, value in opts.items():
        if name in params and value is not None:
            out[name] = value
    return out


def render_stream(engine: Any, prompt: str, kwargs: dict[str, Any], sink: ChunkSink, target: int, fade: int,
                  loop: bool, levels_settings: Any = None, progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, Levels | None]:
    """Render ``prompt`` through ``engine.generate_stream`` into ``sink``; returns the clip
    ``[C, target]`` float32 (the concatenation of what the sink got) and its Levels.

    ``kwargs`` are ``generate``'s (``seconds`` included, as the worker computed them). Raises
    :class:`Cancelled` when ``cancel()`` turns true between chunks; ``sink.end(False)`` is called
    then and on any failure, ``sink.end(True)`` after the last frame."""
    sr = int(engine.sample_rate)
    channels = int(getattr(engine, "audio_channels", 0) or 0)
    kw = stream_kwargs(engine, kwargs, getattr(sink, "chunk_options", None))
    seconds = float(kw["seconds"])
    window = getattr(engine, "max_seconds", None)
    if loop:  # room for the continuation (MusicGen renders whole 20 ms frames)
        seconds = seconds + LOOP_SLACK_SECONDS
        if window is not None:
            seconds = min(seconds, float(window))
        kw["seconds"] = seconds
    rotate = int(seconds * sr) >= target + fade
    guarded = _GuardedSink(sink)
    guarded.call("begin", sr, int(target))
    ok = False
    shaper: StreamShaper | None = None
    stages: StreamLevels | None = None
    pieces: list[np.ndarray] = []

    def emit(x: np.ndarray) -> None:
        assert shaper is not None
        out = shaper.push(x) if x.shape[1] else x
        if out.shape[1]:
            out = np.ascontiguousarray(out, dtype=np.float32)
            pieces.append(out)
            guarded.call("write", out)

    try:
        for raw in engine.generate_stream(prompt, progress=progress, cancel=cancel, **kw):
            if cancel is not None and cancel():
                raise Cancelled("cancelled while streaming")
            raw = np.asarray(raw, dtype=np.float32)
            if raw.ndim == 1:
                raw = raw[None, :]
            if stages is None:
                channels = raw.shape[0]
                stages = StreamLevels(sr, channels, levels_settings)
                shaper = StreamShaper(channels, target, fade, loop, rotate)
            emit(stages.push(raw))
        if stages is None or shaper is None:
            raise RuntimeError("the engine streamed no audio")
        emit(stages.finish())
        rest = shaper.finish()
        if rest.shape[1]:
            pieces.append(rest)
            guarded.call("write", np.ascontiguousarray(rest))
        audio = np.concatenate(pieces, axis=1) if pieces else np.zeros((channels or 1, target), np.float32)
        if audio.shape[1] != target:
            raise RuntimeError(f"streamed {audio.shape[1]} frames, expected {target}")
        levels = stages.result(audio, getattr(levels_settings, "target_lufs", -14.0))
        if levels is not None and levels.non_finite:
            log.warning("the model produced %d non-finite samples (set to 0)", levels.non_finite)
        ok = True
        return audio, levels
    finally:
        guarded.call("end", ok)
