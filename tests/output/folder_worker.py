"""A separate process that writes into a folder with FolderWriter (used by tests/output/test_folder_*.py).

    python -m tests.output.folder_worker race FOLDER WRITER_ID COUNT METHOD
        prints "ready", waits for a line on stdin, then writes COUNT clips that all have the
        same name; clip i of writer w holds the value ``code(w, i)`` on channel 0 and its
        negation on channel 1, job id ``w * 1000 + i``. A new FolderWriter is made before every
        clip, so its clean-up runs while the other process is writing. Prints each WAV path.
    python -m tests.output.folder_worker slow FOLDER
        writes one long clip very slowly (prints "started" once the temporary file exists), to be
        killed with SIGKILL in the middle.
    python -m tests.output.folder_worker hold FOLDER NAME
        creates FOLDER/NAME, holds an flock on it like a writer does, prints "locked", and waits
        for a line on stdin.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

import numpy as np

from livegen.output.folder import FolderWriter, Publish
from livegen.request import Clip, Request


def code(writer: int, index: int) -> float:
    """A float32-exact value unique to (writer, index)."""
    return (writer * 256 + index + 1) / 65536.0


def race_clip(writer: int, index: int, frames: int = 3000) -> Clip:
    audio = np.empty((2, frames), np.float32)
    audio[0] = code(writer, index)
    audio[1] = -code(writer, index)
    return Clip(Request("same name", bars=1, bpm=120, slot=1), audio, 44100, seed=7, model="m",
                job_id=writer * 1000 + index)


class _Slow:
    def __init__(self, path: str) -> None:
        self._f = open(path, "xb")  # noqa: SIM115
        print("started", flush=True)

    def write(self, data: bytes) -> int:
        time.sleep(0.05)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def main(argv: list[str]) -> None:
    mode, folder = argv[0], argv[1]
    if mode == "race":
        writer, count, method = int(argv[2]), int(argv[3]), Publish(argv[4])
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            path = FolderWriter(folder, publish=[method]).write(race_clip(writer, i))
            print(path, flush=True)
    elif mode == "slow":
        audio = np.zeros((2, 44100 * 60), np.float32)
        clip = Clip(Request("killed", seconds=60.0, slot=0), audio, 44100, seed=1, model="m", job_id=1)
        FolderWriter(folder, opener=_Slow, chunk_frames=256).write(clip)
    elif mode == "hold":
        fd = os.open(os.path.join(folder, argv[2]), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
