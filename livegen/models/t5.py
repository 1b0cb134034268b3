"""T5 encoder in MLX, computing what Hugging Face transformers' ``T5EncoderModel`` computes.

Shared by Stable Audio Open (prompt conditioner: t5-base, padded positions zeroed) and MusicGen
(text encoder, held under ``text_encoder.`` in its checkpoints).

Math (transformers ``modeling_t5``):
  - token embedding; dropout is ignored (inference only);
  - per block: ``x += SelfAttention(RMSNorm(x))`` then ``x += FF(RMSNorm(x))``;
  - attention scores ``q @ k^T`` without 1/sqrt(d) scaling, plus a relative position bias
    (bidirectional log buckets, owned by layer 0 and shared by every layer) plus the padding
    mask (a large negative number on padded keys);
  - T5 layer norm: ``w * x / sqrt(mean(x^2) + eps)`` (no mean subtraction, no bias);
  - feed-forward by ``feed_forward_proj``: "relu" (wi -> relu -> wo), "gated-gelu"
    (gelu_new(wi_0 x) * wi_1 x -> wo, tanh approximation), "gated-silu", ...;
  - a final layer norm.

MLX arrays made here belong to the thread that made them: build and use a ``T5TextEncoder`` on
one thread (the generation thread) and hand out numpy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

__all__ = ["T5Config", "T5Encoder", "T5TextEncoder", "relative_position_buckets"]


# --------------------------------------------------------------------------- config


@dataclass
class T5Config:
    """transformers' T5Config fields the encoder needs (defaults as transformers', i.e. t5-small)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> T5Config:
        """Build from a transformers ``config.json`` dict; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in params.items() if k in names})
        _ = config.activation  # validates feed_forward_proj early
        return config

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def activation(self) -> str:
        """The activation name as transformers derives ``dense_act_fn`` from ``feed_forward_proj``."""
        parts = self.feed_forward_proj.split("-")
        if (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not of the form '<act>' or 'gated-<act>'"
            )
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported T5 activation {act!r} (from feed_forward_proj {self.feed_forward_proj!r})"
            )
        return act


# --------------------------------------------------------------------------- pieces


def _gelu_tanh(x: mx.array) -> mx.array:
    # transformers' gelu_new / gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,  # exact (erf)
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": nn.silu,
    "swish": nn.silu,
}


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int, bidirectional: bool = True
) -> np.ndarray:
    """T5's relative position buckets, int32 [query_length, key_length].

    Mirrors ``T5Attention._relative_position_bucket`` including its float32 log and truncation.
    """
    context = np.arange(query_length, dtype=np.int64)[:, None]
    memory = np.arange(key_length, dtype=np.int64)[None, :]
    rel = memory - context
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        scaled = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(
            math.log(max_distance / max_exact)
        )
    scaled = (scaled * np.float32(num_buckets - max_exact)).astype(np.float32)
    # float -> long truncates toward zero; -inf (rel == 0) only appears where is_small is true
    large = max_exact + np.trunc(np.where(is_small, 0.0, scaled)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    buckets += np.where(is_small, rel, large)
    return buckets.astype(np.int32)


def _clamp_fp16(x: mx.array) -> mx.array:
    # transformers' T5Block clamps fp16 hidden states after each sub-layer so inf cannot spread
    if x.dtype != mx.float16:
        return x
    fmax = float(np.finfo(np.float16).max)
    clamp = mx.where(mx.any(mx.isinf(x)), fmax - 1000.0, fmax).astype(x.dtype)
    return mx.clip(x, -clamp, clamp)


class T5LayerNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        # variance accumulated in fp32, result cast to the weight dtype (as transformers does)
        x32 = x.astype(mx.float32)
        var = mx.mean(x32 * x32, axis=-1, keepdims=True)
        return self.weight * (x32 * mx.rsqrt(var + self.eps)).astype(self.weight.dtype)


class T5SelfAttention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.num_heads = config.num_heads
        self.d_kv = config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        B, T, _ = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(B, T, self.num_heads, self.d_kv).transpose(0, 2, 1, 3)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=bias)
        return self.o(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class T5FeedForward(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        self.act = _ACTIVATIONS[config.activation]
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if self.gated:
            h = self.act(self.wi_0(x)) * self.wi_1(x)
        else:
            h = self.act(self.wi(x))
        return self.wo(h)


class T5Block(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.attn_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.attn = T5SelfAttention(config)
        self.ff_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.ff = T5FeedForward(config)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        x = _clamp_fp16(x + self.attn(self.attn_norm(x), bias))
        return _clamp_fp16(x + self.ff(self.ff_norm(x)))


# --------------------------------------------------------------------------- encoder


class T5Encoder(nn.Module):
    """The T5 encoder stack: ``[B, T]`` token ids (+ optional ``[B, T]`` mask) -> ``[B, T, d_model]``."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
        self.layers = [T5Block(config) for _ in range(config.num_layers)]
        self.final_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def position_bias(self, length: int) -> mx.array:
        """The relative position bias [1, heads, length, length] shared by all layers."""
        buckets = relative_position_buckets(
            length,
            length,
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
            bidirectional=True,
        )
        values = self.relative_attention_bias(mx.array(buckets))  # [T, T, H]
        return values.transpose(2, 0, 1)[None]

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        bias = self.position_bias(input_ids.shape[1]).astype(x.dtype)
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                    f"{tuple(input_ids.shape)}"
                )
            # transformers' eager path adds the dtype's most negative number on padded keys
            neg = mx.array(mx.finfo(x.dtype).min, dtype=x.dtype)
            keep = attention_mask.astype(mx.bool_)[:, None, None, :]
            bias = bias + mx.where(keep, mx.array(0, dtype=x.dtype), neg)
        for layer in self.layers:
            x = layer(x, bias)
        return self.final_norm(x)

    @staticmethod
    def sanitize(weights: dict[str, mx.array], prefix: str = "") -> dict[str, mx.array]:
        """Rename transformers T5 keys to this module's keys.

        Accepts ``T5EncoderModel`` / ``T5Model`` / ``T5ForConditionalGeneration`` state dicts
        (``shared.weight``, ``encoder.embed_tokens.weight``, ``encoder.block.N.layer.M...``,
        ``encoder.final_layer_norm.weight``), optionally under ``prefix`` (MusicGen: ``"text_encoder."``).
        Keys outside ``prefix`` and ``decoder.*`` / ``lm_head.*`` are dropped; keys already in MLX
        form pass through; anything else is kept as is so that a strict load reports it.
        """
        out: dict[str, mx.array] = {}
        embed = None
        for key, value in weights.items():
            if prefix:
                if not key.startswith(prefix):
                    continue
                key = key[len(prefix) :]
            if key.startswith(("decoder.", "lm_head.")):
                continue
            if key == "encoder.embed_tokens.weight":
                embed = value
                continue
            if key == "shared.weight":
                if embed is None:
                    embed = value
                continue
            new = _rename(key)
            out[new] = value
        if embed is not None and "embed_tokens.weight" not in out:
            out["embed_tokens.weight"] = embed
        return out


def _rename(key: str) -> str:
    if key == "encoder.final_layer_norm.weight":
        return "final_norm.weight"
    parts = key.split(".")
    # encoder.block.N.layer.M.<rest>
    if len(parts) < 6 or parts[:2] != ["encoder", "block"] or parts[3] != "layer":
        return key
    n, m, rest = parts[2], parts[4], parts[5:]
    if m == "0":
        if rest == ["layer_norm", "weight"]:
            return f"layers.{n}.attn_norm.weight"
        if rest == ["SelfAttention", "relative_attention_bias", "weight"] and n == "0":
            return "relative_attention_bias.weight"
        if len(rest) == 3 and rest[0] == "SelfAttention" and rest[1] in ("q", "k", "v", "o"):
            return f"layers.{n}.attn.{rest[1]}.weight"
    elif m == "1":
        if rest == ["layer_norm", "weight"]:
            return f"layers.{n}.ff_norm.weight"
        if len(rest) == 3 and rest[0] == "DenseReluDense" and rest[1] in ("wi", "wi_0", "wi_1", "wo"):
            return f"layers.{n}.ff.{rest[1]}.weight"
    return key


# --------------------------------------------------------------------------- loading


def _load_safetensors(path: Path) -> dict[str, mx.array]:
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        weights = mx.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: expected a safetensors file of named tensors")
    return weights


def load_checkpoint(path: str | Path) -> tuple[dict[str, mx.array], str]:
    """Load every tensor of a transformers-format directory (single or sharded safetensors).

    Returns ``(weights, description)`` where the description names the file(s) for error messages.
    """
    path = Path(path)
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single), str(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except Exception as exc:
            raise ValueError(f"{index}: not a valid safetensors index ({exc})") from exc
        weights: dict[str, mx.array] = {}
        for shard in sorted(set(weight_map.values())):
            weights.update(_load_safetensors(path / shard))
        return weights, str(index)
    if (path / "pytorch_model.bin").is_file():
        raise ValueError(
            f"{path}: only pytorch_model.bin found; livegen loads safetensors only at run time "
            "(convert the checkpoint to model.safetensors first)"
        )
    raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def check_weights(model: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    """Raise ValueError naming ``source`` if ``weights`` do not match ``model``'s parameters exactly."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    problems = []
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        problems.append(f"missing keys: {', '.join(missing[:10])}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else ""
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}{more}")
    bad = [
        f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if bad:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        problems.append(f"shape mismatches: {'; '.join(bad[:10])}{more}")
    if problems:
        raise ValueError(f"{source}: T5 weights do not match the config: " + "; ".join(problems))


TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")


def _load_tokenizer(path: str | Path):
    path = Path(path)
    # transformers 5 silently builds an empty (untrained) T5 tokenizer from config.json alone
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in this directory")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: could not load a T5 tokenizer from this directory ({exc})") from exc


class T5TextEncoder:
    """Tokenizer + encoder, as the Stable Audio T5Conditioner uses it.

    ``encode`` tokenizes with ``padding="max_length", truncation=True`` and returns the encoder
    output with padded positions zeroed, plus the boolean mask.
    """

    def __init__(self, model: T5Encoder, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config

    @classmethod
    def from_dir(cls, path: str | Path, dtype: mx.Dtype = mx.float32) -> T5TextEncoder:
        """Load a transformers-format directory: config.json, model.safetensors (or sharded), tokenizer."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{config_file}: config file not found")
        try:
            config = T5Config.from_dict(json.loads(config_file.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{config_file}: not a valid T5 config ({exc})") from exc
        weights, source = load_checkpoint(path)
        tokenizer = _load_tokenizer(path)
        return cls.from_parts(config, weights, tokenizer, dtype=dtype, source=source)

    @classmethod
    def from_parts(
        cls,
        config: T5Config,
        weights: dict[str, Any],
        tokenizer: Any,
        *,
        prefix: str = "",
        dtype: mx.Dtype = mx.float32,
        source: str = "T5 weights",
    ) -> T5TextEncoder:
        """Build from a config, a (transformers- or MLX-keyed) weight dict and a tokenizer."""
        arrays = {k: v if isinstance(v, mx.array) else mx.array(np.asarray(v)) for k, v in weights.items()}
        model = T5Encoder(config)
        sanitized = T5Encoder.sanitize(arrays, prefix=prefix)
        check_weights(model, sanitized, source)
        model.load_weights([(k, v.astype(dtype)) for k, v in sanitized.items()], strict=True)
        model.eval()
        mx.eval(model.parameters())
        return cls(model, tokenizer)

    def tokenize(self, prompts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int32) and attention mask (bool), both ``[len(prompts), max_length]``."""
        enc = self.tokenizer(
            list(prompts), truncation=True, max_length=max_length, padding="max_length", return_tensors="np"
        )
        return np.asarray(enc["input_ids"], dtype=np.int32), np.asarray(enc["attention_mask"]).astype(bool)

    def encode(self, prompts: list[str], max_length: int) -> tuple[mx.array, mx.array]:
        """Embeddings ``[B, max_length, d_model]`` (padded positions zeroed) and the bool mask."""
        ids, mask = self.tokenize(prompts, max_length)
        mask_mx = mx.array(mask)
        out = self.model(mx.array(ids), mask_mx)
        out = out * mask_mx[..., None].astype(out.dtype)
        mx.eval(out)
        return out, mask_mx
