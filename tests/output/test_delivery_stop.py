"""A stop reaches every clip of the slot on its way to the player (issue 11): one still being
resampled in the play pool, one whose scheduling is under way when the stop comes, one queued in
the player for a later launch. The delivery's state changes on the event loop only.

The player here is the reference Player (not started: its clock stands still, so a launch on the
bar is in the future), wrapped to hold the play pool at chosen points.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from livegen.output import delivery as dl
from livegen.output.player import Player
from livegen.replies import Replies
from livegen.request import Clip, Request
from livegen.settings import AudioSettings, TempoSettings


class HeldPlayer(Player):
    """The reference player, whose ``schedule`` can be held until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__(AudioSettings(), TempoSettings(bpm=120.0))
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def schedule(self, *args, **kwargs) -> int:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.hold.wait(10)
        return super().schedule(*args, **kwargs)


def _clip(slot: int, rate: int = 44100, launch: str = "bar", job: int = 1) -> Clip:
    request = Request(prompt="p", slot=slot, launch=launch, outputs=("play",), seconds=0.5)
    audio = np.full((2, int(0.5 * rate)), 0.25, dtype=np.float32)
    return Clip(request=request, audio=audio, sample_rate=rate, seed=1, model="m", job_id=job)


def _delivery(player: Player) -> dl.Delivery:
    d = dl.Delivery(Replies(None), player=player)
    d.stream = False  # the buffered path (what a cached pad, a re-trigger or audio.stream false take)
    return d


def test_stop_while_the_clip_is_being_resampled_drops_it():
    async def run() -> tuple[Player, dl.Delivery]:
        player = HeldPlayer()
        d = _delivery(player)
        resampling = threading.Event()
        release = threading.Event()
        original = d._stream_audio

        def slow_prepare(clip: Clip) -> np.ndarray:
            resampling.set()
            assert release.wait(10)
            return original(clip)

        d._stream_audio = slow_prepare  # type: ignore[method-assign]
        d.deliver(_clip(3, rate=32000))  # 32 kHz: resampled for the 44.1 kHz stream
        assert await asyncio.get_running_loop().run_in_executor(None, resampling.wait, 10)
        d.stop(3)
        release.set()
        await d.drain(5)
        return player, d

    player, d = asyncio.run(run())
    assert not player.entered.is_set()  # never reached the player
    assert player.slot_end_frame(3) is None and d.clips_played == 0
    assert d.slot_clips[3][0].shape[1] == int(0.5 * 44100)  # kept for a later trigger, at the stream rate


def test_stop_during_scheduling_stops_the_clip_just_scheduled():
    async def run() -> tuple[HeldPlayer, dl.Delivery]:
        player = HeldPlayer()
        player.hold.clear()
        d = _delivery(player)
        d.deliver(_clip(4))
        assert await asyncio.get_running_loop().run_in_executor(None, player.entered.wait, 10)
        d.stop(4)  # the pool has passed the epoch check and is inside player.schedule
        player.hold.set()
        await d.drain(5)
        return player, d

    player, d = asyncio.run(run())
    assert player.threads == {"livegen-play_0"}  # scheduled on the play pool, not the loop
    assert player.slot_end_frame(4) is None and d.clips_played == 0


def test_stop_cancels_a_clip_queued_for_a_later_bar():
    async def run() -> tuple[HeldPlayer, dl.Delivery]:
        player = HeldPlayer()
        d = _delivery(player)
        d.deliver(_clip(5))
        await d.drain(5)
        assert player.slot_end_frame(5) is not None and d.clips_played == 1  # queued for the next bar
        d.stop(5)
        return player, d

    player, d = asyncio.run(run())
    assert player.slot_end_frame(5) is None
