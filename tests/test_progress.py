"""The command line's progress bars (livegen.progress, drawn by tqdm)."""

from __future__ import annotations

import io
import re
import time

from livegen.progress import StepProgress, TokenProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_per_step():
    out = io.StringIO()
    bar = StepProgress("sampling", out)
    for step in range(1, 9):
        bar(step, 8)
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 and "\r" not in out.getvalue()
    assert lines[2].startswith("sampling:") and "3/8" in lines[2]
    assert "8/8" in lines[-1] and "100%" in lines[-1]


def test_a_new_run_starts_a_new_bar_and_its_clock():
    out = io.StringIO()
    bar = StepProgress("sampling", out)
    bar(1, 2)
    bar(2, 2)
    time.sleep(0.3)  # between runs: not counted in the second run's rate
    bar.restart("again")
    bar(1, 4)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("again:") and "1/4" in last
    # the clock restarted: one step in far less than the 0.3 s since the first run ended
    assert float(re.search(r"([\d.]+)step/s", last).group(1)) > 10


def test_tokens_every_twentieth_with_the_real_time_factor():
    out = io.StringIO()
    bar = TokenProgress(frame_rate=50, stream=out)
    time.sleep(0.05)  # the text encoding before the first step is not counted
    for step in range(1, 101):
        bar(step, 100)
    lines = out.getvalue().splitlines()
    assert [re.search(r"(\d+)/100", x).group(1) for x in lines] == [str(n) for n in range(5, 101, 5)]
    assert all(x.startswith("generating:") and "token/s" in x and "real time" in x for x in lines)
    rate = float(re.search(r"([\d.]+)token/s", lines[-1]).group(1))
    factor = float(re.search(r"x([\d.]+) real time", lines[-1]).group(1))
    assert abs(factor - rate / 50) <= 0.01 + 0.01 * factor
    assert rate > 99 / 0.05  # 99 tokens in far less than the 50 ms before the first step


def test_on_a_terminal_tqdm_redraws_one_line_and_ends_it():
    out = _Terminal()
    bar = StepProgress("sampling", out)
    for step in range(1, 4):
        time.sleep(0.11)  # past tqdm's minimum redraw interval
        bar(step, 3)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\r" in text and "3/3" in text.splitlines()[-1].split("\r")[-1]
    assert re.search(r"\d+\.\d+s/step|\d+\.\d+step/s", text)
    bar.close()  # closing twice is harmless
    assert out.getvalue() == text


def test_a_cancelled_run_is_closed_by_the_caller():
    out = _Terminal()
    bar = TokenProgress(frame_rate=50, stream=out)
    bar(1, 10)
    bar(2, 10)
    assert not out.getvalue().endswith("\n")
    bar.close()
    assert out.getvalue().endswith("\n")
