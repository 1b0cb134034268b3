"""Ableton Link as the tempo source (``tempo.source: link``, the ``livegen[link]`` extra).

The daemon joins the Link session as one peer (LinkPython-extern, ``import link``; chosen over
aalink by measurement: ``bench/link_choice.py``, README "Dependencies") and follows it:

- **Tempo.** The session's tempo is the tempo in force: each change (Link's tempo callback wakes
  the follower, which also polls every :data:`POLL_SECONDS`) is set on the session with origin
  :data:`LINK_ORIGIN` (echoed to the subscribers, logged at most once a second while it moves).
  A tempo set in livegen (``/livegen/bpm``, a mapping, the browser) is proposed to the Link
  session at once (:meth:`LinkFollower.tempo_changed`); the session's answer then comes back as
  its tempo (133.0 reads back as 132.99995: changes under :data:`TEMPO_EPSILON` are not changes).
  Link's range is 20-999 bpm, livegen's 20-400: a faster session tempo is clamped (and said so).
- **Bar lines.** The player's bar grid is re-anchored every :data:`ANCHOR_SECONDS` (and at once
  after a tempo or meter change) to the next bar line of Link's timeline (quantum
  ``link.quantum`` or ``tempo.beats_per_bar``): the bar's time on Link's clock
  (``timeAtBeat``, exact to the microsecond) is converted to ``time.monotonic()`` (:class:`ClockMap`)
  and then to the stream frame that is *heard* at that time (``player.frame_at``, which counts the
  output latency), and ``player.anchor_bar`` puts a bar line there; the player's grid tempo is set
  to Link's exact tempo. A clip launched on ``bar`` (or ``beat``) therefore starts where the other
  peers hear their bar line.
- **Clocks.** Link's clock on Linux is ``CLOCK_MONOTONIC_RAW``, not ``time.monotonic()``
  (``CLOCK_MONOTONIC``): the two differ by whatever NTP has slewed since boot (262 ms on the
  machine this was written on) and drift apart by up to 500 ppm while NTP slews. The offset is
  therefore measured again at every conversion, from reads of both clocks taken back to back.
- **Start/stop.** With ``link.start_stop_sync`` the peer shares the session's play state: when
  the session stops, every slot stops (with the usual fade), as a host's clips stop with its
  transport; a start is logged and reported (the grid already follows the timeline). livegen does
  not start or stop the session itself.
- **Status.** ``link`` in the status JSON: ``enabled``, ``peers``, ``tempo``, ``playing``,
  ``start_stop_sync``, ``quantum``, ``next_bar`` (monotonic time), ``clock_offset`` (seconds,
  ``time.monotonic()`` minus Link's clock), ``reanchors``; peer count changes and start/stop are
  logged and pushed as ``/livegen/ack i:0 s:sentence``.

Link multicasts on every IPv4 interface: the tests run every peer inside a network namespace
that has only ``lo`` (tests/integration/test_daemon_link.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("livegen.link")

LINK_ORIGIN = "link"
POLL_SECONDS = 0.02  # the follower's cadence (a tempo change also wakes it at once)
TEMPO_EPSILON = 0.0005  # bpm: Link's float round trip (133.0 -> 132.9999468) is not a change
ANCHOR_SECONDS = 0.1  # the grid is re-anchored this often (at once after a tempo or meter change)
LOG_EVERY_SECONDS = 1.0  # a tempo sweep logs at most one line a second
BPM_RANGE = (20.0, 400.0)  # livegen's; Link's is 20-999


class LinkUnavailable(RuntimeError):
    """The Link library (the ``link`` extra) cannot be imported."""


def import_link() -> Any:
    """The LinkPython-extern module (``link``), or :class:`LinkUnavailable` with one sentence."""
    try:
        import link  # LinkPython-extern
    except ImportError as exc:
        raise LinkUnavailable(
            f"tempo.source is link but Ableton Link is not installed ({exc}): pip install 'livegen[link]' "
            "(LinkPython-extern; Link is GPLv2+, see the README)") from None
    if not hasattr(link, "Link"):
        raise LinkUnavailable("the installed 'link' module is not LinkPython-extern (no link.Link): "
                              "pip install 'livegen[link]'")
    return link


def link_problems() -> list[str]:
    """What keeps ``tempo.source: link`` from working here (checked before the models load)."""
    try:
        import_link()
    except LinkUnavailable as exc:
        return [str(exc)]
    return []


# ---------------------------------------------------------------------------------------------
# The clock mapping (pure: the clocks are passed in)
# ---------------------------------------------------------------------------------------------
class SessionTimeline(Protocol):
    """The part of a Link session state used here (``link.SessionState``)."""

    def tempo(self) -> float: ...
    def beatAtTime(self, micros: int, quantum: float) -> float: ...  # noqa: N802 - Link's names
    def timeAtBeat(self, beat: float, quantum: float) -> int: ...  # noqa: N802


@dataclass(frozen=True)
class BarLine:
    """A bar line of the Link timeline: ``beat`` (Link's beat number at the quantum) at ``micros``
    on Link's clock and ``time`` on ``time.monotonic()``; ``tempo`` in force there."""

    beat: float
    micros: int
    time: float
    tempo: float


class ClockMap:
    """``time.monotonic()`` from Link's clock. The offset between the two is measured at every
    :meth:`sample`: ``reads`` pairs of ``monotonic, link, monotonic`` reads, the tightest one
    (smallest gap between its two monotonic reads) taken, its midpoint against the Link read."""

    def __init__(self, link_micros: Callable[[], int], monotonic: Callable[[], float] = time.monotonic,
                 reads: int = 3) -> None:
        self._micros = link_micros
        self._mono = monotonic
        self.reads = max(1, int(reads))
        self.offset: float | None = None  # seconds: monotonic - link
        self.uncertainty: float = 0.0  # half the tightest read's gap (seconds)

    def sample(self) -> tuple[int, float]:
        """Read both clocks now: ``(link micros, monotonic seconds)``; updates :attr:`offset`."""
        best: tuple[float, int, float] | None = None
        for _ in range(self.reads):
            a = self._mono()
            us = int(self._micros())
            b = self._mono()
            if best is None or b - a < best[0]:
                best = (b - a, us, (a + b) / 2)
        gap, us, mid = best
        self.offset = mid - us / 1e6
        self.uncertainty = gap / 2
        return us, mid

    def to_monotonic(self, micros: int) -> float:
        if self.offset is None:
            self.sample()
        return micros / 1e6 + self.offset

    def to_micros(self, t: float) -> int:
        if self.offset is None:
            self.sample()
        return int(round((t - self.offset) * 1e6))


def next_bar_line(state: SessionTimeline, now_micros: int, quantum: float, clock: ClockMap) -> BarLine:
    """The first bar line (phase 0 at ``quantum``) strictly after ``now_micros`` on ``state``'s
    timeline, with its time on ``time.monotonic()`` (``clock``'s offset, sampled by the caller)."""
    beat = state.beatAtTime(int(now_micros), float(quantum))
    bar = (beat // quantum + 1) * quantum
    micros = int(state.timeAtBeat(bar, float(quantum)))
    if micros <= now_micros:  # float rounding just below a bar line
        bar += quantum
        micros = int(state.timeAtBeat(bar, float(quantum)))
    return BarLine(bar, micros, clock.to_monotonic(micros), float(state.tempo()))


def clamp_bpm(bpm: float) -> float:
    return min(max(float(bpm), BPM_RANGE[0]), BPM_RANGE[1])


# ---------------------------------------------------------------------------------------------
# The peer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkSnapshot:
    """One capture of the session: tempo, play state, peers and the next bar line."""

    tempo: float
    playing: bool
    peers: int
    bar: BarLine


class LinkClock:
    """This daemon's Link peer. Link's callbacks run on its own thread: they only call ``wake``
    (which must be thread-safe, e.g. ``loop.call_soon_threadsafe``)."""

    def __init__(self, bpm: float, quantum: float, start_stop_sync: bool = False,
                 wake: Callable[[], None] | None = None, module: Any = None) -> None:
        self._mod = module if module is not None else import_link()
        self.quantum = float(quantum)
        self._link = self._mod.Link(float(bpm))
        self._wake = wake or (lambda: None)
        self._link.setTempoCallback(self._callback)
        self._link.setNumPeersCallback(self._callback)
        self._link.setStartStopCallback(self._callback)
        self._link.startStopSyncEnabled = bool(start_stop_sync)
        self.clock = ClockMap(self._link.clock().micros)
        self._link.enabled = True

    def _callback(self, *_: Any) -> None:  # Link's thread
        try:
            self._wake()
        except RuntimeError:  # the loop is closed: shutting down
            pass

    @property
    def enabled(self) -> bool:
        return bool(self._link.enabled)

    @property
    def start_stop_sync(self) -> bool:
        return bool(self._link.startStopSyncEnabled)

    def snapshot(self) -> LinkSnapshot:
        now, _ = self.clock.sample()
        state = self._link.captureAppSessionState()
        return LinkSnapshot(float(state.tempo()), bool(state.isPlaying()), int(self._link.numPeers()),
                            next_bar_line(state, now, self.quantum, self.clock))

    def propose_tempo(self, bpm: float) -> None:
        """Propose ``bpm`` to the session, from now on (the other peers follow in a few ms)."""
        state = self._link.captureAppSessionState()
        state.setTempo(float(bpm), int(self._link.clock().micros()))
        self._link.commitAppSessionState(state)

    def close(self) -> None:
        """Leave the session (the other peers' count drops at once) and drop the callbacks."""
        noop = lambda *_: None  # noqa: E731
        self._wake = noop
        self._link.enabled = False
        for setter in (self._link.setTempoCallback, self._link.setNumPeersCallback, self._link.setStartStopCallback):
            setter(noop)


# ---------------------------------------------------------------------------------------------
# The daemon side
# ---------------------------------------------------------------------------------------------
class LinkFollower:
    """Keeps a daemon's session tempo and player grid on the Link session (module docstring).

    ``daemon`` needs ``session`` (tempo, beats_per_bar, set_param), ``player`` (None until the
    stream opens), ``settings``, ``perform(outcomes, origin)``, ``replies.push`` and ``delivery``.
    """

    def __init__(self, daemon: Any, clock: LinkClock | None = None) -> None:
        self.daemon = daemon
        s = daemon.settings
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.fixed_quantum = s.link.quantum
        self.clock = clock or LinkClock(daemon.session.bpm, self.quantum, s.link.start_stop_sync,
                                        wake=lambda: self._loop.call_soon_threadsafe(self._event.set))
        self.last: LinkSnapshot | None = None
        self.reanchors = 0
        self.tempo_changes = 0
        self.proposals = 0
        self.stops = 0
        self._peers: int | None = None
        self._playing: bool | None = None
        self._logged_at = 0.0
        self._clamped = False
        self._anchor_key: tuple[float, int, int] | None = None  # (bpm, beats_per_bar, quantum) last anchored
        self._anchored_at = float("-inf")
        self._task: asyncio.Task | None = None

    @property
    def quantum(self) -> int:
        return int(self.fixed_quantum or self.daemon.session.beats_per_bar)

    def start(self) -> None:
        self.step()
        self._task = asyncio.ensure_future(self._run())
        log.info("Link enabled: %d peer(s), tempo %.2f bpm, quantum %d, start/stop sync %s", self.last.peers,
                 self.last.tempo, self.quantum, "on" if self.clock.start_stop_sync else "off")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._event.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._event.clear()
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the follower must outlive one bad poll
                log.warning("following Link failed once: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.clock.close()
        log.info("Link disabled (left the session)")

    # ------------------------------------------------------------------ one poll
    def step(self) -> None:
        self.clock.quantum = float(self.quantum)  # beats_per_bar may have changed
        snap = self.clock.snapshot()
        self.last = snap
        self._follow_peers(snap.peers)
        self._follow_playing(snap.playing)
        self._follow_tempo(snap.tempo)
        self._anchor(snap)

    def _follow_peers(self, peers: int) -> None:
        if peers == self._peers:
            return
        if self._peers is not None:
            sentence = f"Link: {peers} other peer{'s' if peers != 1 else ''} in the session (was {self._peers})."
            log.info("%s", sentence)
            self.daemon.replies.push("/livegen/ack", 0, sentence)
        self._peers = peers

    def _follow_playing(self, playing: bool) -> None:
        if not self.clock.start_stop_sync or playing == self._playing:
            self._playing = playing
            return
        if self._playing is not None:
            if playing:
                sentence = "Link: the session started."
            else:
                self.stops += 1
                self.daemon.delivery.stop(None)  # every slot, like a host's clips with its transport
                sentence = "Link: the session stopped; every slot stopped."
            log.info("%s", sentence)
            self.daemon.replies.push("/livegen/ack", 0, sentence)
        self._playing = playing

    def _follow_tempo(self, tempo: float) -> None:
        session = self.daemon.session
        bpm = clamp_bpm(tempo)
        if bpm != tempo and not self._clamped:
            log.warning("the Link session's tempo %.2f bpm is outside livegen's %g-%g; %g is used", tempo,
                        *BPM_RANGE, bpm)
        self._clamped = bpm != tempo
        if abs(bpm - session.bpm) < TEMPO_EPSILON:
            return
        self.tempo_changes += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            log.info("Link tempo %.3f bpm (was %.3f)", bpm, session.bpm)
            self._logged_at = now
        self.daemon.perform(session.set_param("bpm", round(bpm, 6), LINK_ORIGIN), LINK_ORIGIN)

    def _anchor(self, snap: LinkSnapshot) -> None:
        """Put a bar line of the player's grid where Link's next one is heard, every
        :data:`ANCHOR_SECONDS` (the audio clock and Link's drift apart by parts per million) and at
        once when the tempo or the meter changed (the player then pivoted its grid on its own bar).
        ``frame_at`` may be a round trip to an audio process: hence not on every poll."""
        player = self.daemon.player
        if player is None:
            return
        bpb = self.daemon.session.beats_per_bar
        key = (clamp_bpm(snap.tempo), bpb, self.quantum)
        now = time.monotonic()
        if key == self._anchor_key and now - self._anchored_at < ANCHOR_SECONDS:
            return
        if key != self._anchor_key or player.bpm != key[0]:
            player.set_bpm(key[0], bpb)
        player.anchor_bar(player.frame_at(snap.bar.time))
        self.reanchors += 1
        self._anchor_key = key
        self._anchored_at = now

    # ------------------------------------------------------------------ from livegen
    def tempo_changed(self, bpm: float, origin: str | None) -> None:
        """The session's tempo was set (the daemon carries out a TempoChanged): propose it to the
        Link session unless it came from there, then put the grid back on Link's bar lines (the
        player pivoted it on its own last bar). A change that came from Link is already in the
        poll that set it (:meth:`step` anchors after following the tempo)."""
        if origin == LINK_ORIGIN:
            return
        if self.last is not None and abs(bpm - self.last.tempo) >= TEMPO_EPSILON:
            self.clock.propose_tempo(bpm)
            self.proposals += 1
            log.info("Link: tempo %.3f bpm proposed to the session (from %s)", bpm, origin or "livegen")
        self.step()

    def stats(self) -> dict[str, Any]:
        snap = self.last
        return {
            "enabled": self.clock.enabled,
            "peers": snap.peers if snap else 0,
            "tempo": snap.tempo if snap else None,
            "playing": snap.playing if snap else False,
            "start_stop_sync": self.clock.start_stop_sync,
            "quantum": self.quantum,
            "next_bar": snap.bar.time if snap else None,
            "clock_offset": self.clock.clock.offset,
            "reanchors": self.reanchors,
            "tempo_changes": self.tempo_changes,
            "proposals": self.proposals,
            "stops": self.stops,
        }


def start_link(daemon: Any) -> LinkFollower | None:
    """The follower of a daemon whose ``tempo.source`` is link (None otherwise); raises
    :class:`LinkUnavailable` when the extra is missing. Call it on the daemon's loop."""
    if getattr(daemon.settings.tempo, "source", "internal") != "link":
        return None
    follower = LinkFollower(daemon)
    follower.start()
    return follower
