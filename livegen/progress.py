"""Progress bars for the command line (stderr), drawn by tqdm, usable as ``progress(step, total)``.

The engines call ``progress(step, total)`` after each sampler step (Stable Audio) or decoder step
(MusicGen). On a terminal a tqdm bar is redrawn in place; elsewhere (a log file, a pipe) one line
in tqdm's format is written every ``every`` steps and at the last, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class StepProgress:
    """Callable ``progress(step, total)``: ``sampling:  38%|███▊      | 3/8 [00:03<00:05, 1.25s/step]``.

    The clock starts when the object is made, then when the previous bar ended (:meth:`close`,
    called by the last step; :meth:`restart` also sets a new label). A call with a step lower than
    the last one, or another total, starts a new bar.
    """

    unit = "step"

    def __init__(self, label: str = "", stream: TextIO | None = None, every: int | None = 1):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every  # None: a twentieth of the total (lines off a terminal)
        self.last_step = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: tqdm | None = None
        self._total: int | None = None
        self._initial = 0
        self.start = time.perf_counter()

    # ------------------------------------------------------------------ hooks for subclasses
    def _first_step(self, step: int) -> None:
        """Called by the first step of a bar; the clock keeps running from construction here."""

    def postfix(self, rate: float | None) -> str | None:
        """Text after the rate (``rate``: steps per second, None before it is known)."""
        return None

    # ------------------------------------------------------------------ drawing
    def restart(self, label: str | None = None) -> None:
        if label is not None:
            self.label = label
        self.close()
        self.last_step = 0

    def _rate(self, step: int) -> float | None:
        elapsed = time.perf_counter() - self.start
        done = step - self._initial
        return done / elapsed if done > 0 and elapsed > 0 else None

    def line(self, step: int, total: int) -> str:
        """The bar as one line of text (what is written off a terminal)."""
        rate = self._rate(step)
        return tqdm.format_meter(step, total, time.perf_counter() - self.start, prefix=self.label,
                                 unit=self.unit, initial=self._initial, rate=rate,
                                 postfix=self.postfix(rate))

    def __call__(self, step: int, total: int) -> None:
        if self._total is not None and (total != self._total or step < self.last_step):
            self.close()  # a new run: a new bar
        if self._total is None:
            self._total = total
            self._first_step(step)
        self.last_step = step
        if self._tty:
            self._draw(step, total)
        else:
            every = self.every or max(1, total // 20)
            if step % every == 0 or step >= total:
                self.stream.write(self.line(step, total) + "\n")
                self.stream.flush()
        if step >= total:
            self.close()

    def _draw(self, step: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, initial=self._initial, desc=self.label or None, unit=self.unit,
                             file=self.stream, dynamic_ncols=True, smoothing=0, leave=True)
            # the bar's clock started at self.start (tqdm's own starts now, on its own time source)
            self._bar.start_t -= time.perf_counter() - self.start
        postfix = self.postfix(self._rate(step))
        if postfix is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        """End the bar; the clock of the next one starts now."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._total = None
        self._initial = 0
        self.start = time.perf_counter()


class TokenProgress(StepProgress):
    """``progress(step, total)`` for MusicGen: ``generating:  48%|████▊     | 120/250 [00:02<00:03,
    41.3token/s, x0.83 real time]``. One step is one decoder step (one token per codebook,
    ``1 / frame_rate`` s of audio). The clock starts at the first step (the text encoding before
    it is not decoding); off a terminal a line is written every twentieth of the total.
    """

    unit = "token"

    def __init__(self, frame_rate: int, stream: TextIO | None = None, label: str = "generating"):
        super().__init__(label, stream, every=None)
        self.frame_rate = frame_rate

    def _first_step(self, step: int) -> None:
        self.start = time.perf_counter()
        self._initial = step

    def postfix(self, rate: float | None) -> str | None:
        return f"x{rate / self.frame_rate:.2f} real time" if rate is not None else None
