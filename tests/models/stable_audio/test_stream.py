"""StableAudioPipeline.generate_stream: the streamed pieces concatenate to ``generate``'s output.

The tiny model is built with MLX alone (random weights written as a converted livegen directory
with a tiny T5 and tokenizer), so these tests need no PyTorch reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from livegen.errors import Cancelled

TOL = 1e-4  # max abs error / max abs value


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from livegen.models.stable_audio import StableAudioPipeline
    from tests.models.stable_audio.random_converted import write_random_converted

    out = tmp_path_factory.mktemp("tiny-sa") / "converted"
    write_random_converted(out)
    return StableAudioPipeline.from_converted(out)


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize("seconds, chunk", [(0.02, 32), (0.0125, 7), (0.005, 100)])
def test_stream_concatenates_to_generate(pipe, seconds, chunk):
    kwargs = {"seconds": seconds, "steps": 2, "seed": 5}
    full = pipe.generate("deep bass loop", **kwargs)
    pieces = list(pipe.generate_stream("deep bass loop", chunk_latents=chunk, **kwargs))
    frames = int(round(seconds * pipe.sample_rate))
    assert full.shape == (pipe.audio_channels, frames)
    piece = chunk * pipe.ratio
    assert all(p.dtype == np.float32 and p.shape[0] == pipe.audio_channels for p in pieces)
    assert [p.shape[1] for p in pieces[:-1]] == [piece] * (len(pieces) - 1)
    assert 0 < pieces[-1].shape[1] <= piece
    assert len(pieces) == -(-frames // piece)
    streamed = np.concatenate(pieces, axis=1)
    assert rel(streamed, full) < TOL
    assert np.abs(full).max() > 0


def test_stream_same_seed_handling(pipe):
    """No seed: a fresh one is drawn and stored in last_seed, and reusing it reproduces the clip."""
    pieces = list(pipe.generate_stream("warm pad", seconds=0.01, steps=1))
    seed = pipe.last_seed
    assert seed is not None
    again = pipe.generate("warm pad", seconds=0.01, steps=1, seed=seed)
    assert rel(np.concatenate(pieces, axis=1), again) < TOL


def test_stream_is_lazy_and_reports_progress(pipe):
    steps: list[tuple[int, int]] = []
    gen = pipe.generate_stream("kick", seconds=0.01, steps=3, seed=1, progress=lambda i, n: steps.append((i, n)))
    assert steps == []  # nothing runs before the first piece is asked for
    first = next(gen)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    rest = list(gen)
    assert sum(p.shape[1] for p in [first, *rest]) == int(round(0.01 * pipe.sample_rate))


def test_stream_cancel_between_pieces(pipe):
    got = []

    def cancel() -> bool:  # lets the sampling steps run, then cancels once the first piece is out
        return len(got) >= 1

    gen = pipe.generate_stream("hat", seconds=0.02, steps=2, seed=1, chunk_latents=8, cancel=cancel)
    with pytest.raises(Cancelled):
        for p in gen:
            got.append(p)
    assert len(got) == 1


def test_stream_rejects_bad_chunk(pipe):
    with pytest.raises(ValueError, match="chunk_latents"):
        next(pipe.generate_stream("x", seconds=0.01, steps=1, seed=0, chunk_latents=0))
