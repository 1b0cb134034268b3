"""A remote job's deadline is the launch point it is meant for (livegen.engine.pooled): the first
launch point of the request's grid at or after ``engine.remote_deadline`` seconds from the trigger,
read from a running reference Player (its callback driven at the pace of a device); ``now``, no
player and a player that cannot tell fall back to the budget alone."""

from __future__ import annotations

import time

import pytest

from livegen.engine.pooled import PooledEngine
from livegen.engine.worker import WorkerOptions
from livegen.output.stream_delivery import launch_time_at_or_after
from livegen.settings import Settings
from tests.output.test_stream_delivery import SR, Device, make_player

BAR = 2.0  # seconds at 120 bpm, 4 beats


def pooled(budget: float, launch_time) -> PooledEngine:
    settings = Settings()
    settings.engine.remote_deadline = budget
    return PooledEngine(settings, {"default": lambda: None}, WorkerOptions(), lambda e: None, None, launch_time)


def on_grid(player, t: float, frames: int) -> bool:
    """The frame heard at ``t`` is within one frame of a multiple of ``frames``."""
    f = player.frame_at(t) - player.origin
    return min(f % frames, frames - f % frames) <= 1


def test_launch_time_is_the_next_launch_point_heard():
    p = make_player()
    with Device(p, seconds=1.0):
        time.sleep(0.3)  # callbacks ran: the player's clock relates frames to time
        t = time.monotonic() + 0.05
        bar = launch_time_at_or_after(p, t, "bar")
        beat = launch_time_at_or_after(p, t, "beat")
        assert t <= beat <= bar < t + BAR
        assert beat < t + BAR / 4
        assert on_grid(p, bar, 4 * SR // 2) and on_grid(p, beat, SR // 2)
        assert launch_time_at_or_after(p, t, "now") == t
        assert launch_time_at_or_after(None, t, "bar") == t


def test_the_deadline_is_the_bar_after_the_budget():
    p = make_player()
    engine = pooled(3.0, lambda launch, at: launch_time_at_or_after(p, at, launch))
    with Device(p, seconds=1.0):
        time.sleep(0.3)
        submitted = time.monotonic()
        deadline, words = engine.deadline("bar", submitted)
        assert submitted + 3.0 <= deadline < submitted + 3.0 + BAR
        assert on_grid(p, deadline, 4 * SR // 2)
        assert words.startswith("its bar ") and words.endswith(" s after the trigger")
        assert f"{deadline - submitted:.1f}" in words
        beat, _ = engine.deadline("beat", submitted)
        assert submitted + 3.0 <= beat <= deadline and beat < submitted + 3.0 + BAR / 4
        now, words = engine.deadline("now", submitted)
        assert now == submitted + 3.0 and "engine.remote_deadline" in words


@pytest.mark.parametrize("launch_time", [None, lambda launch, at: 1 / 0])
def test_without_a_grid_the_budget_alone(launch_time):
    engine = pooled(5.0, launch_time)
    deadline, words = engine.deadline("bar", 100.0)
    assert deadline == 105.0 and words == "5 s after the trigger (engine.remote_deadline)"
