"""Cancellation inside the decode (issue 11): ``cancel()`` is polled between Stable Audio VAE tiles
(and, when the decode is one shot, between the decoder's layers) and between MusicGen's EnCodec
blocks, so a stop or a shutdown that arrives during a long decode ends it after the piece of work
in hand. The pieces decoded are counted through ``decode_progress``."""

from __future__ import annotations

import numpy as np
import pytest

from livegen.errors import Cancelled

TOL = 1e-4  # max abs error / max abs value


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def sa(tmp_path_factory):
    from livegen.models.stable_audio import StableAudioPipeline
    from tests.models.stable_audio.random_converted import write_random_converted

    out = tmp_path_factory.mktemp("tiny-sa-cancel") / "converted"
    write_random_converted(out)
    return StableAudioPipeline.from_converted(out)


class CancelAfter:
    """``cancel`` that turns true once ``n`` decode pieces are done; counts what was decoded."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done: list[tuple[int, int]] = []

    def progress(self, done: int, total: int) -> None:
        self.done.append((done, total))

    def __call__(self) -> bool:
        return len(self.done) >= self.n


def test_sa_cancel_between_tiles_stops_after_the_tile_in_hand(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "8")
    seconds = 0.02  # 882 samples = 221 latents (ratio 4): 28 tiles of 8
    stop = CancelAfter(3)
    with pytest.raises(Cancelled, match="while decoding"):
        sa.generate("kick", seconds=seconds, steps=1, seed=2, cancel=stop, decode_progress=stop.progress)
    total = -(-sa.latent_length(seconds) // 8)
    assert stop.done == [(i, total) for i in (1, 2, 3)]  # not one tile more than asked
    assert total > 20


def test_sa_cancel_between_layers_of_the_one_shot_decode(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "0")  # one shot, as while audio plays from Python
    stop = CancelAfter(2)
    with pytest.raises(Cancelled):
        sa.generate("kick", seconds=0.02, steps=1, seed=2, cancel=stop, decode_progress=stop.progress)
    assert [d for d, _ in stop.done] == [1, 2]
    assert stop.done[0][1] > 5  # the decoder's blocks are opened up: more than a handful of pieces


def test_sa_cancel_before_the_decode_decodes_nothing(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "8")
    stop = CancelAfter(0)
    with pytest.raises(Cancelled):
        sa.generate("kick", seconds=0.02, steps=1, seed=2, cancel=stop, decode_progress=stop.progress)
    assert stop.done == []


def test_sa_cancellable_decodes_equal_the_plain_one(sa, monkeypatch):
    lat = sa._generate_latents("pad", 0.02, 1, None, None, 4, None, None, None, None, None)[0]
    plain = np.array(sa.model.vae.decoder(lat))
    results = {}
    for tile in ("0", "8", "5"):
        monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", tile)
        seen = CancelAfter(10**9)
        results[tile] = np.array(sa._decode_cancellable(lat, seen, seen.progress))
        assert seen.done and seen.done[-1][0] == seen.done[-1][1]  # every piece reported, the last one is the total
        assert rel(results[tile], plain) < TOL
    assert np.array_equal(results["0"], plain)  # layer by layer: the very same operations


def test_sa_generate_with_tiles_matches_without(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "0")
    one = sa.generate("hat", seconds=0.015, steps=2, seed=9, cancel=lambda: False)
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "16")
    tiled = sa.generate("hat", seconds=0.015, steps=2, seed=9, cancel=lambda: False)
    assert rel(tiled, one) < TOL


def test_bad_tile_override_is_refused(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "-3")
    with pytest.raises(ValueError, match="LIVEGEN_DECODE_TILE_LATENTS"):
        sa.decode_tile_latents()


@pytest.fixture(scope="module")
def mg(tmp_path_factory, transformers_ref):
    from livegen.models.musicgen import MusicGenPipeline
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    out = {}
    root = tmp_path_factory.mktemp("mg-cancel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        for variant in ("mono", "stereo"):
            make_tiny_musicgen(root / variant, variant=variant, seed=3)
            out[variant] = MusicGenPipeline.from_pretrained(str(root / variant))
    return out


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_musicgen_blockwise_decode_equals_one_shot(mg, variant):
    from livegen.models.musicgen.pipeline import DECODE_BLOCK_FRAMES

    pipe = mg[variant]
    rng = np.random.default_rng(0)
    codes = rng.integers(0, pipe.config.audio_encoder["codebook_size"],
                         (1, pipe.config.num_codebooks, 2 * DECODE_BLOCK_FRAMES + 7))
    seen: list[tuple[int, int]] = []
    blocks = pipe._decode_cancellable(codes, lambda: False, lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert rel(blocks, pipe.decode_codes(codes)) < TOL


def test_musicgen_cancel_between_decode_blocks(mg):
    from livegen.models.musicgen.pipeline import DECODE_BLOCK_FRAMES

    pipe = mg["mono"]
    codes = np.zeros((1, pipe.config.num_codebooks, 4 * DECODE_BLOCK_FRAMES), dtype=np.int64)
    stop = CancelAfter(2)
    with pytest.raises(Cancelled, match="while decoding"):
        pipe._decode_cancellable(codes, stop, stop.progress)
    assert stop.done == [(1, 4), (2, 4)]


def test_musicgen_generate_cancel_after_the_steps(mg):
    """A cancel that comes after the last decoding step still stops the EnCodec decode."""
    pipe = mg["mono"]
    steps: list[tuple[int, int]] = []
    stop = CancelAfter(1)
    seconds = 2.5  # 125 frames: three decode blocks
    with pytest.raises(Cancelled):
        pipe.generate("drums", seconds=seconds, top_k=4, seed=1, progress=lambda i, n: steps.append((i, n)),
                      cancel=stop, decode_progress=stop.progress)
    assert steps and steps[-1][0] == steps[-1][1]  # every step ran (the cancel came only with the decode)
    assert len(stop.done) == 1


def test_musicgen_stream_cancel_between_chunks(mg):
    pipe = mg["mono"]
    pieces = []
    state = {"cancel": False}
    gen = pipe.generate_stream("drums", seconds=2.0, chunk_seconds=0.2, top_k=4, seed=1,
                               cancel=lambda: state["cancel"])
    with pytest.raises(Cancelled):
        for piece in gen:
            pieces.append(piece)
            if len(pieces) == 2:
                state["cancel"] = True
    assert len(pieces) == 2


def test_sa_cancel_inside_a_sampler_step_between_dit_blocks(sa):
    """The step loop polls before each step; with a cancel, each DiT block polls too, so a stop
    that comes during a step ends it after the block in hand (no progress for that step)."""
    calls = {"n": 0}
    steps: list[int] = []

    def cancel() -> bool:  # the first poll (before step 1) says no, the next (after block 1) yes
        calls["n"] += 1
        return calls["n"] >= 2

    with pytest.raises(Cancelled, match="during a sampler step"):
        sa.generate("snare", seconds=0.01, steps=3, seed=1, cancel=cancel, progress=lambda i, n: steps.append(i))
    assert steps == [] and calls["n"] == 2


def test_sa_blockwise_steps_give_the_same_clip(sa, monkeypatch):
    monkeypatch.setenv("LIVEGEN_DECODE_TILE_LATENTS", "0")
    plain = sa.generate("snare", seconds=0.01, steps=3, seed=1)
    polled = sa.generate("snare", seconds=0.01, steps=3, seed=1, cancel=lambda: False)
    assert rel(polled, plain) < TOL
