"""extend and vary through the real daemon (tiny MusicGen and Stable Audio models, JACK dummy).

- extend: the continuation of a looping clip starts at the clip's loop end; the recording (a JACK
  client in this process, the daemon in its own) holds the clip's last loop and then the
  extension, sample for sample, with no gap and no overlap at the join. An extension that
  arrives after a one-shot ended starts on the launch grid and the sender is told.
- vary: the variation starts from the slot's audio: it differs from a fresh generation with the
  same prompt, seed and steps, and equals a direct pipeline call with the slot's clip as init audio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from livegen.audio_io import match_channels, resample
from tests.integration.conftest import DAEMON_CLIENTS, OscClient, Recorder, exact_clock

# frames: the join's measured precision on the quiet VM, -7..+4 (see the test); 2 periods when the
# machine lost cycles in the window (as the bar-launch test, tests/integration/test_daemon_rt_audio.py)
JOIN_TOLERANCE = 16
JOIN_TOLERANCE_STALLED = 2 * 256

def _wav(path: str | Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), int(rate)


def _stream(audio: np.ndarray, rate: int, stream_rate: int = 44100) -> np.ndarray:
    """The clip as the daemon hands it to the player (livegen.output.delivery: resample, channels)."""
    out = resample(audio, rate, stream_rate) if rate != stream_rate else audio
    return np.ascontiguousarray(match_channels(out, 2), dtype=np.float32)


def _first(rec: np.ndarray, clip: np.ndarray, length: int = 256, skip: int = 0) -> int:
    """The first frame of ``rec`` where ``clip`` starts: its frames ``skip`` to ``skip + length``
    are there, exactly."""
    j = skip + int(np.argmax(np.abs(clip[0, skip:skip + length])))
    for i in np.flatnonzero(rec[0] == clip[0, j]):
        p = int(i) - j
        if p >= 0 and np.array_equal(rec[:, p + skip:p + skip + length], clip[:, skip:skip + length]):
            return p
    raise AssertionError("the clip is not in the recording")


def _job(client: OscClient, daemon, address: str, *args) -> tuple[int, Path]:
    """Send ``address``; (job, clip path) of its done."""
    mark = client.mark()
    client.send(daemon.port, address, *args)
    ack = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: str(p[1]).startswith("queued"))
    done = client.wait("/livegen/done", mark, timeout=120, where=lambda p: p[0] == ack.params[0])
    return ack.params[0], Path(done.params[1])


@pytest.fixture()
def params(daemon, client):
    """The shared daemon's parameters these tests change, restored after."""
    client.send(daemon.port, "/livegen/stop")
    yield lambda **kv: [client.send(daemon.port, "/livegen/set", k, v) for k, v in kv.items()]
    for name, value in (("model", "default"), ("loop", 0), ("seed", -1)):
        client.send(daemon.port, "/livegen/set", name, value)
    client.send(daemon.port, "/livegen/stop")


@pytest.mark.realtime
def test_an_extension_follows_the_looping_clip_with_no_gap_or_overlap(daemon, client, params, jack_log):
    log_mark = jack_log.mark()
    recorder = Recorder(daemon.ports, seconds=30.0, name="lgrec-extend")
    time.sleep(0.3)
    recorder.recording = True
    params(model="mg", loop=1, seed=3)
    mark = client.mark()
    first_job, first = _job(client, daemon, "/test/pad/7")  # "osc pad 7", 0.05 s, slot 7, looping
    time.sleep(0.3)  # it loops meanwhile
    job, extension = _job(client, daemon, "/livegen/extend", 7, 0.1)
    time.sleep(0.8)  # the join, then the extension loops
    audio = recorder.close()
    assert not [m for m in client.since(mark) if m.address == "/livegen/error"], client.since(mark)
    a, a_rate = _wav(first)
    b, b_rate = _wav(extension)
    sidecar = json.loads(extension.with_suffix(".json").read_text())
    assert (a_rate, b_rate, sidecar["model"], sidecar["slot"]) == (32000, 32000, "mg", 7)
    assert sidecar["prompt"] == "osc pad 7" and b.shape[1] == round(0.1 * 32000)
    assert (sidecar["action"], sidecar["source_job"]) == ("extend", first_job)
    a_s, b_s = _stream(a, a_rate), _stream(b, b_rate)
    join = _first(audio, b_s)
    n = a_s.shape[1]
    xruns = jack_log.since(log_mark, DAEMON_CLIENTS, recorder.xruns)
    assert xruns.daemon_xruns == 0, f"{xruns}; JACK clients: {recorder.clients}"
    tol = JOIN_TOLERANCE_STALLED if xruns.machine else JOIN_TOLERANCE
    # the clip's last pass ends where the extension begins, nothing else in the mix: its frames are
    # there exactly, ending within the tolerance of the join. Not the exact frame the issue asks
    # for: the loop's buffer voice and the extension are placed by rtmixer from PortAudio times,
    # which JACK stamps with jack_frame_time()'s estimate (seen: 1 frame; before the hand-over
    # counted its passes from the stream voice's real start, 256-502: a real bug, fixed)
    inner = slice(min(tol, n // 4), n - min(tol, n // 4))
    offsets = [e for e in range(-tol, tol + 1)
               if np.array_equal(audio[:, join - n + e:join + e][:, inner], a_s[:, inner])]
    print(f"the last pass ends {offsets} frames from the join; {xruns}")
    assert offsets, f"the clip's last pass is not in the recording within {tol} frames of the join"
    if exact_clock(daemon, client) and not xruns.machine:  # the exact clock: the sample-exact join
        assert 0 in offsets, offsets
    np.testing.assert_array_equal(audio[:, join + tol:join + b_s.shape[1]], b_s[:, tol:])
    assert _first(audio, a_s) < join - n  # it had looped before (the join is a loop end)


@pytest.mark.realtime
def test_an_extension_after_the_clip_ended_starts_on_the_grid_and_says_so(daemon, client, params):
    recorder = Recorder(daemon.ports, seconds=30.0, name="lgrec-late")
    recorder.recording = True
    params(model="mg", loop=0, seed=4)
    mark = client.mark()
    _job(client, daemon, "/test/pad/8")  # a 0.05 s one-shot in slot 8
    time.sleep(0.4)  # it has ended
    job, extension = _job(client, daemon, "/livegen/extend", 8, 0.05)
    late = client.wait("/livegen/ack", mark, timeout=10, where=lambda p: p[0] == job and "after its clip" in p[1])
    assert "starts on the launch grid instead of seamlessly" in late.params[1]
    time.sleep(0.4)
    audio = recorder.close()
    b_s = _stream(*_wav(extension))
    # played whole, on its own; its head may be faded in by the player (audio.fade_ms: the rtmixer
    # player still counts the ended one-shot as the slot's voice for a moment and "chokes" it)
    fade = round(0.005 * 44100)
    p = _first(audio, b_s, skip=fade)
    np.testing.assert_array_equal(audio[:, p + fade:p + b_s.shape[1]], b_s[:, fade:])
    assert not audio[:, p + b_s.shape[1]:].any()


@pytest.mark.realtime
def test_extend_and_vary_refusals_reach_the_sender(daemon, client, params):
    mark = client.mark()
    client.send(daemon.port, "/livegen/extend", 1000)
    err = client.wait("/livegen/error", mark, timeout=10)
    assert err.params[-1] == "Slot 1000 has no clip to extend yet; generate one for it first."
    mark = client.mark()
    client.send(daemon.port, "/livegen/vary", 1000, 3.0)
    assert "has no clip to vary yet" in client.wait("/livegen/error", mark, timeout=10).params[-1]


@pytest.mark.realtime
def test_vary_starts_from_the_slot_audio(daemon, client, params, tiny_model, monkeypatch):
    params(model="default", loop=0, seed=11)
    mark = client.mark()
    first_job, first = _job(client, daemon, "/test/pad/9")  # Stable Audio, "osc pad 9", 0.05 s, slot 9
    _, varied = _job(client, daemon, "/livegen/vary", 9, 0.6)
    _, fresh = _job(client, daemon, "/livegen/generate", "osc pad 9", 11, 0.05)
    assert not [m for m in client.since(mark) if m.address == "/livegen/error"], client.since(mark)
    a, rate = _wav(first)
    v, _ = _wav(varied)
    f, _ = _wav(fresh)
    meta = json.loads(varied.with_suffix(".json").read_text())
    assert (meta["seed"], meta["slot"], meta["prompt"], meta["model"]) == (11, 9, "osc pad 9", "default")
    assert (meta["action"], meta["strength"], meta["source_job"]) == ("vary", pytest.approx(0.6), first_job)
    assert json.loads(fresh.with_suffix(".json").read_text())["seed"] == 11
    assert v.shape == f.shape == a.shape
    assert np.abs(v - f).max() > 1e-2  # the slot's audio changed the result

    # the same calls in this process: the pipeline with the slot's clip as init audio; the daemon's
    # clip is that render at the gain its sidecar records (and its limiting), away from the short
    # head and tail fades of a one-shot
    from livegen.models.stable_audio import StableAudioPipeline

    monkeypatch.setenv("LIVEGEN_CACHE", str(tiny_model["cache"]))
    pipe = StableAudioPipeline.from_pretrained(str(tiny_model["model"]), t5=str(tiny_model["t5"]))
    kwargs = dict(seconds=a.shape[1] / rate, steps=meta["steps"], cfg_scale=meta["cfg"], sampler=meta["sampler"],
                  seed=11, negative_prompt=meta["negative_prompt"])
    inner = slice(64, a.shape[1] - 256)

    def same_render(clip: np.ndarray, levels: dict, raw: np.ndarray) -> None:
        expected = raw * np.float32(10.0 ** (levels["gain_db"] / 20.0))
        # the streaming true-peak limiter may have pulled peaks down by limited_db (random weights:
        # 0.148 dB was seen in CI): no sample moves by more than that share of the peak
        limited = 1.0 - 10.0 ** (-float(levels["limited_db"]) / 20.0)
        peak = float(np.abs(expected).max())
        np.testing.assert_allclose(clip[:, inner], expected[:, inner], rtol=1e-3, atol=(1e-4 + limited) * peak)

    same_render(v, meta["levels"], pipe.generate("osc pad 9", init_audio=a, init_strength=0.6, **kwargs))
    same_render(f, json.loads(fresh.with_suffix(".json").read_text())["levels"], pipe.generate("osc pad 9", **kwargs))
