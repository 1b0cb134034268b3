"""Tiny random T5 encoders and tokenizers in the real Hugging Face on-disk format.

Reusable by any test that needs a T5 text encoder (the Stable Audio T5 conditioner, MusicGen's
text encoder): build a random ``transformers.T5EncoderModel`` with tiny widths, a WordLevel
tokenizer with T5's special ids (pad=0, eos=1, unk=2, ``</s>`` appended), and optionally save
both with ``save_pretrained`` (config.json, model.safetensors, tokenizer files).

Only import this module from tests that hold the ``transformers_ref`` fixture (it imports torch
and transformers lazily, inside the functions).
"""

from __future__ import annotations

import math
from pathlib import Path

DEFAULT_WORDS: list[str] = (
    "a an the of and with in on at to warm deep bright dark fast slow soft loud dry wet "
    "kick snare hat clap bass pad lead pluck chord arp drum loop beat groove synth piano guitar "
    "string vocal choir techno house ambient jazz rock funk dub trap lofi disco bpm 120 128 90 140 "
    "reverb delay distorted analog acoustic"
).split()

SPECIAL_TOKENS: tuple[str, str, str] = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5


def make_tiny_tokenizer(words: list[str] | None = None):
    """A fast WordLevel tokenizer with T5's special ids (pad=0, eos=1, unk=2), appending ``</s>``.

    Lower-cases and splits on whitespace and punctuation; unknown words map to ``<unk>``.
    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(DEFAULT_WORDS if words is None else words)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def randomize_t5_(model, seed: int = 0) -> None:
    """Re-randomise every parameter of a transformers T5 model in place (deterministic per seed).

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), relative attention bias ~ N(0, 1),
    layer-norm weights ~ U(0.5, 1.5) (positive, non-trivial).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "relative_attention_bias" in name or "shared" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # nn.Linear weight (out, in)
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def make_tiny_t5(
    directory: str | Path | None = None,
    *,
    d_model: int = 64,
    d_kv: int = 16,
    num_heads: int = 4,
    num_layers: int = 2,
    d_ff: int = 96,
    feed_forward_proj: str = "relu",
    relative_attention_num_buckets: int = 32,
    relative_attention_max_distance: int = 128,
    layer_norm_epsilon: float = 1e-6,
    words: list[str] | None = None,
    extra_vocab: int = 5,
    seed: int = 0,
):
    """A tiny random ``transformers.T5EncoderModel`` (fp32, eval mode) and its tokenizer.

    ``vocab_size`` is the tokenizer's size plus ``extra_vocab`` unused rows (real T5 checkpoints
    also hold more embedding rows than the tokenizer has). Every parameter is re-randomised
    (``randomize_t5_``). If ``directory`` is given, both are saved there with ``save_pretrained``
    (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...), which is the
    layout of a real ``t5-base`` snapshot. Returns ``(model, tokenizer)``.

    For the Stable Audio conditioners use ``d_model=768`` (cond_dim is fixed by t5-base) with
    e.g. ``num_layers=1, num_heads=2, d_kv=32, d_ff=64``.
    """
    from transformers import T5Config, T5EncoderModel

    tokenizer = make_tiny_tokenizer(words)
    config = T5Config(
        vocab_size=len(tokenizer) + extra_vocab,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=relative_attention_num_buckets,
        relative_attention_max_distance=relative_attention_max_distance,
        layer_norm_epsilon=layer_norm_epsilon,
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config).float().eval()
    randomize_t5_(model, seed=seed)
    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return model, tokenizer
