"""Per-slot states pushed to OSC subscribers: only changes, cached variations, one-shots that end."""

from __future__ import annotations

from livegen.slot_states import SlotState, SlotStates


def test_only_changes_are_pushed_and_playing_follows_the_player():
    pushed = []
    slots = SlotStates(lambda address, *args: pushed.append((address, *args)))
    slots.set(3, SlotState.QUEUED)
    slots.set(3, SlotState.QUEUED)
    for step in (1, 2, 2):
        slots.set(3, SlotState.RENDERING, step / 2)
    slots.follow_player([3])
    slots.follow_player([3])
    slots.follow_player([])  # the one-shot ended
    slots.set(None, SlotState.QUEUED)  # a request without a slot: nothing to light
    assert pushed == [("/livegen/slot", 3, "queued", 0.0), ("/livegen/slot", 3, "rendering", 0.5),
                      ("/livegen/slot", 3, "rendering", 1.0), ("/livegen/slot", 3, "playing", 1.0),
                      ("/livegen/slot", 3, "idle", 0.0)]


def test_cached_variations_show_when_the_pad_is_not_busy():
    pushed = []
    slots = SlotStates(lambda address, *args: pushed.append(args))
    slots.cached(0, 0.5)
    slots.set(0, SlotState.QUEUED)
    slots.cached(0, 1.0)  # ready while queued: the pad shows queued
    slots.follow_player([0])
    slots.follow_player([])  # back from playing: cached, not idle
    slots.stopped(None)
    assert pushed == [(0, "cached", 0.5), (0, "queued", 0.0), (0, "playing", 1.0), (0, "cached", 1.0)]


def test_a_clip_scheduled_later_stays_playing_until_it_sounds():
    """Regression: a clip launched on the next bar (or a stream that has not begun) has no voice in
    the player yet; the pad (and its LED) blinked idle until it sounded, then playing again."""
    pushed = []
    slots = SlotStates(lambda address, *args: pushed.append(args[1]))
    slots.playing(2, start_frame=88200)  # scheduled 2 s ahead
    for frame in (0, 44100, 88200, 88200 + 4000):  # polls before it sounds, and within the grace
        slots.follow_player([], frame=frame, grace=11025)
    assert pushed == ["playing"]
    slots.follow_player([2], frame=90000, grace=11025)  # it sounds
    slots.follow_player([], frame=99300, grace=11025)  # the one-shot ended
    assert pushed == ["playing", "idle"]
    slots.playing(2, start_frame=100000)
    slots.stopped(2)  # a stop still goes idle at once
    assert pushed == ["playing", "idle", "playing", "idle"]
