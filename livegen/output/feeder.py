"""The feeder of the rtmixer player: keeps every voice's ring buffer seconds ahead of the callback.

An rtmixer ring-buffer action that ever finds its ring empty ends, silently. So the feeder keeps
``LEAD_SECONDS`` of every clip voice in its ring (a loop is fed round and round; a one-shot is fed
to its end, and its action ends exactly there), far more than a GIL stall lasts (a 300 ms stall
leaves more than a second). A stream voice's ring always holds a second of silence after the data
(:func:`feed_stream`), which later chunks overwrite in place. The feeder runs on an ordinary thread (``Feeder``); tests call
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
STREAM_SILENCE_SECONDS = 1.0  # a stream voice's ring holds this much silence after its data
STREAM_MARGIN_SECONDS = 0.012  # a chunk lands at least this far ahead of the callback's read position


def in_ring(v: RtVoice) -> int:
    """Frames written into ``v``'s ring and not yet played."""
    done = int(v.action.done_frames) if v.action is not None else 0
    return v.written - done


def ring_write(v: RtVoice, data: np.ndarray) -> int:
    """Append ``data`` (n, C) float32 to ``v``'s ring; returns frames written."""
    if data.shape[0] == 0:
        return 0
    data = np.ascontiguousarray(data, dtype=np.float32)
    k = int(v.ring.write(data))
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


def advance_in_place(v: RtVoice, pos: int, data: np.ndarray | None, n: int) -> None:
    """Write ``data`` (or ``n`` frames of silence) at absolute ring position ``pos`` straight into
    the ring's memory, then move the write index past it. Positions between the read and the
    write index are rewritten in place: only ever at least ``margin`` frames ahead of what the
    callback reads (see :func:`feed_stream`)."""
    view = v.mirror
    size = view.shape[0]
    if data is not None:
        n = data.shape[0]
    i = pos % size
    first = min(n, size - i)
    if data is None:
        view[i:i + first] = 0.0
        view[:n - first] = 0.0
    else:
        view[i:i + first] = data[:first]
        view[:n - first] = data[first:]
    end = pos + n
    if end > v.written:
        v.ring.advance_write_index(end - v.written)
        v.written = end


def feed_stream(sv: RtStreamVoice, v: RtVoice, silence: int, margin: int, up: np.ndarray, near: bool) -> None:
    """Place a stream voice's queued chunks in its ring and keep ``silence`` frames beyond them.

    An rtmixer ring that is ever empty ends its action, so a stream voice's ring always holds
    silence after the data written so far; a new chunk overwrites that silence in place where it
    belongs (right after the previous chunk: seamless), when that is still at least ``margin``
    frames ahead of the callback's read position. A chunk that comes later than that starts
    ``margin`` frames ahead of the read position (the voice played silence meanwhile: a miss,
    and the chunk fades in), like the reference mixer's stream voice, which plays silence while
    its ring is empty and goes on with the next data. ``near``: the voice starts within the
    margin, or already plays."""
    read = int(v.action.done_frames) if v.action is not None else 0
    safe = read + margin if near else 0
    size = v.mirror.shape[0]
    room = read + size - 1 - max(v.data_end, safe)
    data = sv.take(room, hold=0) if room > 0 else None
    if data is not None:
        pos = v.data_end
        if pos < safe:
            if v.data_end > 0 or near:
                sv.misses += 1
                sv.padded += safe - pos
            pos = safe
            data = np.array(data, dtype=np.float32, copy=True)
            m = min(up.shape[0], data.shape[0])
            np.multiply(data[:m], up[:m], out=data[:m])
        if pos > v.written:
            advance_in_place(v, v.written, None, pos - v.written)
        advance_in_place(v, pos, data, 0)
        v.data_end = pos + data.shape[0]
    if not (sv.closed and sv.queued_frames == 0) or v.written < v.data_end:
        target = min(read + size - 1, max(read, v.data_end) + silence)
        if target > v.written:
            advance_in_place(v, v.written, None, target - v.written)


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
