"""A JACK recorder for the integration tests that runs its client in a process of its own.

A recorder whose process callback is Python in the test process needs the test process's GIL every
JACK period, and that process is big (torch, MLX, Ray, every earlier test's objects): a collection
or a busy thread there made the recorder the late client of a cycle, an xrun the tests then blamed
on the daemon (CI: 1-5 per 10 s window). libjack also keeps process-wide state for one server, so
a client in the test process on a second server (the restart tests) mixed up the two servers'
ports. The child (jack_recorder_child.py) records into a file both processes map; this class reads
it live. Monotonic times are comparable across the two processes (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.integration.jack_recorder_child import (
    CYCLES,
    FIRST,
    HEADER,
    MAX_DELAYS,
    NDELAYS,
    POS,
    RATE,
    RECORDING,
    XRUNS,
)

CHILD = Path(__file__).with_name("jack_recorder_child.py")
MAX_RATE = 48000


class Recorder:
    """Records ``ports`` for up to ``seconds`` while :attr:`recording` is set (from the start when
    ``recording=True``), counting xruns only while recording; :meth:`close` returns the audio."""

    def __init__(self, ports: list[str], seconds: float, name: str = "lgrec", recording: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.capacity = int(seconds * MAX_RATE)
        self.max_cycles = int(seconds * MAX_RATE / 32) + 16
        self.n = len(ports)
        floats = HEADER + 3 * self.max_cycles + MAX_DELAYS
        size = 8 * floats + 4 * self.n * self.capacity
        # In memory (tmpfs) where it fits: a page of a disk-backed file touched for the first time in
        # the process callback can wait on the file system (measured: the recorder itself was the
        # late client of 4 cycles in 10 s). A container's /dev/shm is often only 64 MB.
        shm = "/dev/shm"
        in_memory = os.path.isdir(shm) and shutil.disk_usage(shm).free > 2 * size
        fd, path = tempfile.mkstemp(prefix="lgrec-", suffix=".mm", dir=shm if in_memory else None)
        os.close(fd)
        self.path = Path(path)
        with open(self.path, "r+b") as f:
            f.truncate(size)
        self._mm = np.memmap(self.path, dtype=np.float64, mode="r+", shape=(floats,))
        self._header = self._mm[:HEADER]
        self._stamps = self._mm[HEADER:HEADER + 3 * self.max_cycles].reshape(self.max_cycles, 3)
        self._delays = self._mm[HEADER + 3 * self.max_cycles:]
        self._audio = np.memmap(self.path, dtype=np.float32, mode="r+", offset=8 * floats,
                                shape=(self.n, self.capacity))
        self._header[RECORDING] = 1.0 if recording else 0.0
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(self.path), str(self.capacity),
                                      str(self.max_cycles), name, *ports],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.proc.wait(10)
            self.path.unlink(missing_ok=True)
            raise AssertionError(f"the JACK recorder did not start ({self.proc.returncode}):\n{err}")
        self.clients: list[str] = json.loads(line)["clients"]
        self.rate = int(self._header[RATE])
        self._closed: np.ndarray | None = None

    # ---------------------------------------------------------------------------------- live state
    @property
    def recording(self) -> bool:
        return bool(self._header[RECORDING])

    @recording.setter
    def recording(self, on: bool) -> None:
        self._header[RECORDING] = 1.0 if on else 0.0

    @property
    def pos(self) -> int:
        return int(self._header[POS])

    @property
    def xruns(self) -> int:
        return int(self._header[XRUNS])

    @property
    def xrun_delays_usecs(self) -> list[float]:
        return [float(d) for d in self._delays[:int(self._header[NDELAYS])]]

    @property
    def first(self) -> int | None:
        """JACK frame time of the first recorded frame."""
        f = self._header[FIRST]
        return None if f < 0 else int(f)

    @property
    def buf(self) -> np.ndarray:
        return self._audio if self._closed is None else self._closed

    @property
    def stamps(self) -> np.ndarray:
        """(first recorded frame, monotonic time, JACK frame time) of each recorded cycle."""
        return np.array(self._stamps[:int(self._header[CYCLES])])

    def onsets(self, after: int = 0) -> np.ndarray:
        loud = np.flatnonzero(np.abs(self.buf[:, :self.pos]).max(axis=0) > 0)
        return loud[loud >= after]

    def time_of(self, frame: int) -> float:
        """Monotonic time of recorded ``frame``, from the cycles around the one that recorded it. A
        callback runs late, never early, so the smallest ``time - frame / rate`` of the 16 cycles
        up to it is used (as the player's stream clock does); a cycle lost to an xrun leaves a
        lasting step in the frames, which that follows."""
        st = self.stamps
        pos, t = st[:, 0], st[:, 1]
        off = t - pos / self.rate
        i = int(np.searchsorted(pos, frame, side="right")) - 1
        return float(off[max(0, i - 15):i + 1].min() + frame / self.rate)

    def frame_of(self, t: float) -> int:
        """Recorded frame at monotonic time ``t``."""
        st = self.stamps
        off = (st[:, 1] - st[:, 0] / self.rate).min()
        return int(round((t - off) * self.rate))

    def frame_time(self) -> int:
        """The JACK frame time now, from the recorded cycles' stamps (needs one recorded cycle)."""
        deadline = time.monotonic() + 5
        while self._header[CYCLES] < 1:
            assert time.monotonic() < deadline, "the recorder recorded no cycle"
            time.sleep(0.005)
        st = self.stamps[-64:]
        off = (st[:, 1] - st[:, 2] / self.rate).min()  # monotonic time of JACK frame 0
        return int(round((time.monotonic() - off) * self.rate))

    # ------------------------------------------------------------------------------------- closing
    def close(self) -> np.ndarray:
        if self._closed is None:
            self.recording = False
            try:
                self.proc.communicate("close\n", timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self._closed = np.array(self._audio[:, :self.pos])
            del self._audio
            self.path.unlink(missing_ok=True)
        return self._closed
