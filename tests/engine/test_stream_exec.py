"""Streaming execution (livegen.engine.stream_exec): what the sink gets is the DONE clip, sample for
sample, with both real engines (tiny random checkpoints) and through the worker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from livegen.engine.stream_exec import StreamLevels, StreamShaper, render_stream
from livegen.engine.worker import CANCELLED, DONE, Worker, WorkerOptions
from livegen.errors import Cancelled
from livegen.output.loudness import true_peak
from livegen.output.stream_sink import CollectingSink
from livegen.request import Request
from livegen.settings import LevelsSettings
from livegen.tempo import _ramp, fit_to_length


@pytest.fixture(scope="module")
def sa(tmp_path_factory):
    from livegen.models.stable_audio import StableAudioPipeline
    from tests.models.stable_audio.random_converted import write_random_converted

    out = tmp_path_factory.mktemp("tiny-sa") / "converted"
    write_random_converted(Path(out))
    return StableAudioPipeline.from_converted(out)


@pytest.fixture(scope="module")
def mg(tmp_path_factory, transformers_ref):
    from livegen.models.musicgen import MusicGenPipeline
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    root = tmp_path_factory.mktemp("tiny-mg")
    make_tiny_musicgen(root / "mono", variant="mono", seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        return MusicGenPipeline.from_pretrained(str(root / "mono"))


class ChunkedSink(CollectingSink):
    """Asks the engine for small tiles / bursts so a tiny clip arrives in many pieces."""

    def __init__(self, **chunk_options) -> None:
        super().__init__()
        self.chunk_options = chunk_options
        self.thread: set[str] = set()

    def write(self, chunk: np.ndarray) -> None:
        self.thread.add(threading.current_thread().name)
        super().write(chunk)


def test_sa_chunks_concatenate_to_the_clip_one_shot_with_levels(sa):
    sink = ChunkedSink(chunk_latents=2)
    target = 700
    audio, levels = render_stream(sa, "bass", {"seconds": 0.02, "steps": 2, "seed": 3}, sink, target, 40,
                                  loop=False, levels_settings=LevelsSettings())
    assert sink.sample_rate == sa.sample_rate and sink.total_frames == target and sink.ok is True
    assert audio.shape == (sa.audio_channels, target)  # (0.02 s: shorter than the limiter's delay)
    np.testing.assert_array_equal(sink.audio, audio)
    assert levels is not None and levels.method.startswith("stream-")
    # the ceiling holds (-1 dBTP, aimed 0.1 dB below; 4x oversampled, measured on the whole clip)
    assert 20 * np.log10(true_peak(audio, sa.sample_rate)) <= -1.0 + 0.05


def test_sa_stream_without_levels_equals_fit_to_length_of_generate(sa):
    """Levels off: the stream is generate + fit_to_length (one-shot fades), within the decoder's rounding."""
    sink = ChunkedSink(chunk_latents=3)
    kwargs = {"seconds": 0.02, "steps": 2, "seed": 9}
    audio, levels = render_stream(sa, "pad", kwargs, sink, 600, 40, loop=False)
    assert levels is None
    assert len(sink.chunks) > 3
    ref = fit_to_length(sa.generate("pad", **kwargs), 600, 40)
    np.testing.assert_array_equal(sink.audio, audio)
    assert np.abs(audio - ref).max() <= 1e-4 * max(1e-6, np.abs(ref).max())


def test_mg_chunks_concatenate_to_the_clip_loop(mg):
    sink = ChunkedSink(chunk_seconds=0.04)
    sr = mg.sample_rate
    target = int(0.2 * sr)
    fade = 160
    audio, levels = render_stream(mg, "drums", {"seconds": (target + 2 * fade) / sr, "seed": 1, "top_k": 8},
                                  sink, target, fade, loop=True, levels_settings=LevelsSettings())
    assert len(sink.chunks) >= 3 and sink.ok is True
    np.testing.assert_array_equal(sink.audio, audio)
    assert audio.shape == (mg.audio_channels, target)


def test_cancel_between_chunks_ends_the_sink_not_ok(sa):
    sink = ChunkedSink(chunk_latents=1)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return len(sink.chunks) >= 2

    with pytest.raises(Cancelled):
        render_stream(sa, "x", {"seconds": 0.02, "steps": 1, "seed": 1}, sink, 800, 40, False, None, None, cancel)
    assert sink.ok is False and 2 <= len(sink.chunks) < 10


def test_shaper_rotated_loop_is_the_rotated_fit_to_length():
    rng = np.random.default_rng(0)
    render = rng.standard_normal((2, 1300)).astype(np.float32)
    target, fade = 1000, 50
    sh = StreamShaper(2, target, fade, loop=True, rotate=True)
    out = [sh.push(render[:, i:i + 97]) for i in range(0, 1300, 97)] + [sh.finish()]
    clip = np.concatenate(out, axis=1)
    assert clip.shape == (2, target)
    ref = fit_to_length(render, target, fade, loop=True)  # crossfade at the head
    np.testing.assert_allclose(clip, np.roll(ref, -fade, axis=1), atol=1e-6)
    # the wrap is the render's own continuation: last frame then first frame
    up = _ramp(fade)
    assert np.allclose(clip[:, -1], render[:, fade - 1] * up[-1] + render[:, target + fade - 1] * up[0], atol=1e-6)


@pytest.mark.parametrize("n", [1000, 1200, 600])
def test_shaper_one_shot_matches_fit_to_length(n):
    rng = np.random.default_rng(1)
    render = rng.standard_normal((1, n)).astype(np.float32)
    sh = StreamShaper(1, 1000, 40, loop=False, rotate=False)
    clip = np.concatenate([sh.push(render[:, i:i + 64]) for i in range(0, n, 64)] + [sh.finish()], axis=1)
    np.testing.assert_allclose(clip, fit_to_length(render, 1000, 40), atol=1e-6)


def test_stream_levels_gain_from_the_first_chunk_and_ceiling():
    sr = 44100
    t = np.arange(sr) / sr
    quiet = 0.05 * np.sin(2 * np.pi * 220 * t)
    loud = 0.9 * np.sin(2 * np.pi * 220 * t)  # gained by the first chunk's gain: far over the ceiling
    x = np.stack([np.concatenate([quiet, loud])] * 2).astype(np.float32)
    lv = StreamLevels(sr, 2, LevelsSettings())
    out = np.concatenate([lv.push(x[:, i:i + 4410]) for i in range(0, x.shape[1], 4410)] + [lv.finish()], axis=1)
    assert out.shape == x.shape
    gain = 10 ** (lv.gain_db / 20)
    assert lv.gain_db > 10  # the quiet first chunk decided it
    np.testing.assert_allclose(out[:, 2000:20000], x[:, 2000:20000] * gain, rtol=1e-5)  # unlimited there
    assert 20 * np.log10(true_peak(out, sr)) <= -1.0 + 0.05
    assert lv.deepest < 10 ** (-6 / 20)  # deeper than max_limit_db (6 dB), where it had to


def test_worker_streams_job_with_a_sink_and_done_clip_is_identical(sa):
    loop = asyncio.new_event_loop()
    events = []
    try:
        worker = Worker({"sa": lambda: sa}, WorkerOptions(levels=LevelsSettings(), render_nice=0),
                        events.append, loop)
        worker.start()
        sink = ChunkedSink(chunk_latents=2)
        req = Request(prompt="k", seconds=0.015, steps=1, seed=4, slot=1, loop=False)
        job, _ = worker.submit(req, sink=sink)

        async def wait() -> None:
            for _ in range(600):
                if any(e.kind in (DONE, CANCELLED) and e.job_id == job.id for e in events):
                    return
                await asyncio.sleep(0.05)

        loop.run_until_complete(wait())
        done = [e for e in events if e.kind == DONE and e.job_id == job.id]
        assert done, [e.kind for e in events]
        np.testing.assert_array_equal(done[0].clip.audio, sink.audio)
        assert sink.thread == {"livegen-generation"}
        assert done[0].clip.levels is not None and done[0].clip.levels.method.startswith("stream-")
        worker.close()
    finally:
        loop.close()
