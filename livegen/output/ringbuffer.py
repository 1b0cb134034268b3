"""A single-producer / single-consumer float32 ring buffer for audio.

The producer (a normal thread) writes ``[C, N]`` chunks; the consumer (the audio callback)
copies into a preallocated ``(frames, C)`` block with :meth:`RingBuffer.read_into`, which does
no allocation, takes no lock and counts underflows. Safety comes from the single-writer rule:
only the producer advances ``_write`` and only the consumer advances ``_read``; each is a
plain Python int whose assignment is atomic under the GIL, and data is written before the
index that publishes it.
"""

from __future__ import annotations

import time

import numpy as np


class RingBuffer:
    def __init__(self, channels: int, capacity_frames: int):
        if channels < 1 or capacity_frames < 1:
            raise ValueError("a ring buffer needs at least one channel and one frame")
        self.channels = int(channels)
        self.capacity = int(capacity_frames)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._write = 0  # total frames written (producer only)
        self._read = 0  # total frames read (consumer only)
        self._closed = False  # producer says: no more data will come
        self.underflows = 0  # reads that found fewer frames than asked (before close)
        self.underflow_frames = 0

    # ------------------------------------------------------------------ shared
    def available(self) -> int:
        """Frames ready to read."""
        return self._write - self._read

    def space(self) -> int:
        """Frames that can be written now."""
        return self.capacity - (self._write - self._read)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def finished(self) -> bool:
        """Closed by the producer and fully read."""
        return self._closed and self._write == self._read

    # ------------------------------------------------------------------ producer
    def write(self, audio: np.ndarray) -> int:
        """Write as much of ``audio`` [C, N] as fits; returns the frames written."""
        if audio.ndim != 2 or audio.shape[0] != self.channels:
            raise ValueError(f"expected audio of shape [{self.channels}, N], got {audio.shape}")
        if self._closed:
            raise ValueError("the ring buffer was closed; open a new one for a new stream")
        n = min(int(audio.shape[1]), self.space())
        if n <= 0:
            return 0
        w = self._write % self.capacity
        first = min(n, self.capacity - w)
        self._buf[w:w + first] = audio[:, :first].T
        if n > first:
            self._buf[:n - first] = audio[:, first:n].T
        self._write += n  # publish after the data is in place
        return n

    def write_all(self, audio: np.ndarray, chunk_frames: int = 4096, timeout: float | None = None,
                  poll: float = 0.002) -> int:
        """Write all of ``audio`` in chunks, waiting for space; returns frames written (fewer on
        timeout). Sleeps between chunks so the callback thread gets the GIL."""
        total = int(audio.shape[1])
        done = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while done < total:
            n = self.write(audio[:, done:done + chunk_frames])
            done += n
            if n == 0:
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(poll)
            else:
                time.sleep(0)
        return done

    def close(self) -> None:
        """No more data: short reads from now on are the end of the stream, not underflows."""
        self._closed = True

    # ------------------------------------------------------------------ consumer
    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` frames into ``out`` (frames, C); zero the rest.

        Returns the frames copied. No allocation. A short read before :meth:`close` counts as
        an underflow.
        """
        want = out.shape[0]
        n = min(want, self._write - self._read)
        if n > 0:
            r = self._read % self.capacity
            first = min(n, self.capacity - r)
            np.copyto(out[:first], self._buf[r:r + first])
            if n > first:
                np.copyto(out[first:n], self._buf[:n - first])
            self._read += n
        if n < want:
            out[n:].fill(0.0)
            if not self._closed:
                self.underflows += 1
                self.underflow_frames += want - n
        return n
