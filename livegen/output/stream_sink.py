"""The streaming sink: where a job's audio goes while it is being generated.

A job may carry a :class:`ChunkSink` (``Job.sink``). The thread that produces the audio (the local
generation thread, or the Ray client's receiving thread for a remote worker) calls, in order:

- ``begin(sample_rate, total_frames)`` once, before the first chunk: the model's rate and the
  length of the clip that will be delivered (the DONE clip's length, after the cut to bars);
- ``write(chunk)`` for every chunk, ``[C, N]`` float32 at the model rate, in order; the chunks
  concatenated are exactly the DONE clip's audio (same gain, same samples);
- ``end(ok)`` once: ``ok`` is True when every frame was written, False when the job was cancelled
  or failed (the sink then stops its voice).

The calls never come from the asyncio loop and a sink must not block the producer for long (a
real-time voice buffers in Python). The full clip still arrives as the DONE event.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ChunkSink(Protocol):
    def begin(self, sample_rate: int, total_frames: int) -> None: ...

    def write(self, chunk: np.ndarray) -> None: ...

    def end(self, ok: bool) -> None: ...


class CollectingSink:
    """A sink that keeps every chunk (tests, the batch CLI): ``audio`` is their concatenation."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self.total_frames: int | None = None
        self.chunks: list[np.ndarray] = []
        self.ok: bool | None = None

    def begin(self, sample_rate: int, total_frames: int) -> None:
        self.sample_rate = int(sample_rate)
        self.total_frames = int(total_frames)

    def write(self, chunk: np.ndarray) -> None:
        self.chunks.append(np.array(chunk, dtype=np.float32, copy=True))

    def end(self, ok: bool) -> None:
        self.ok = bool(ok)

    @property
    def audio(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self.chunks, axis=1)
