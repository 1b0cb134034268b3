"""The Link clock mapping and follower (livegen/link_clock.py), in-process.

No Link peer is created here: Link multicasts on every interface, so real peers run only inside a
network namespace with just ``lo`` (tests/integration/test_daemon_link.py). The session timeline
is a linear stand-in with Link's method names; the session, the player (callback driven by hand)
and the grid arithmetic are the real ones.
"""

from __future__ import annotations

import asyncio
import sys
import types

import numpy as np
import pytest

from livegen import link_clock as lc
from livegen.mapping import Mapper
from livegen.output.player import Player
from livegen.session import Echo, Session, TempoChanged, TempoSource
from livegen.settings import AudioSettings, LinkSettings, ModelSettings, Settings, TempoSettings


class Timeline:
    """A Link session state with a constant tempo: beat 0 at ``origin_us`` (quantum-independent)."""

    def __init__(self, tempo: float, origin_us: int = 0, playing: bool = False) -> None:
        self._tempo = tempo
        self.origin_us = origin_us
        self.playing = playing

    def tempo(self) -> float:
        return self._tempo

    def beatAtTime(self, micros: int, quantum: float) -> float:  # noqa: N802
        return (micros - self.origin_us) / 1e6 * self._tempo / 60.0

    def timeAtBeat(self, beat: float, quantum: float) -> int:  # noqa: N802
        return int(round(self.origin_us + beat * 60e6 / self._tempo))


class Clocks:
    """Link's clock and time.monotonic() as two counters: monotonic = link + ``offset``; each read
    advances time by ``step`` (so a read pair has a gap)."""

    def __init__(self, link_us: int, offset: float, step: float = 1e-6) -> None:
        self.t = link_us / 1e6 + offset
        self.offset = offset
        self.step = step

    def mono(self) -> float:
        self.t += self.step
        return self.t

    def micros(self) -> int:
        self.t += self.step
        return int(round((self.t - self.offset) * 1e6))


def test_the_clock_map_uses_the_tightest_of_its_reads():
    reads = iter([10.000, 10.010, 10.020, 10.0202, 10.030, 10.031])  # gaps 10 ms, 0.2 ms, 1 ms
    links = iter([9_500_000, 9_520_000, 9_530_000])
    m = lc.ClockMap(lambda: next(links), lambda: next(reads), reads=3)
    us, mid = m.sample()
    assert us == 9_520_000 and mid == pytest.approx(10.0201)
    assert m.offset == pytest.approx(10.0201 - 9.52)
    assert m.uncertainty == pytest.approx(0.0001)
    assert m.to_monotonic(10_000_000) == pytest.approx(10.0 + m.offset)
    assert m.to_micros(m.to_monotonic(12_345_678)) == 12_345_678


def test_the_clock_map_follows_a_drifting_offset():
    c = Clocks(5_000_000, offset=0.262)  # Link's CLOCK_MONOTONIC_RAW runs 262 ms behind CLOCK_MONOTONIC
    m = lc.ClockMap(c.micros, c.mono)
    m.sample()
    assert m.offset == pytest.approx(0.262, abs=2e-6)
    c.offset += 0.0005  # NTP slewed CLOCK_MONOTONIC by 0.5 ms meanwhile
    m.sample()
    assert m.offset == pytest.approx(0.2625, abs=2e-6)


def test_the_next_bar_line_is_strictly_after_now_and_on_the_monotonic_clock():
    tl = Timeline(120.0, origin_us=1_000_000)  # 4/4 at 120: a bar every 2 s from t = 1 s
    c = Clocks(0, offset=0.25)
    m = lc.ClockMap(c.micros, c.mono)
    m.sample()
    bar = lc.next_bar_line(tl, 2_500_000, 4, m)
    assert (bar.beat, bar.micros, bar.tempo) == (4.0, 3_000_000, 120.0)
    assert bar.time == pytest.approx(3.25, abs=2e-6)
    assert lc.next_bar_line(tl, 3_000_000, 4, m).micros == 5_000_000  # on a bar line: the next one
    assert lc.next_bar_line(tl, 2_999_999, 4, m).micros == 3_000_000
    assert lc.next_bar_line(tl, 2_400_000, 3, m).micros == 2_500_000  # quantum 3: beat 3 (2.4 s is beat 2.8)
    assert lc.next_bar_line(tl, 0, 4, m).micros == 1_000_000  # before the origin: the bar at beat 0


def test_bpm_is_clamped_to_livegens_range():
    assert lc.clamp_bpm(999.0) == 400.0 and lc.clamp_bpm(10.0) == 20.0 and lc.clamp_bpm(133.3) == 133.3


def test_a_missing_extra_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "link", None)  # import link -> ImportError
    with pytest.raises(lc.LinkUnavailable, match=r"pip install 'livegen\[link\]'"):
        lc.import_link()
    assert "pip install 'livegen[link]'" in lc.link_problems()[0]
    monkeypatch.setitem(sys.modules, "link", types.ModuleType("link"))  # some other 'link' module
    assert "not LinkPython-extern" in lc.link_problems()[0]


# ---------------------------------------------------------------------------------------------
# The follower, with a stand-in peer and the real session and player
# ---------------------------------------------------------------------------------------------
class FakePeer:
    """The part of LinkClock the follower uses, on a :class:`Timeline`."""

    def __init__(self, tl: Timeline, clocks: Clocks, start_stop_sync: bool = False) -> None:
        self.tl = tl
        self.clocks = clocks
        self.clock = lc.ClockMap(clocks.micros, clocks.mono)
        self.quantum = 4.0
        self.peers = 0
        self.start_stop_sync = start_stop_sync
        self.enabled = True
        self.proposed: list[float] = []

    def snapshot(self) -> lc.LinkSnapshot:
        now, _ = self.clock.sample()
        return lc.LinkSnapshot(self.tl.tempo(), self.tl.playing, self.peers,
                               lc.next_bar_line(self.tl, now, self.quantum, self.clock))

    def propose_tempo(self, bpm: float) -> None:
        now = self.clocks.micros()  # Link keeps the beat at "now" and changes the tempo from there
        beat = self.tl.beatAtTime(now, self.quantum)
        self.tl._tempo = bpm
        self.tl.origin_us = int(round(now - beat * 60e6 / bpm))
        self.proposed.append(bpm)

    def close(self) -> None:
        self.enabled = False


class FakeDaemon:
    """What the follower calls on the daemon; TempoChanged carried out as livegen.daemon does."""

    def __init__(self, session: Session, player: Player) -> None:
        self.settings = session.settings
        self.session = session
        self.player = player
        self.pushed: list[tuple] = []
        self.echoes: list[tuple] = []
        self.stopped: list[int | None] = []
        self.replies = types.SimpleNamespace(push=lambda *a: self.pushed.append(a))
        self.delivery = types.SimpleNamespace(stop=self.stopped.append)
        self.link: lc.LinkFollower | None = None

    def perform(self, outcomes: list, origin: str) -> None:
        for o in outcomes:
            if isinstance(o, Echo):
                self.echoes.append((origin, o.param, o.values))
            elif isinstance(o, TempoChanged):
                self.player.set_bpm(o.bpm, o.beats_per_bar)
                self.link.tempo_changed(o.bpm, origin)


def rig(start_stop_sync: bool = False):
    settings = Settings(models={"default": ModelSettings(seconds=0.25)}, tempo=TempoSettings(source="link"),
                        link=LinkSettings(start_stop_sync=start_stop_sync))
    session = Session(settings, Mapper.from_yaml("params:\n  prompt: base\n", "test.yaml"), {})
    player = Player(AudioSettings(blocksize=256), settings.tempo)
    out = np.zeros((256, 2), np.float32)
    for _ in range(40):
        player.callback(out, 256, None, None)
    clocks = Clocks(50_000_000, offset=0.262)
    player._offset = clocks.t - player.frame / 44100  # the stream clock: its current frame is rendered now
    player._latency = 0.0116  # heard 512 frames after it is rendered
    peer = FakePeer(Timeline(120.0, origin_us=49_300_000), clocks, start_stop_sync)
    daemon = FakeDaemon(session, player)
    return session, player, peer, daemon


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_the_session_follows_links_tempo_and_the_grid_its_bar_lines():
    async def main():
        session, player, peer, daemon = rig()
        assert session.tempo_source is TempoSource.LINK and session.tempo_status()["source"] == "link"
        f = daemon.link = lc.LinkFollower(daemon, clock=peer)
        f.step()
        bar = f.last.bar
        assert player.launch_frame("bar") == player.frame_at(bar.time)  # the next launch is on Link's bar
        assert player.frame_at(bar.time) == round((bar.time - 0.0116 - player._offset) * 44100)
        peer.tl._tempo = 133.0 - 5.3e-5  # the other peer set 133 (it reads back a hair under)
        peer.tl.origin_us += 123_456
        f.step()
        assert session.bpm == pytest.approx(132.999947, abs=1e-6)
        assert daemon.echoes[-1][:2] == ("link", "bpm")
        assert player.bpm == 133.0 - 5.3e-5  # the grid runs at Link's exact tempo
        assert player.launch_frame("bar") == player.frame_at(f.last.bar.time)
        launched = player.launch_frame("beat")
        beat_frames = 60 * 44100 / player.bpm
        phase = (player.frame_at(f.last.bar.time) - launched) / beat_frames % 1
        assert min(phase, 1 - phase) * beat_frames <= 1  # the beats are on the grid too (within a frame)
        n, anchors = len(daemon.echoes), f.reanchors
        f.step()  # no change, within ANCHOR_SECONDS: nothing echoed, nothing re-anchored
        assert len(daemon.echoes) == n and f.stats()["tempo_changes"] == 1 and f.reanchors == anchors
        f._anchored_at -= lc.ANCHOR_SECONDS  # later: re-anchored (the clocks drift apart slowly)
        f.step()
        assert f.reanchors == anchors + 1 and player.launch_frame("bar") == player.frame_at(f.last.bar.time)
        assert f.stats()["peers"] == 0 and f.stats()["quantum"] == 4

    run(main)


def test_a_tempo_set_in_livegen_is_proposed_to_the_session_once():
    async def main():
        session, player, peer, daemon = rig()
        f = daemon.link = lc.LinkFollower(daemon, clock=peer)
        f.step()
        daemon.perform(session.set_param("bpm", 140.0, "osc:127.0.0.1:5000"), "osc:127.0.0.1:5000")
        assert peer.proposed == [140.0]
        assert peer.tl.tempo() == 140.0 and session.bpm == 140.0
        assert player.launch_frame("bar") == player.frame_at(f.last.bar.time)  # back on Link's bar lines
        f.step()
        daemon.perform(session.set_param("beats_per_bar", 3, "osc:127.0.0.1:5000"), "osc:127.0.0.1:5000")
        assert peer.proposed == [140.0] and f.quantum == 3  # the quantum follows beats_per_bar
        assert f.last.bar.beat % 3 == 0

    run(main)


def test_peers_start_stop_and_a_tempo_out_of_range():
    async def main():
        session, player, peer, daemon = rig(start_stop_sync=True)
        f = daemon.link = lc.LinkFollower(daemon, clock=peer)
        f.step()
        peer.peers = 2
        peer.tl.playing = True
        f.step()
        assert ("/livegen/ack", 0, "Link: 2 other peers in the session (was 0).") in daemon.pushed
        assert ("/livegen/ack", 0, "Link: the session started.") in daemon.pushed
        assert daemon.stopped == []
        peer.tl.playing = False
        f.step()
        assert daemon.stopped == [None] and f.stats()["stops"] == 1  # every slot stops with the session
        peer.tl._tempo = 600.0
        f.step()
        assert session.bpm == 400.0 and player.bpm == 400.0

    run(main)


def test_start_stop_is_ignored_without_sync():
    async def main():
        session, player, peer, daemon = rig(start_stop_sync=False)
        f = daemon.link = lc.LinkFollower(daemon, clock=peer)
        peer.tl.playing = True
        f.step()
        peer.tl.playing = False
        f.step()
        assert daemon.stopped == []

    run(main)
