"""MusicGen token generation: the codebook delay pattern, classifier-free guidance and sampling.

The delay pattern follows transformers' ``MusicgenForCausalLM.build_delay_pattern_mask`` exactly:
codebook ``k`` (for stereo, the pair ``2c, 2c+1``) is shifted right by its index, the cells before
the shift and after the end are filled with the pad value (the decoder start token during
generation), and ``-1`` marks the cells to predict. Classifier-free guidance runs the conditional
and the null conditioning as one batch of 2B and mixes ``uncond + scale * (cond - uncond)``.
All randomness comes from one ``mx.random.key`` split once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from livegen.errors import Cancelled
from livegen.models.musicgen.transformer import KVCache, MusicGenLM


def channel_codebooks(num_codebooks: int, audio_channels: int) -> int:
    return num_codebooks // 2 if audio_channels == 2 else num_codebooks


def build_delay_pattern_mask(
    input_ids: np.ndarray, pad_token_id: int, max_length: int, audio_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``build_delay_pattern_mask`` on [B, K, S] ids.

    Returns (ids [B, K, start], mask [B, K, max_length]).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    bsz, num_codebooks, seq_len = ids.shape
    shifted = np.full((bsz, num_codebooks, max_length), -1, dtype=np.int64)
    ch = channel_codebooks(num_codebooks, audio_channels)
    if max_length < 2 * ch - 1:
        return ids, shifted
    for c in range(ch):
        rows = [c] if audio_channels == 1 else [2 * c, 2 * c + 1]
        for r in rows:
            n = max(0, min(seq_len, max_length - c))
            shifted[:, r, c : c + n] = ids[:, r, :n]
    upper = np.triu(np.ones((ch, max_length), dtype=bool), k=max_length - ch + 1)
    lower = np.tril(np.ones((ch, max_length), dtype=bool))
    pattern = upper | lower
    if audio_channels == 2:
        pattern = np.repeat(pattern, 2, axis=0)
    out = np.where(pattern[None], pad_token_id, shifted)
    starts = np.nonzero(out[:, 0, :] == -1)[1]
    first = int(starts.min()) if len(starts) else seq_len
    return out[..., :first], out


def apply_delay_pattern_mask(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep ``ids`` where the mask is -1, take the mask's value elsewhere."""
    m = mask[..., : ids.shape[-1]]
    return np.where(m == -1, ids, m)


def undelay(seq: np.ndarray, audio_channels: int, num_frames: int) -> np.ndarray:
    """Delayed sequence [B, K, L] (BOS at position 0) -> codes [B, K, num_frames]."""
    bsz, k, _ = seq.shape
    out = np.empty((bsz, k, num_frames), dtype=np.int64)
    for row in range(k):
        c = row // 2 if audio_channels == 2 else row
        out[:, row] = seq[:, row, 1 + c : 1 + c + num_frames]
    return out


def guide(logits: mx.array, guidance_scale: float) -> mx.array:
    """[2B, ...] (conditional half first) -> [B, ...] guided logits; identity when scale <= 1."""
    if guidance_scale is None or guidance_scale <= 1:
        return logits
    half = logits.shape[0] // 2
    cond, uncond = logits[:half], logits[half:]
    return uncond + (cond - uncond) * guidance_scale


def sample(
    logits: mx.array, key: mx.array | None, top_k: int = 250, top_p: float = 0.0, temperature: float = 1.0
) -> mx.array:
    """Pick tokens from [..., V] logits: greedy when ``top_k == 1`` or ``temperature <= 0``.

    Otherwise temperature, then top-k, then top-p (nucleus, active for 0 < top_p < 1), then one
    categorical draw from ``key`` (transformers' warper order).
    """
    if top_k == 1 or temperature <= 0 or key is None:
        return mx.argmax(logits, axis=-1)
    logits = logits.astype(mx.float32)
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.shape[-1]
    neg = mx.array(-float("inf"), logits.dtype)
    if top_k and 0 < top_k < vocab:
        kth = mx.topk(logits, top_k, axis=-1).min(axis=-1, keepdims=True)
        logits = mx.where(logits < kth, neg, logits)
    if top_p and 0.0 < top_p < 1.0:
        order = mx.argsort(logits, axis=-1)  # ascending
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        cum = mx.cumsum(mx.softmax(sorted_logits, axis=-1), axis=-1)
        remove = cum <= (1.0 - top_p)
        remove[..., -1] = False
        inverse = mx.argsort(order, axis=-1)
        logits = mx.where(mx.take_along_axis(remove, inverse, axis=-1), neg, logits)
    return mx.random.categorical(logits, axis=-1, key=key)


@dataclass
class Conditioning:
    """What the decoder attends to, already batched [cond; null] when guidance is on.

    Text models: ``cross_kv`` per layer and ``cross_mask`` [B', S]. Melody models: ``prefix`` [B', P, D].
    """

    cross_kv: list[tuple[mx.array, mx.array]] | None = None
    cross_mask: mx.array | None = None
    prefix: mx.array | None = None


def decode_steps(
    lm: MusicGenLM,
    pattern: np.ndarray,
    start: int,
    cond: Conditioning,
    *,
    guidance_scale: float = 3.0,
    top_k: int = 250,
    top_p: float = 0.0,
    temperature: float = 1.0,
    key: mx.array | None = None,
    cancel: Callable[[], bool] | None = None,
    pipelined: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Fill ``pattern`` [B, K, L] (from ``build_delay_pattern_mask``) from position ``start`` on.

    Yields ``(position, seq)`` after each position is written, ``seq`` being the delayed sequence
    so far (numpy, shared and updated in place). Greedy when ``top_k == 1`` or ``temperature <= 0``.

    The sampled tokens are fed back on the device (the delay pattern's fixed cells applied with
    ``mx.where``), so with ``pipelined`` the next position's graph is built and queued
    (``mx.async_eval``) before this position's tokens are copied out and yielded: the host never
    leaves the CPU/GPU idle between steps. ``cancel`` is asked once before each position, after
    the previous one was yielded, as without pipelining (a position queued ahead is then dropped).
    """
    total = pattern.shape[-1]
    seq = pattern.copy()
    seq[..., :start] = apply_delay_pattern_mask(seq[..., :start], pattern)
    if start >= total:
        return
    guided = guidance_scale is not None and guidance_scale > 1
    scale = guidance_scale if guided else 1.0
    prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
    cache: list[KVCache] = lm.make_cache(capacity=prefix_len + total)
    fixed = mx.array(pattern.astype(np.int32))
    state = {"key": key, "prefix": cond.prefix}

    def launch(pos: int, x: mx.array) -> tuple[mx.array, mx.array]:
        """Queue position ``pos`` from decoder input ``x``: (column [B, K], next input)."""
        logits = lm(
            x, cache=cache, cross_kv=cond.cross_kv, cross_mask=cond.cross_mask, prefix=state["prefix"]
        )
        state["prefix"] = None
        logits = guide(logits[:, :, -1, :].astype(mx.float32), scale)
        step_key = None
        if state["key"] is not None:
            state["key"], step_key = mx.random.split(state["key"])
        tokens = sample(logits, step_key, top_k=top_k, top_p=top_p, temperature=temperature)
        col = mx.where(fixed[:, :, pos] == -1, tokens.astype(mx.int32), fixed[:, :, pos])
        nxt = col[:, :, None]
        if guided:
            nxt = mx.concatenate([nxt, nxt], axis=0)
        mx.async_eval(col, nxt)
        return col, nxt

    def cancelled() -> bool:
        return cancel is not None and bool(cancel())

    if cancelled():
        raise Cancelled("generation cancelled")
    x = mx.array(seq[..., :start].astype(np.int32))
    if guided:
        x = mx.concatenate([x, x], axis=0)
    col, nxt = launch(start, x)
    for pos in range(start, total):
        ahead = launch(pos + 1, nxt) if pipelined and pos + 1 < total else None
        seq[:, :, pos] = np.array(col).astype(np.int64)
        yield pos, seq
        if pos + 1 == total:
            break
        if cancelled():
            raise Cancelled("generation cancelled")  # a queued next position is simply dropped
        col, nxt = ahead if ahead is not None else launch(pos + 1, nxt)
