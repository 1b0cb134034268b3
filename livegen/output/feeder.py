"""The feeder of the rtmixer player: keeps every voice's ring buffer seconds ahead of the callback.

An rtmixer ring-buffer action that ever finds its ring empty ends, silently. So the feeder keeps
``LEAD_SECONDS`` of every clip voice in its ring (a loop is fed round and round; a one-shot is fed
to its end, and its action ends exactly there), far more than a GIL stall lasts (a 300 ms stall
leaves more than a second). A stream voice gets what its producer wrote; when the producer falls
behind and the ring holds less than ``STREAM_LOW_SECONDS``, the held-back tail is faded out and
silence is written (a miss). The feeder runs on an ordinary thread (``Feeder``); tests call
:meth:`livegen.output.rt_player.RtPlayer.pump` directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from livegen.output.rt_voices import RtStreamVoice, RtVoice

log = logging.getLogger("livegen.audio")

LEAD_SECONDS = 1.5  # what the feeder keeps in every ring
FEED_PERIOD = 0.02  # seconds between two passes
STREAM_LOW_SECONDS = 0.06  # a stream voice's ring holding less than this is padded with silence
PAD_SECONDS = 0.05  # silence written per pad


def in_ring(v: RtVoice) -> int:
    """Frames written into ``v``'s ring and not yet played."""
    done = int(v.action.done_frames) if v.action is not None else 0
    return v.written - done


def ring_write(v: RtVoice, data: np.ndarray) -> int:
    """Write ``data`` (n, C) float32 into ``v``'s ring (and its mirror); returns frames written."""
    if data.shape[0] == 0:
        return 0
    data = np.ascontiguousarray(data, dtype=np.float32)
    k = int(v.ring.write(data))
    if v.mirror is not None and k:
        size = v.mirror.shape[0]
        v.mirror[np.arange(v.written, v.written + k) % size] = data[:k]
    v.written += k
    return k


def feed_clip(v: RtVoice, lead: int) -> int:
    """Top up a clip voice's ring to ``lead`` frames ahead; returns the frames written."""
    want = lead - in_ring(v)
    limit = v.ring.write_available
    total = v.total
    if total is not None:
        limit = min(limit, total - v.written)
    if v.cut_at is not None:
        limit = min(limit, v.cut_at - v.start - v.written)
    n = min(want, limit)
    if n <= 0:
        return 0
    return ring_write(v, v.render(v.written, n))


def feed_stream(sv: RtStreamVoice, v: RtVoice, lead: int, up: np.ndarray, down: np.ndarray, low: int,
                pad: int, started: bool) -> int:
    """Move a stream voice's queued chunks into its ring; pad (faded) when it would run dry.

    Returns the frames of silence padded (0: none)."""
    fade = up.shape[0]
    room = min(int(v.ring.write_available), lead - in_ring(v))
    data = sv.take(room, hold=fade) if room > 0 else None
    if data is not None:
        data = np.array(data, dtype=np.float32, copy=True)
        if sv.fade_in_next:
            m = min(fade, data.shape[0])
            np.multiply(data[:m], up[:m], out=data[:m])
            sv.fade_in_next = False
        ring_write(v, data)
    if not started or sv.closed and sv.queued_frames == 0:
        return 0
    if sv.closed or in_ring(v) >= low:
        return 0
    tail = sv.take_tail()
    if tail is not None:  # the held-back frames, faded out, before the silence
        tail = np.array(tail, dtype=np.float32, copy=True)
        m = tail.shape[0]
        np.multiply(tail, down[fade - m:], out=tail)
        ring_write(v, tail)
    k = ring_write(v, np.zeros((min(pad, int(v.ring.write_available)), v.buf.shape[1]), np.float32))
    sv.padded += k
    sv.misses += 1
    sv.fade_in_next = True
    return k


class Feeder:
    """Calls ``pump`` every ``period`` seconds on its own thread until stopped."""

    def __init__(self, pump: Callable[[], None], period: float = FEED_PERIOD) -> None:
        self._pump = pump
        self._period = period
        self._stop = threading.Event()
        self.passes = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="livegen-feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._pump()
            except Exception:  # the feeder must keep feeding: log and go on
                self.errors += 1
                if self.errors < 10:
                    log.exception("the audio feeder failed")
            self.passes += 1

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
