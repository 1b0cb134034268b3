"""A small text progress bar for diffusion steps (stderr), usable as ``progress(step, total)``."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StepProgress:
    """Callable ``progress(step, total)`` that draws ``label [####    ] 3/8  1.25 s/step``.

    On a terminal the line is redrawn in place; otherwise one line is written per step so that
    logs stay readable. ``close()`` ends the line.
    """

    def __init__(self, label: str = "", stream: TextIO | None = None, width: int = 24):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.last_step = 0
        self._open = False
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def restart(self, label: str | None = None) -> None:
        if label is not None:
            self.label = label
        self.close()
        self.start = time.perf_counter()
        self.last_step = 0

    def line(self, step: int, total: int) -> str:
        elapsed = time.perf_counter() - self.start
        filled = int(self.width * step / total) if total else self.width
        rate = elapsed / step if step else 0.0
        head = f"{self.label} " if self.label else ""
        return f"{head}[{'#' * filled}{' ' * (self.width - filled)}] {step}/{total}  {rate:.2f} s/step"

    def __call__(self, step: int, total: int) -> None:
        self.last_step = step
        text = self.line(step, total)
        if self._tty:
            self.stream.write("\r" + text)
            self._open = step < total
            if not self._open:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
