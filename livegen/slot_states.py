"""Per-slot state pushed to OSC subscribers: ``/livegen/slot i:slot s:state f:progress``.

So TouchOSC, Max or Pd can light their own pads. States (:class:`SlotState`):

- ``idle`` (progress 0): nothing queued, rendering or playing;
- ``queued`` (0): a request for the slot waits in the generation queue;
- ``rendering`` (step / total): the slot's clip is being rendered;
- ``cached`` (ready variations / wanted variations): pre-rendered variations of the pad are ready;
- ``playing`` (1): the slot's clip is scheduled or sounding.

Only changes are pushed (a new state, or new progress), also to :attr:`SlotStates.listeners`
(the controller's LEDs, :mod:`livegen.feedback`). ``playing`` is read from the player's
voices (:meth:`SlotStates.follow_player`, called periodically on the event loop), so a one-shot clip
that ends goes back to ``idle`` (or ``cached`` when variations are ready) by itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

SLOT = "/livegen/slot"


class SlotState(str, enum.Enum):
    IDLE = "idle"
    QUEUED = "queued"
    RENDERING = "rendering"
    CACHED = "cached"
    PLAYING = "playing"


class SlotStates:
    def __init__(self, push: Callable[..., None]) -> None:
        self._push = push  # push(address, *args): to subscribers and the status port
        self.states: dict[int, tuple[SlotState, float]] = {}
        self._cached: dict[int, float] = {}  # slot -> fraction of variations ready
        self.listeners: list[Callable[[int, SlotState, float], None]] = []  # each change (livegen.feedback)
        self._starts: dict[int, int] = {}  # slot -> the frame its scheduled clip starts on

    def set(self, slot: int | None, state: SlotState, progress: float = 0.0) -> None:
        if slot is None:
            return
        if state is SlotState.IDLE and self._cached.get(slot, 0.0) > 0:
            state, progress = SlotState.CACHED, self._cached[slot]
        now = (state, round(float(progress), 4))
        if self.states.get(slot, (SlotState.IDLE, 0.0)) == now:
            return
        self.states[slot] = now
        self._push(SLOT, int(slot), state.value, now[1])
        for listener in self.listeners:
            listener(int(slot), state, now[1])

    def get(self, slot: int) -> tuple[SlotState, float]:
        return self.states.get(slot, (SlotState.IDLE, 0.0))

    def cached(self, slot: int, fraction: float) -> None:
        """Pre-rendered variations of ``slot`` are ready (``fraction`` of those wanted)."""
        self._cached[slot] = fraction
        state, _ = self.get(slot)
        if state in (SlotState.IDLE, SlotState.CACHED):
            self.set(slot, SlotState.CACHED if fraction > 0 else SlotState.IDLE, fraction)

    def stopped(self, slot: int | None) -> None:
        for s in list(self.states) if slot is None else [slot]:
            self.set(s, SlotState.IDLE)

    def playing(self, slot: int, start_frame: int) -> None:
        """``slot``'s clip is scheduled to start on ``start_frame`` (it may not sound yet)."""
        self._starts[slot] = int(start_frame)
        self.set(slot, SlotState.PLAYING, 1.0)

    def follow_player(self, playing: Iterable[int], frame: int | None = None, grace: int = 0) -> None:
        """Slots with a voice now are playing; slots that were playing and have none are idle,
        except one whose clip is scheduled to start later than ``frame - grace`` (launched on the
        next bar, or a stream that has not begun: it would blink idle until it sounds)."""
        now = set(playing)
        for slot in now:
            self.set(slot, SlotState.PLAYING, 1.0)
        for slot, (state, _) in list(self.states.items()):
            if state is not SlotState.PLAYING or slot in now:
                continue
            if frame is not None and self._starts.get(slot, frame) > frame - grace:
                continue
            self.set(slot, SlotState.IDLE)
