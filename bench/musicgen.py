"""MusicGen small: decoding steps per second with guidance (batch 2), livegen vs transformers.

The reference is ``transformers.MusicgenForConditionalGeneration`` built from musicgen-small's
real configuration (decoder: hidden 1024, 24 layers, 16 heads, FFN 4096, 4 codebooks of 2048;
text encoder: t5-base; EnCodec 32 kHz) with random weights, saved with ``save_pretrained`` for
livegen to load through its user path (``MusicGenPipeline.from_pretrained``). Both sample with
top-k 250, temperature 1, guidance 3 (one batch of 2 per step).

Steps per second are taken from per-step timestamps (livegen: the ``progress`` callback;
transformers: a logits processor, called once per step): the time from the first step's end to
the last one's, divided by the steps in between, so neither the prompt encoding nor the final
EnCodec decode is counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.flops import musicgen_generation_flops
from bench.timing import Pair, alternate

PROMPT = "warm deep techno loop with analog bass"


def real_configs():
    """(text_encoder, audio_encoder, decoder) configs of facebook/musicgen-small."""
    from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config

    t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                  dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    audio = EncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4], hidden_size=128,
        codebook_size=2048, target_bandwidths=[2.2], num_lstm_layers=2, normalize=False, use_causal_conv=False,
        kernel_size=7, last_kernel_size=7, residual_kernel_size=3, compress=2, norm_type="weight_norm",
        pad_mode="reflect", trim_right_ratio=1.0, use_conv_shortcut=False,
    )
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                    ffn_dim=4096, num_codebooks=4, audio_channels=1, pad_token_id=2048,
                                    bos_token_id=2048, dropout=0.0, max_position_embeddings=2048)
    return t5, audio, decoder


@dataclass
class Built:
    ref: Any
    tokenizer: Any
    pipe: Any
    decoder: Any  # transformers decoder config

    def text_tokens(self) -> int:
        return int(self.tokenizer(PROMPT, return_tensors="np")["input_ids"].shape[1])


def write_checkpoint(smoke: bool, directory: Path) -> tuple[Any, Any, Any]:
    """MusicGen small's real configuration (``smoke``: the tests' tiny one) with random weights,
    saved into ``directory`` as a checkpoint a user would have (``save_pretrained`` with the
    tokenizer and a generation config). Returns (reference model, tokenizer, decoder config)."""
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from tests.models.musicgen.mg_fixtures import randomize_, tiny_configs
    from tests.models.t5_fixtures import make_tiny_tokenizer

    if smoke:
        t5, audio, decoder, tokenizer = tiny_configs("mono")
    else:
        (t5, audio, decoder), tokenizer = real_configs(), make_tiny_tokenizer()
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(
        MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    ).float().eval()
    randomize_(model, seed=0)
    start = decoder.vocab_size
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.bos_token_id = start
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    gen_file = directory / "generation_config.json"
    data = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    data.update(decoder_start_token_id=start, pad_token_id=start, bos_token_id=start, guidance_scale=3.0,
                top_k=250, do_sample=True)
    gen_file.write_text(json.dumps(data, indent=2))
    return model, tokenizer, decoder


def build(smoke: bool, workdir: Path, log: Callable[[str], None]) -> Built:
    from livegen.models.musicgen import MusicGenPipeline

    directory = workdir / "musicgen"
    model, tokenizer, decoder = write_checkpoint(smoke, directory)
    log(f"  built the reference MusicGen ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)")
    pipe = MusicGenPipeline.from_pretrained(str(directory))
    for f in directory.glob("*.safetensors"):
        f.unlink()  # livegen holds its converted copy in the (temporary) cache
    return Built(model, tokenizer, pipe, decoder)


def _per_step(stamps: list[float]) -> float:
    if len(stamps) < 2:
        raise RuntimeError(f"need at least 2 decoding steps to time, got {len(stamps)}")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def steps_pair(b: Built, frames: int, repeats: int, log, guidance: float = 3.0) -> tuple[Pair, dict[str, Any]]:
    """Seconds per decoding step (guided: batch 2), livegen vs transformers, interleaved."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Stamp(LogitsProcessor):
        def __init__(self, out: list[float]):
            self.out = out

        def __call__(self, input_ids, scores):
            self.out.append(time.perf_counter())
            return scores

    enc = b.tokenizer(PROMPT, return_tensors="pt")
    k = b.decoder.num_codebooks
    per_step = Pair()
    counts: dict[str, int] = {}

    def lg(n: int, record: bool):
        def run():
            stamps: list[float] = []
            b.pipe.generate_tokens(PROMPT, num_frames=n, guidance_scale=guidance, top_k=250, seed=len(per_step.livegen),
                                   progress=lambda *_: stamps.append(time.perf_counter()))
            if record:
                per_step.livegen.append(_per_step(stamps))
                counts["livegen"] = len(stamps)

        return run

    def ref(n: int, record: bool):
        def run():
            stamps: list[float] = []
            torch.manual_seed(len(per_step.reference))
            with torch.no_grad():
                b.ref.generate(**enc, do_sample=True, top_k=250, guidance_scale=guidance, max_new_tokens=n + k - 1,
                               logits_processor=LogitsProcessorList([Stamp(stamps)]))
            if record:
                per_step.reference.append(_per_step(stamps))
                counts["reference"] = len(stamps)

        return run

    warm = min(frames, 8)
    wall, _ = alternate(lg(frames, True), ref(frames, True), repeats, warmup_livegen=lg(warm, False),
                        warmup_reference=ref(warm, False), log=log, label="musicgen generate")
    d = b.decoder
    steps = counts.get("livegen", frames + k - 1)
    flops = musicgen_generation_flops(d.hidden_size, d.num_hidden_layers, d.ffn_dim, k, d.vocab_size,
                                      b.text_tokens(), steps, batch=2 if guidance > 1 else 1,
                                      text_dim=b.ref.config.text_encoder.d_model)
    extra = {"flops": flops["per_step"], "frames": frames, "steps_timed": counts, "guidance_scale": guidance,
             "batch": 2 if guidance > 1 else 1, "text_tokens": b.text_tokens(),
             "wall_seconds": {"livegen": wall.livegen, "reference": wall.reference}}
    return per_step, extra
