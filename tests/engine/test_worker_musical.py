"""extend and vary on the real generation thread with tiny random-weight models (MusicGen 32 kHz,
Stable Audio 44.1 kHz): the clip the worker delivers is exactly a direct pipeline call with the
slot's clip as the audio prompt (its tail, in whole codec frames) or the init audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from livegen.engine.worker import DONE, Worker, WorkerOptions
from livegen.musical import SlotSource
from livegen.request import Request
from tests.engine.test_worker import Harness


@pytest.fixture(scope="module")
def engines(tmp_path_factory, transformers_ref):
    from livegen.models.musicgen import MusicGenPipeline
    from livegen.models.stable_audio import StableAudioPipeline
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen
    from tests.models.stable_audio.random_converted import write_random_converted

    root = tmp_path_factory.mktemp("musical")
    make_tiny_musicgen(root / "mg", "mono", seed=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVEGEN_CACHE", str(root / "cache"))
        mg = MusicGenPipeline.from_pretrained(str(root / "mg"))
    sa = StableAudioPipeline.from_converted(write_random_converted(root / "sa", sample_size=22528))
    return {"mg": mg, "sa": sa}


def _render(engines: dict, request: Request) -> np.ndarray:
    async def main() -> np.ndarray:
        loop = asyncio.get_running_loop()
        h = Harness(loop)
        worker = Worker({k: (lambda e=e: e) for k, e in engines.items()}, WorkerOptions(render_nice=0), h.notify,
                        loop)
        worker.start()
        await h.wait("ready", timeout=60)
        job, _ = worker.submit(request)
        done = await h.wait(DONE, job.id, timeout=60)
        await loop.run_in_executor(None, worker.close)
        return done.clip.audio

    return asyncio.run(asyncio.wait_for(main(), 120))


def _source(audio: np.ndarray, rate: int, model: str) -> SlotSource:
    return SlotSource(audio, rate, Request("a tune", model=model, seconds=audio.shape[1] / rate, slot=2), model, 1, 1)


def test_the_worker_extends_with_the_clip_tail_as_musicgen_audio_prompt(engines):
    mg = engines["mg"]
    clip = mg.generate("a tune", seconds=0.05, seed=1, top_k=8)  # 1600 frames: 100 codec frames of 16
    clip = clip[:, :1590]  # not whole codec frames: the prompt drops the first part of a frame
    src = _source(clip, 32000, "mg")
    got = _render(engines, Request("a tune", model="mg", seconds=0.02, seed=9, slot=2, action="extend", source=src))
    window = mg.max_seconds  # 0.062 s: the prompt is what fits before the 0.02 s continuation
    frames = int(min(0.05, window - 0.02) * 32000) // mg.hop_length * mg.hop_length
    direct = mg.generate("a tune", seconds=0.02, seed=9, audio_prompt=clip[:, -frames:])
    assert got.shape == direct.shape == (1, 640)
    # the same tokens; the decode's float sums differ by ~1e-6 (the worker sets MLX's BLAS threads)
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)
    fresh = mg.generate("a tune", seconds=0.02, seed=9)
    assert np.abs(got - fresh).max() > 1e-3  # the clip's tail changed the continuation


def test_the_worker_varies_with_the_slot_clip_as_stable_audio_init_audio(engines):
    sa = engines["sa"]
    clip = sa.generate("a tune", seconds=0.2, steps=2, seed=1)
    src = _source(clip, 44100, "sa")
    request = Request("a tune", model="sa", seconds=0.2, steps=2, seed=9, slot=2, action="vary", strength=0.4,
                      source=src)
    got = _render(engines, request)
    direct = sa.generate("a tune", seconds=0.2, steps=2, seed=9, init_audio=clip, init_strength=0.4)
    np.testing.assert_array_equal(got, direct)
    assert np.abs(got - sa.generate("a tune", seconds=0.2, steps=2, seed=9)).max() > 1e-3
