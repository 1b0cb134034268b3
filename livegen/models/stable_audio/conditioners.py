"""Stable Audio conditioning: number conditioners and the assembly of DiT inputs.

Mirrors stable-audio-tools' ``NumberConditioner``/``NumberEmbedder`` and
``ConditionedDiffusionModelWrapper.get_conditioning_inputs``: cross-attention tokens are the
conditioners' outputs concatenated along the sequence in ``cross_attention_cond_ids`` order
(T5 prompt tokens, then one token per number), global conditioning is the number embeddings
concatenated along channels in ``global_cond_ids`` order. The T5 itself lives in
``livegen.models.t5``; ``Conditioner.assemble`` takes its (masked) output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from livegen.models.stable_audio.config import NumberConditionerConfig, StableAudioConfig


@dataclass
class Conditioning:
    """DiT inputs for one batch. ``negative_*`` replace the all-zero unconditional branch of CFG."""

    cross_attn: mx.array  # [B, S, cond_dim]
    cross_attn_mask: mx.array  # [B, S] bool
    global_cond: mx.array | None  # [B, G]
    negative_cross_attn: mx.array | None = None  # [B, S, cond_dim]
    negative_cross_attn_mask: mx.array | None = None  # [B, S] bool

    @property
    def batch_size(self) -> int:
        return int(self.cross_attn.shape[0])


class LearnedFourier(nn.Module):
    """``LearnedPositionalEmbedding``: u -> [u, sin(2 pi u w), cos(2 pi u w)]."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError("LearnedFourier dim must be even")
        self.weights = mx.random.normal((dim // 2,))

    def __call__(self, u: mx.array) -> mx.array:
        u = u[:, None]
        freqs = u * self.weights[None, :] * 2 * math.pi
        return mx.concatenate([u, mx.sin(freqs), mx.cos(freqs)], axis=-1)


class NumberEmbedder(nn.Module):
    """``NumberEmbedder(features)``: Fourier features of the normalised value, then Linear(dim+1)."""

    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        self.features = features
        self.embedding = [LearnedFourier(dim), nn.Linear(dim + 1, features)]

    def __call__(self, u: mx.array) -> mx.array:
        h = self.embedding[0](u.reshape(-1))
        return self.embedding[1](h).reshape(*u.shape, self.features)


class NumberConditioner(nn.Module):
    """Clamp to [min_val, max_val], normalise to [0, 1], embed. Returns ([B,1,D] tokens, [B,1] mask)."""

    def __init__(self, output_dim: int, min_val: float = 0.0, max_val: float = 1.0):
        super().__init__()
        self.min_val = float(min_val)
        self.max_val = float(max_val)
        self.embedder = NumberEmbedder(output_dim)

    def __call__(self, values: Sequence[float] | np.ndarray | mx.array) -> tuple[mx.array, mx.array]:
        if isinstance(values, mx.array):
            x = values.reshape(-1).astype(mx.float32)
        else:
            x = mx.array(np.asarray(values, dtype=np.float32).reshape(-1))
        x = mx.clip(x, self.min_val, self.max_val)
        u = (x - self.min_val) / (self.max_val - self.min_val)
        u = u.astype(self.embedder.embedding[1].weight.dtype)
        tokens = self.embedder(u)[:, None, :]
        return tokens, mx.ones((tokens.shape[0], 1), dtype=mx.bool_)


class Conditioner(nn.Module):
    """The number conditioners of a model (by id) and the assembly of the DiT's inputs."""

    def __init__(
        self,
        numbers: Sequence[NumberConditionerConfig],
        cond_dim: int = 768,
        cross_attention_cond_ids: Sequence[str] = (),
        global_cond_ids: Sequence[str] = (),
        t5_id: str | None = None,
    ):
        super().__init__()
        self.conditioners = {c.id: NumberConditioner(cond_dim, c.min_val, c.max_val) for c in numbers}
        self._cond_dim = cond_dim
        self._cross_ids = tuple(cross_attention_cond_ids)
        self._global_ids = tuple(global_cond_ids)
        self._t5_id = t5_id
        for cid in self._cross_ids + self._global_ids:
            if cid != t5_id and cid not in self.conditioners:
                raise ValueError(f"conditioning id {cid!r} has no conditioner")

    @classmethod
    def from_config(cls, config: StableAudioConfig) -> Conditioner:
        return cls(
            config.number_conditioners,
            cond_dim=config.cond_dim,
            cross_attention_cond_ids=config.cross_attention_cond_ids,
            global_cond_ids=config.global_cond_ids,
            t5_id=config.t5.id if config.t5 else None,
        )

    @property
    def number_ids(self) -> list[str]:
        return list(self.conditioners)

    def embed_numbers(
        self, numbers: dict[str, float | Sequence[float]], batch_size: int
    ) -> dict[str, tuple[mx.array, mx.array]]:
        """Run every number conditioner; a scalar value is used for the whole batch."""
        out = {}
        for cid, cond in self.conditioners.items():
            if cid not in numbers:
                raise ValueError(f"missing value for number conditioner {cid!r}")
            vals = np.asarray(numbers[cid], dtype=np.float32).reshape(-1)
            if vals.size == 1 and batch_size > 1:
                vals = np.repeat(vals, batch_size)
            if vals.size != batch_size:
                raise ValueError(f"{cid!r}: got {vals.size} values for a batch of {batch_size}")
            out[cid] = cond(vals)
        return out

    def _cross(self, t5: tuple[mx.array, mx.array] | None, nums: dict[str, tuple[mx.array, mx.array]]):
        tokens, masks = [], []
        for cid in self._cross_ids:
            if cid == self._t5_id:
                if t5 is None:
                    raise ValueError(f"cross-attention input {cid!r} needs T5 embeddings")
                emb, mask = t5
            else:
                emb, mask = nums[cid]
            tokens.append(emb)
            masks.append(mask)
        return mx.concatenate(tokens, axis=1), mx.concatenate(masks, axis=1)

    @staticmethod
    def _t5_inputs(emb, mask) -> tuple[mx.array, mx.array] | None:
        if emb is None:
            return None
        emb = mx.array(emb) if not isinstance(emb, mx.array) else emb
        if mask is None:
            mask = mx.ones(emb.shape[:2], dtype=mx.bool_)
        mask = (mx.array(mask) if not isinstance(mask, mx.array) else mask).astype(mx.bool_)
        # The reference conditioner zeroes padded positions; doing it again is harmless.
        return emb * mask[..., None].astype(emb.dtype), mask

    def assemble(
        self,
        t5_embeddings: mx.array | np.ndarray | None,
        t5_mask: mx.array | np.ndarray | None,
        numbers: dict[str, float | Sequence[float]],
        negative_t5_embeddings: mx.array | np.ndarray | None = None,
        negative_t5_mask: mx.array | np.ndarray | None = None,
    ) -> Conditioning:
        """Assemble the DiT inputs from T5 output [B,T,cond_dim] (+ mask [B,T]) and number values.

        The negative branch (negative prompt) reuses the same number values, as the reference
        front ends do."""
        t5 = self._t5_inputs(t5_embeddings, t5_mask)
        if t5 is not None:
            batch = int(t5[0].shape[0])
        else:
            batch = max((np.asarray(v).size for v in numbers.values()), default=1)
        nums = self.embed_numbers(numbers, batch)
        cross, cross_mask = self._cross(t5, nums)
        global_cond = None
        if self._global_ids:
            global_cond = mx.concatenate([nums[cid][0][:, 0, :] for cid in self._global_ids], axis=-1)
        neg = neg_mask = None
        if negative_t5_embeddings is not None:
            if t5 is None:
                raise ValueError("negative T5 embeddings given without prompt T5 embeddings")
            neg_t5 = self._t5_inputs(negative_t5_embeddings, negative_t5_mask)
            if neg_t5[0].shape != t5[0].shape:
                raise ValueError(f"negative T5 shape {neg_t5[0].shape} != prompt T5 shape {t5[0].shape}")
            neg, neg_mask = self._cross(neg_t5, nums)
        return Conditioning(cross, cross_mask, global_cond, neg, neg_mask)

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Keep the number conditioners' weights of a real checkpoint, renamed to this module's keys
        (``conditioner.conditioners.<id>.embedder.embedding.{0.weights,1.weight,1.bias}``)."""
        prefix = "conditioner."
        out = {}
        for key, value in weights.items():
            if key.startswith(prefix + "conditioners.") and ".embedder.embedding." in key:
                out[key[len(prefix):]] = value
        return out
