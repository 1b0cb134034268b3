"""MusicGen generation: delay pattern, greedy parity with transformers' generate, seeds, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from livegen.errors import Cancelled
from livegen.models.musicgen.sampling import (
    apply_delay_pattern_mask,
    build_delay_pattern_mask,
    sample,
    undelay,
)

PROMPT = "warm deep techno loop with analog bass"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, transformers_ref):
    from tests.models.musicgen.mg_fixtures import make_tiny_musicgen

    root = tmp_path_factory.mktemp("mg")
    out = {}
    for variant in ("mono", "stereo", "melody"):
        model, tokenizer = make_tiny_musicgen(root / variant, variant=variant, seed=3)
        out[variant] = (root / variant, model, tokenizer)
    return out


@pytest.fixture(scope="module")
def pipes(tiny_dirs, tmp_path_factory):
    from livegen.models.musicgen import MusicGenPipeline

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        return {v: MusicGenPipeline.from_pretrained(str(d)) for v, (d, _, _) in tiny_dirs.items()}


# ----------------------------------------------------------------------------- delay pattern


@pytest.mark.parity
@pytest.mark.parametrize("channels,k", [(1, 4), (2, 8)])
@pytest.mark.parametrize("prompt_len,max_length", [(1, 12), (4, 12), (1, 5), (3, 3), (1, 2)])
def test_delay_pattern_matches_reference(channels, k, prompt_len, max_length, tiny_dirs):
    import torch

    variant = "stereo" if channels == 2 else "mono"
    ref = tiny_dirs[variant][1].decoder
    ids = np.random.default_rng(prompt_len).integers(0, 32, size=(2, k, prompt_len))
    ids[..., 0] = 32
    r_ids, r_mask = ref.build_delay_pattern_mask(
        torch.tensor(ids.reshape(2 * k, prompt_len)), pad_token_id=32, max_length=max_length
    )
    o_ids, o_mask = build_delay_pattern_mask(ids, 32, max_length, channels)
    np.testing.assert_array_equal(o_ids.reshape(2 * k, -1), r_ids.numpy())
    np.testing.assert_array_equal(o_mask.reshape(2 * k, -1), r_mask.numpy())
    seq = np.random.default_rng(9).integers(0, 32, size=(2, k, max_length))
    applied = ref.apply_delay_pattern_mask(torch.tensor(seq.reshape(2 * k, -1)), r_mask).numpy()
    np.testing.assert_array_equal(apply_delay_pattern_mask(seq, o_mask).reshape(2 * k, -1), applied)


def test_undelay_inverts_the_pattern():
    k, frames = 4, 6
    codes = np.arange(2 * k * frames).reshape(2, k, frames) % 31
    bos = np.full((2, k, 1), 32)
    _, mask = build_delay_pattern_mask(np.concatenate([bos, codes], axis=2), 32, frames + k, 1)
    assert (mask != -1).all()  # a full prompt leaves nothing to predict
    np.testing.assert_array_equal(undelay(mask, 1, frames), codes)
    stereo = np.arange(2 * 8 * frames).reshape(2, 8, frames) % 31
    _, mask = build_delay_pattern_mask(
        np.concatenate([np.full((2, 8, 1), 32), stereo], axis=2), 32, frames + 4, 2
    )
    np.testing.assert_array_equal(undelay(mask, 2, frames), stereo)


# ----------------------------------------------------------------------------- sampling


def test_sample_top_k_top_p_and_greedy():
    import mlx.core as mx

    logits = mx.array(np.log(np.array([[0.05, 0.4, 0.1, 0.3, 0.15]] * 400, dtype=np.float32)))
    greedy = np.array(sample(logits, mx.random.key(0), top_k=1))
    assert (greedy == 1).all()
    top2 = np.array(sample(logits, mx.random.key(1), top_k=2))
    assert set(np.unique(top2)) == {1, 3}
    # nucleus 0.6: sorted probs .4, .3 reach 0.7 > 0.6 -> keep {1, 3}
    nucleus = np.array(sample(logits, mx.random.key(2), top_k=0, top_p=0.6))
    assert set(np.unique(nucleus)) == {1, 3}
    everything = np.array(sample(logits, mx.random.key(3), top_k=250))
    assert set(np.unique(everything)) == {0, 1, 2, 3, 4}
    a = np.array(sample(logits, mx.random.key(4), top_k=250))
    b = np.array(sample(logits, mx.random.key(4), top_k=250))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parity
def test_top_p_matches_transformers_warper(torch_ref, transformers_ref):
    import mlx.core as mx
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 32)).astype(np.float32) * 2
    for top_p in (0.3, 0.8, 0.95):
        ref = TopPLogitsWarper(top_p)(None, torch_ref.tensor(logits)).numpy()
        kept_ref = np.isfinite(ref)
        draws = np.stack(
            [np.array(sample(mx.array(logits), mx.random.key(s), top_k=0, top_p=top_p)) for s in range(200)]
        )
        for row in range(6):
            assert set(np.unique(draws[:, row])) <= set(np.nonzero(kept_ref[row])[0])


# ----------------------------------------------------------------------------- greedy parity


def _ref_inputs(tokenizer, torch, prompts):
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["mono", "stereo", "melody"])
def test_greedy_generation_with_guidance_matches_transformers(variant, tiny_dirs, pipes, torch_ref):
    from tests.models.musicgen.mg_fixtures import reference_generate

    _, model, tokenizer = tiny_dirs[variant]
    pipe = pipes[variant]
    new_tokens = 50
    ref_codes, ref_audio = reference_generate(
        model, **_ref_inputs(tokenizer, torch_ref, [PROMPT]), do_sample=False, guidance_scale=3.0,
        max_new_tokens=new_tokens,
    )  # fmt: skip
    ch = pipe.config.num_codebooks // pipe.audio_channels
    frames = new_tokens + 1 - ch
    assert ref_codes.shape == (1, pipe.config.num_codebooks, frames)
    assert min(len(np.unique(row)) for row in ref_codes[0]) >= 3  # not a degenerate repetition
    codes = pipe.generate_tokens(PROMPT, top_k=1, guidance_scale=3.0, num_frames=frames)
    np.testing.assert_array_equal(codes, ref_codes)
    audio = pipe.decode_codes(codes)
    err = np.abs(audio - ref_audio).max() / np.abs(ref_audio).max()
    print(f"{variant}: greedy tokens equal; decoded audio rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parity
def test_greedy_melody_conditioned_generation_matches_transformers(tiny_dirs, pipes, torch_ref):
    from tests.models.musicgen.mg_fixtures import reference_generate

    _, model, tokenizer = tiny_dirs["melody"]
    pipe = pipes["melody"]
    t = np.arange(32000) / 32000
    melody = (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None]
    chroma = pipe.melody_chroma((melody, 32000))
    assert chroma.shape[0] == 1 and chroma.shape[2] == 12
    ref_codes, _ = reference_generate(
        model, **_ref_inputs(tokenizer, torch_ref, [PROMPT]), input_features=torch_ref.tensor(chroma),
        do_sample=False, guidance_scale=3.0, max_new_tokens=30,
    )  # fmt: skip
    codes = pipe.generate_tokens(PROMPT, top_k=1, melody=(melody, 32000), num_frames=27)
    np.testing.assert_array_equal(codes, ref_codes)
    plain = pipe.generate_tokens(PROMPT, top_k=1, num_frames=27)
    assert not np.array_equal(plain, codes)  # the melody changes the result


@pytest.mark.parity
def test_greedy_continuation_matches_transformers(tiny_dirs, pipes, torch_ref):
    from tests.models.musicgen.mg_fixtures import reference_generate

    _, model, tokenizer = tiny_dirs["mono"]
    pipe = pipes["mono"]
    prompt_audio = np.random.default_rng(4).uniform(-0.5, 0.5, size=(1, 1, 16 * 10)).astype(np.float32)
    ref_codes, _ = reference_generate(
        model, **_ref_inputs(tokenizer, torch_ref, [PROMPT]), input_values=torch_ref.tensor(prompt_audio),
        do_sample=False, guidance_scale=3.0, max_new_tokens=20,
    )  # fmt: skip
    prompt_codes = pipe.encode_audio(prompt_audio)
    assert prompt_codes.shape == (1, 4, 10)
    new = ref_codes.shape[2] - 10
    codes = pipe.generate_tokens(PROMPT, top_k=1, audio_prompt=prompt_audio[0], num_frames=new)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(codes[:, :, :10], prompt_codes)
    audio = pipe.generate(PROMPT, seconds=new / pipe.frame_rate, top_k=1, audio_prompt=prompt_audio[0])
    np.testing.assert_allclose(audio, pipe.decode_codes(codes)[0][:, 10 * pipe.hop_length :], atol=1e-5)


# ----------------------------------------------------------------------------- seeds, streaming


def test_same_seed_same_result_different_seed_differs(pipes):
    pipe = pipes["mono"]
    seconds = 20 / pipe.frame_rate
    a = pipe.generate(PROMPT, seconds=seconds, seed=123)
    assert pipe.last_seed == 123
    b = pipe.generate(PROMPT, seconds=seconds, seed=123)
    c = pipe.generate(PROMPT, seconds=seconds, seed=124)
    assert a.dtype == np.float32 and a.shape == (1, 20 * pipe.hop_length)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ta = pipe.generate_tokens(PROMPT, num_frames=20, seed=5, temperature=0.7, top_p=0.9)
    tb = pipe.generate_tokens(PROMPT, num_frames=20, seed=5, temperature=0.7, top_p=0.9)
    np.testing.assert_array_equal(ta, tb)
    short = pipe.generate_tokens(PROMPT, num_frames=2, seed=None)
    assert isinstance(pipe.last_seed, int)
    # very short clips keep the delay pattern: the first frames equal those of a longer greedy run
    np.testing.assert_array_equal(
        pipe.generate_tokens(PROMPT, num_frames=2, top_k=1),
        pipe.generate_tokens(PROMPT, num_frames=9, top_k=1)[..., :2],
    )
    assert short.shape == (1, 4, 2)


@pytest.mark.parametrize("variant", ["mono", "stereo"])
def test_stream_concatenation_equals_generate(variant, pipes):
    pipe = pipes[variant]
    seconds, chunk = 30 / pipe.frame_rate, 7 / pipe.frame_rate
    whole = pipe.generate(PROMPT, seconds=seconds, seed=7)
    steps = []
    pieces = list(
        pipe.generate_stream(
            PROMPT, seconds=seconds, chunk_seconds=chunk, seed=7, progress=lambda i, n: steps.append(i)
        )
    )
    assert len(pieces) > 2
    assert all(p.shape[0] == pipe.audio_channels for p in pieces)
    joined = np.concatenate(pieces, axis=1)
    assert joined.shape == whole.shape == (pipe.audio_channels, 30 * pipe.hop_length)
    assert np.abs(joined - whole).max() <= 1e-4 * np.abs(whole).max()
    assert steps == list(range(1, len(steps) + 1))


def test_stream_with_audio_prompt_returns_only_the_continuation(pipes):
    pipe = pipes["mono"]
    prompt_audio = np.random.default_rng(1).uniform(-0.5, 0.5, size=(1, 16 * 6)).astype(np.float32)
    seconds = 12 / pipe.frame_rate
    whole = pipe.generate(PROMPT, seconds=seconds, seed=3, audio_prompt=prompt_audio)
    joined = np.concatenate(
        list(pipe.generate_stream(PROMPT, seconds=seconds, chunk_seconds=4 / pipe.frame_rate, seed=3,
                                  audio_prompt=prompt_audio)),
        axis=1,
    )  # fmt: skip
    assert whole.shape == joined.shape == (1, 12 * pipe.hop_length)
    assert np.abs(joined - whole).max() <= 1e-4 * np.abs(whole).max()


def test_cancel_and_progress(pipes):
    pipe = pipes["mono"]
    calls = []

    def cancel():
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        pipe.generate(
            PROMPT, seconds=20 / pipe.frame_rate, progress=lambda i, n: calls.append((i, n)), cancel=cancel
        )
    assert calls == [(1, 23), (2, 23), (3, 23)]


# ----------------------------------------------------------------------------- CLI


def test_cli_generate_writes_float_wav(tiny_dirs, tmp_path, monkeypatch, capsys):
    import soundfile as sf

    from livegen.cli import main

    monkeypatch.setenv("LIVEGEN_CACHE", str(tmp_path / "cache"))
    for variant, channels in (("mono", 1), ("stereo", 2)):
        out = tmp_path / f"{variant}.wav"
        argv = ["generate", "--model", str(tiny_dirs[variant][0]), "--prompt", PROMPT, "--seconds", "0.01",
                "--seed", "3", "--top-k", "20", "--output", str(out)]  # fmt: skip
        assert main(argv) == 0
        info = sf.info(str(out))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (
            32000,
            channels,
            20 * 16,
            "FLOAT",
        )
        err = capsys.readouterr().err
        assert "token/s" in err and "seed 3" in err
    melody = tmp_path / "melody.wav"
    sf.write(str(melody), np.zeros(3200, np.float32), 16000, subtype="FLOAT")
    argv = ["generate", "--model", str(tiny_dirs["mono"][0]), "--prompt", PROMPT, "--seconds", "0.01",
            "--melody", str(melody), "--output", str(tmp_path / "x.wav")]  # fmt: skip
    assert main(argv) == 2
    assert "melody" in capsys.readouterr().err
    argv[argv.index("--melody") : argv.index("--melody") + 2] = ["--continue", str(melody)]
    assert main(argv) == 0
    assert sf.info(str(tmp_path / "x.wav")).frames == 20 * 16
    too_long = ["generate", "--model", str(tiny_dirs["mono"][0]), "--prompt", PROMPT, "--seconds", "1",
                "--output", str(tmp_path / "y.wav")]  # fmt: skip
    assert main(too_long) == 2
    argv = ["generate", "--model", str(tiny_dirs["melody"][0]), "--prompt", PROMPT, "--seconds", "0.01",
            "--melody", str(melody), "--output", str(tmp_path / "m.wav")]  # fmt: skip
    assert main(argv) == 0
