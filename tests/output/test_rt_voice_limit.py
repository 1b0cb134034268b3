"""``audio.voices`` on the rtmixer path: past the limit a new clip takes the place of the oldest
other slot's sounding clip, which fades out over ``audio.fade_ms`` from the new clip's start (never
a click); clips that have ended do not count."""

from __future__ import annotations

import numpy as np

from livegen.output.rt_player import RtPlayer
from livegen.output.rt_voices import OfflineMixer
from livegen.settings import AudioSettings, TempoSettings

SR = 44100
BLOCK = 256


def _player(voices: int) -> tuple[RtPlayer, OfflineMixer]:
    st = AudioSettings(blocksize=BLOCK, voices=voices, fade_ms=2.0, channels=1)
    m = OfflineMixer(1, SR, BLOCK)
    rt = RtPlayer(st, TempoSettings(bpm=120, beats_per_bar=4), mixer=m)
    rt.start()
    return rt, m


def _render(rt: RtPlayer, m: OfflineMixer, blocks: int) -> np.ndarray:
    out = []
    for _ in range(blocks):
        rt.pump()
        out.append(m.render(BLOCK))
    return np.concatenate(out)[:, 0]


def _dc(level: float, frames: int = 4000) -> np.ndarray:
    return np.full((1, frames), level, np.float32)


def test_the_oldest_clip_fades_out_for_a_new_one_past_the_limit():
    rt, m = _player(voices=2)
    _render(rt, m, 2)
    t1 = rt.schedule(0, _dc(0.1), loop=True, launch="now", at_frame=rt.frame + BLOCK)
    t2 = rt.schedule(1, _dc(0.2), loop=True, launch="now", at_frame=t1 + 10 * BLOCK)
    first = m.frames
    before = _render(rt, m, 20)
    t3 = rt.schedule(2, _dc(0.4), loop=True, launch="now", at_frame=rt.frame + 2 * BLOCK + 7)
    second = m.frames
    after = _render(rt, m, 20)
    fade = rt.fade
    assert np.allclose(before[t2 + fade - first:], 0.3, atol=1e-6)  # two voices: nothing stolen yet
    assert np.allclose(after[t3 + fade - second:], 0.6, atol=1e-6)  # slots 1 and 2: slot 0 faded out
    rest = after[t3 - second:t3 + fade - second + 1] - 0.4  # without the new clip: slot 0 fading, slot 1
    assert rest[0] > 0.29 and abs(rest[-1] - 0.2) < 1e-6
    assert (np.diff(rest) <= 1e-6).all() and np.abs(np.diff(rest)).max() < 3 * 0.1 / fade  # a fade, not a jump
    st = rt.stats()
    assert st["voices_stolen"] == 1 and st["slots_playing"] == [1, 2]


def test_clips_that_ended_do_not_count():
    rt, m = _player(voices=2)
    _render(rt, m, 2)
    rt.schedule(0, _dc(0.1, 300), launch="now", at_frame=rt.frame + BLOCK)  # a short one-shot, over soon
    _render(rt, m, 6)
    rt.schedule(1, _dc(0.2), loop=True, launch="now", at_frame=rt.frame + BLOCK)
    rt.schedule(2, _dc(0.4), loop=True, launch="now", at_frame=rt.frame + 2 * BLOCK)
    out = _render(rt, m, 20)
    assert np.allclose(out[-BLOCK:], 0.6, atol=1e-6)
    assert rt.stats()["voices_stolen"] == 0


def test_a_finished_stream_voice_left_in_its_slot_is_not_counted():
    """Regression (CI request storm, 2026-12-02): a stream voice whose action had ended stayed its
    slot's voice; the next clip past the limit looked it up among the live voices and raised
    ``ValueError: <RtVoice> is not in list`` (the stream's start failed, the clip went unheard)."""
    rt, m = _player(voices=2)
    _render(rt, m, 2)
    sv = rt.open_stream(0, gain=1.0)
    sv.write(np.full((1, 2 * BLOCK), 0.1, np.float32))
    sv.close()
    sv.start("now", at_frame=rt.frame + BLOCK)
    _render(rt, m, 200)  # the stream plays, its silence runs out, its action ends
    assert all(v.stream is None for v in rt._voices) and rt._slots.get(0) is not None
    rt.schedule(1, _dc(0.2), loop=True, launch="now", at_frame=rt.frame + BLOCK)
    rt.schedule(2, _dc(0.4), loop=True, launch="now", at_frame=rt.frame + 2 * BLOCK)
    out = _render(rt, m, 20)
    assert np.allclose(out[-BLOCK:], 0.6, atol=1e-6)
    assert rt.stats()["voices_stolen"] == 0
