"""Stable Audio's diffusion transformer (stable-audio-tools ``DiffusionTransformer`` with the
"continuous_transformer") in MLX, channels-last: ``x`` is [B, L, io_channels].

Numerics follow the reference exactly: timestep Fourier features ``[cos, sin](2 pi t w)``, the
global embedding (projected global conditioning + timestep embedding) prepended as one token and
dropped from the output, pre-norm blocks (self-attention with rotary embeddings on the first
``max(head_dim // 2, 32)`` dims in the rotate-half convention, cross-attention without rotary,
SwiGLU feed-forward), optional per-head LayerNorm on q/k, residual 1x1 pre/post convolutions.
Like the reference, the cross-attention mask is not applied (``DiTConfig.use_cross_attn_mask``).

Per generation, ``prepare_conditioning`` computes everything that does not depend on the noisy
input or the timestep (projected tokens, every layer's cross-attention K/V, the global embedding,
rotary tables); ``forward_prepared`` is then one denoiser step. ``prepare_guidance`` /
``guided_velocity`` implement the reference's classifier-free guidance (DiTWrapper path).

CPU fast paths (``fast_paths``): MLX's CPU ``exp``/``sigmoid`` are scalar loops (~20 ns an element),
which made the SwiGLU activation and the attention softmax about a quarter of a full-size forward.
On the CPU the gate uses ``x / (1 + exp(-x))`` and attention an explicit softmax, both with
``exp_poly`` (Cody-Waite range reduction and a polynomial, fused by ``mx.compile``; relative error
~2e-7, like ``mx.exp``). GPUs keep ``nn.silu`` and ``mx.fast.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from livegen.models.stable_audio.conditioners import Conditioning
from livegen.models.stable_audio.config import DiTConfig


class LayerNorm(nn.Module):
    """stable-audio-tools ``LayerNorm`` (keys ``gamma``/``beta``; beta is a zero buffer upstream)."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = mx.ones((dims,))
        self.beta = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


# ----------------------------------------------------------------------------- CPU fast paths

_fast_paths: bool | None = None  # None: on the CPU only; True/False: forced (tests, benchmarks)


def use_fast_paths() -> bool:
    """Whether the polynomial-exp SwiGLU and explicit-softmax attention run (default: on the CPU)."""
    if _fast_paths is not None:
        return _fast_paths
    return mx.default_device() == mx.cpu


@contextmanager
def fast_paths(enabled: bool | None) -> Iterator[None]:
    """Force the CPU fast paths on or off (``None``: automatic) within a block."""
    global _fast_paths
    previous = _fast_paths
    _fast_paths = enabled
    try:
        yield
    finally:
        _fast_paths = previous


_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that n * _LN2_HI is exact (Cody-Waite)
_EXP_COEFFS = tuple(1 / math.factorial(k) for k in range(9))  # e^r, |r| <= ln(2) / 2
_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23: (y + M) - M is y rounded to an integer in float32 (|y| < 2**22)
# Largest attention score block of the explicit CPU attention (bytes): heads are processed in groups
# whose scores stay well inside MLX's buffer cache. Full-size Stable Audio Open 1.0 self-attention
# (batch 2, 24 heads, 1025 tokens): 953 ms in one block, 298 ms in blocks of one head.
ATTENTION_BLOCK_BYTES = 8 * 1024 * 1024


def exp_poly(x: mx.array) -> mx.array:
    """exp(x) for float32 from multiplies and adds: x = n ln2 + r with |r| <= ln(2)/2 (Cody-Waite
    reduction), e^r by its degree-8 Taylor polynomial (truncation < 3e-10), 2^n built in the exponent
    bits. Inputs are clamped to [-87, 88] (the float32 normal range; exp(-87) ~ 1.6e-38 stands in
    for smaller values)."""
    x = mx.clip(x, -87.0, 88.0)
    n = (x * _LOG2E + _ROUND_MAGIC) - _ROUND_MAGIC  # round to nearest with adds (vectorisable)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _EXP_COEFFS[8]
    for c in _EXP_COEFFS[7::-1]:
        p = p * r + c
    scale = ((n.astype(mx.int32) + 127) << 23).view(mx.float32)
    return p * scale


@mx.compile
def _swiglu_fast(x: mx.array, gate: mx.array) -> mx.array:
    g = gate.astype(mx.float32)
    return x * (g / (1.0 + exp_poly(-g))).astype(x.dtype)


@mx.compile
def _softmax_fast(scores: mx.array) -> mx.array:
    s = scores.astype(mx.float32)
    e = exp_poly(s - mx.max(s, axis=-1, keepdims=True))
    return (e / mx.sum(e, axis=-1, keepdims=True)).astype(scores.dtype)


def attention_explicit(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T scale) v for q [B, H, L, D] and k/v [B, Hkv, S, D] (H a multiple of Hkv; query
    head h reads key/value head h // (H / Hkv), as ``mx.fast.scaled_dot_product_attention``).

    The (batch, key/value head) pairs are processed in groups whose score blocks stay within
    ``ATTENTION_BLOCK_BYTES``; each group is one batched GEMM, softmax and GEMM."""
    b, h, n, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    q = q.reshape(b * hkv, g, n, d)
    k, v = k.reshape(b * hkv, 1, s, d), v.reshape(b * hkv, 1, s, v.shape[-1])
    per_pair = g * n * s * 4
    group = max(1, ATTENTION_BLOCK_BYTES // per_pair)
    outs = [
        _softmax_fast((q[i : i + group] * scale) @ k[i : i + group].swapaxes(-1, -2)) @ v[i : i + group]
        for i in range(0, b * hkv, group)
    ]
    out = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=0)
    return out.reshape(b, h, n, out.shape[-1])


def rotary_tables(length: int, rotary_dim: int, base: float = 10000.0) -> tuple[mx.array, mx.array]:
    """cos/sin tables [length, rotary_dim] of the reference RotaryEmbedding (freqs repeated twice)."""
    inv_freq = 1.0 / (base ** (mx.arange(0, rotary_dim, 2).astype(mx.float32) / rotary_dim))
    freqs = mx.arange(length).astype(mx.float32)[:, None] * inv_freq[None, :]
    freqs = mx.concatenate([freqs, freqs], axis=-1)
    return mx.cos(freqs), mx.sin(freqs)


def apply_rotary(t: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate the first ``cos.shape[-1]`` features of ``t`` [B, H, L, D] (rotate-half convention)."""
    rot = cos.shape[-1]
    tr, tp = (t[..., :rot], t[..., rot:]) if rot < t.shape[-1] else (t, None)
    half = rot // 2
    rotated = mx.concatenate([-tr[..., half:], tr[..., :half]], axis=-1)
    out = tr * cos + rotated * sin
    return out if tp is None else mx.concatenate([out, tp], axis=-1)


class Attention(nn.Module):
    """Self-attention (``to_qkv``) or cross-attention (``to_q`` + ``to_kv``; grouped K/V heads
    when the context is narrower than the model, as in Stable Audio Open 1.0)."""

    def __init__(self, dim: int, dim_heads: int, dim_context: int | None = None, qk_norm: str = "none"):
        super().__init__()
        self.dim_heads = dim_heads
        self.num_heads = dim // dim_heads
        dim_kv = dim_context if dim_context is not None else dim
        self.kv_heads = dim_kv // dim_heads
        if dim_context is not None:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(dim_kv, dim_kv * 2, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        if qk_norm == "ln":
            self.q_norm = nn.LayerNorm(dim_heads, eps=1e-6)
            self.k_norm = nn.LayerNorm(dim_heads, eps=1e-6)
        self.scale = dim_heads**-0.5

    def _heads(self, t: mx.array, heads: int) -> mx.array:
        b, n, _ = t.shape
        return t.reshape(b, n, heads, self.dim_heads).transpose(0, 2, 1, 3)

    def _attend(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        if mask is None and use_fast_paths():
            out = attention_explicit(q, k, v, self.scale)
        else:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

    def self_attention(self, x: mx.array, rope: tuple[mx.array, mx.array] | None) -> mx.array:
        q, k, v = mx.split(self.to_qkv(x), 3, axis=-1)
        q, k, v = (self._heads(t, self.num_heads) for t in (q, k, v))
        if self.qk_norm == "ln":
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        return self._attend(q, k, v, None)

    def context_kv(self, context: mx.array) -> tuple[mx.array, mx.array]:
        """Cross-attention keys/values [B, kv_heads, S, D] of a context (once per generation)."""
        k, v = mx.split(self.to_kv(context), 2, axis=-1)
        k, v = self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)
        if self.qk_norm == "ln":
            k = self.k_norm(k)
        return k, v

    def cross_attention(self, x: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        q = self._heads(self.to_q(x), self.num_heads)
        if self.qk_norm == "ln":
            q = self.q_norm(q)
        return self._attend(q, k, v, mask)


class GLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def __call__(self, x: mx.array) -> mx.array:
        x, gate = mx.split(self.proj(x), 2, axis=-1)
        if use_fast_paths():
            return _swiglu_fast(x, gate)
        return x * nn.silu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float = 4.0):
        super().__init__()
        inner = int(dim * mult)
        self.ff = [GLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.ff[2](self.ff[0](x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, dim_heads = cfg.embed_dim, min(cfg.dim_heads, cfg.embed_dim)
        self.pre_norm = LayerNorm(dim, cfg.norm_eps)
        self.self_attn = Attention(dim, dim_heads, qk_norm=cfg.qk_norm)
        self.cross_attend = cfg.cond_token_dim > 0
        if self.cross_attend:
            self.cross_attend_norm = LayerNorm(dim, cfg.norm_eps)
            self.cross_attn = Attention(dim, dim_heads, dim_context=cfg.cond_embed_dim, qk_norm=cfg.qk_norm)
        self.ff_norm = LayerNorm(dim, cfg.norm_eps)
        self.ff = FeedForward(dim, cfg.ff_mult)

    def __call__(
        self,
        x: mx.array,
        rope: tuple[mx.array, mx.array] | None,
        kv: tuple[mx.array, mx.array] | None,
        mask: mx.array | None,
    ) -> mx.array:
        x = x + self.self_attn.self_attention(self.pre_norm(x), rope)
        if kv is not None and self.cross_attend:
            x = x + self.cross_attn.cross_attention(self.cross_attend_norm(x), kv[0], kv[1], mask)
        return x + self.ff(self.ff_norm(x))


class ContinuousTransformer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.project_in = nn.Linear(cfg.io_channels, cfg.embed_dim, bias=False)
        self.project_out = nn.Linear(cfg.embed_dim, cfg.io_channels, bias=False)
        self.layers = [TransformerBlock(cfg) for _ in range(cfg.depth)]


class FourierFeatures(nn.Module):
    """Timestep features: ``[cos(f), sin(f)]`` with ``f = 2 pi t w``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = mx.random.normal((out_features // 2, in_features))

    def __call__(self, t: mx.array) -> mx.array:
        f = (2 * math.pi * t) @ self.weight.T
        return mx.concatenate([mx.cos(f), mx.sin(f)], axis=-1)


def _mlp(d_in: int, d_hidden: int, bias: bool) -> list[nn.Module]:
    return [nn.Linear(d_in, d_hidden, bias=bias), nn.SiLU(), nn.Linear(d_hidden, d_hidden, bias=bias)]


def _run(seq: list[nn.Module], x: mx.array) -> mx.array:
    for layer in seq:
        x = layer(x)
    return x


@dataclass
class PreparedConditioning:
    """What one generation's conditioning contributes to every denoiser step."""

    batch: int
    global_embed: mx.array | None  # [B, E] projected global conditioning (without the timestep)
    kv: list[tuple[mx.array, mx.array]] | None  # per layer cross-attention K/V [B, Hkv, S, D]
    mask: mx.array | None  # boolean [B, 1, 1, S] cross-attention mask (only with use_cross_attn_mask)
    rope: dict[int, tuple[mx.array, mx.array]] = field(default_factory=dict)  # by sequence length

    def arrays(self) -> list[mx.array]:
        """Every array held, e.g. for ``mx.eval(prepared.arrays())``."""
        out = [a for a in (self.global_embed, self.mask) if a is not None]
        for k, v in self.kv or []:
            out += [k, v]
        for c, s in self.rope.values():
            out += [c, s]
        return out


@dataclass
class Guidance:
    """Prepared conditioning for classifier-free guidance: batch B when a single pass suffices
    (cfg 1.0), else 2B with the conditional half first and the unconditional half second."""

    prepared: PreparedConditioning
    cfg_scale: float
    batch: int
    scale_phi: float = 0.0

    @property
    def batched(self) -> bool:
        return self.prepared.batch == 2 * self.batch


class DiffusionTransformer(nn.Module):
    """Keys follow the reference (``model.model.`` stripped); see ``sanitize``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        e = cfg.embed_dim
        self.timestep_features = FourierFeatures(1, 256)
        self.to_timestep_embed = [nn.Linear(256, e), nn.SiLU(), nn.Linear(e, e)]
        if cfg.cond_token_dim > 0:
            self.to_cond_embed = [nn.Linear(cfg.cond_token_dim, cfg.cond_embed_dim, bias=False), nn.SiLU(),
                                  nn.Linear(cfg.cond_embed_dim, cfg.cond_embed_dim, bias=False)]
        if cfg.global_cond_dim > 0:
            self.to_global_embed = [nn.Linear(cfg.global_cond_dim, cfg.global_embed_dim, bias=False), nn.SiLU(),
                                    nn.Linear(cfg.global_embed_dim, cfg.global_embed_dim, bias=False)]
        self.transformer = ContinuousTransformer(cfg)
        self.preprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)

    # -- conditioning, once per generation -------------------------------------------------
    def prepare_conditioning(
        self,
        cross_attn: mx.array | None,
        global_cond: mx.array | None,
        cross_attn_mask: mx.array | None = None,
        length: int | None = None,
    ) -> PreparedConditioning:
        """Project the conditioning and compute every layer's cross-attention K/V. ``length`` (the
        latent length) precomputes the rotary tables too; otherwise the first step adds them to
        ``prepared.rope`` (pass ``length`` before wrapping ``forward_prepared`` in ``mx.compile``)."""
        cfg = self.config
        batch = None
        kv = mask = g = None
        if cross_attn is not None and cfg.cond_token_dim > 0:
            cross_attn = mx.array(cross_attn) if not isinstance(cross_attn, mx.array) else cross_attn
            batch = cross_attn.shape[0]
            cond = _run(self.to_cond_embed, cross_attn)
            kv = [layer.cross_attn.context_kv(cond) for layer in self.transformer.layers]
            if cfg.use_cross_attn_mask and cross_attn_mask is not None:
                m = mx.array(cross_attn_mask) if not isinstance(cross_attn_mask, mx.array) else cross_attn_mask
                mask = m.astype(mx.bool_)[:, None, None, :]
        if global_cond is not None and cfg.global_cond_dim > 0:
            global_cond = mx.array(global_cond) if not isinstance(global_cond, mx.array) else global_cond
            if batch is not None and global_cond.shape[0] != batch:
                raise ValueError(f"global_cond batch {global_cond.shape[0]} != cross_attn batch {batch}")
            batch = global_cond.shape[0]
            g = _run(self.to_global_embed, global_cond)
        prepared = PreparedConditioning(batch=batch or 0, global_embed=g, kv=kv, mask=mask)
        if length is not None:
            self._rope(prepared, length + 1)
        return prepared

    def _rope(self, prepared: PreparedConditioning, n: int) -> tuple[mx.array, mx.array] | None:
        if not self.config.rotary_pos_emb:
            return None
        if n not in prepared.rope:
            prepared.rope[n] = rotary_tables(n, self.config.rotary_dim)
        return prepared.rope[n]

    # -- one denoiser step -----------------------------------------------------------------
    def forward_prepared(self, x: mx.array, t: mx.array, prepared: PreparedConditioning,
                         between_blocks: Callable[[mx.array], None] | None = None) -> mx.array:
        """Model output [B, L, C] for noisy latents ``x`` [B, L, C] at times ``t`` [B].

        ``between_blocks(h)`` is called with each transformer block's output (the daemon evaluates
        it there and polls its cancel, so a stop is seen within one block, not one whole step)."""
        b = x.shape[0]
        if prepared.batch and prepared.batch != b:
            raise ValueError(f"x batch {b} != prepared conditioning batch {prepared.batch}")
        t = mx.broadcast_to(mx.array(t, dtype=x.dtype).reshape(-1), (b,))
        temb = _run(self.to_timestep_embed, self.timestep_features(t[:, None]))
        g = temb if prepared.global_embed is None else prepared.global_embed + temb
        h = self.preprocess_conv(x) + x
        h = self.transformer.project_in(h)
        h = mx.concatenate([g[:, None, :].astype(h.dtype), h], axis=1)
        rope = self._rope(prepared, h.shape[1])
        kvs = prepared.kv
        for i, layer in enumerate(self.transformer.layers):
            h = layer(h, rope, kvs[i] if kvs is not None else None, prepared.mask)
            if between_blocks is not None:
                between_blocks(h)
        out = self.transformer.project_out(h)[:, 1:, :]
        return self.postprocess_conv(out) + out

    def __call__(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn: mx.array | None = None,
        global_cond: mx.array | None = None,
        cross_attn_mask: mx.array | None = None,
    ) -> mx.array:
        return self.forward_prepared(x, t, self.prepare_conditioning(cross_attn, global_cond, cross_attn_mask))

    # -- classifier-free guidance ------------------------------------------------------------
    def prepare_guidance(
        self,
        cross_attn: mx.array | None,
        global_cond: mx.array | None,
        cfg_scale: float = 1.0,
        negative_cross_attn: mx.array | None = None,
        negative_cross_attn_mask: mx.array | None = None,
        cross_attn_mask: mx.array | None = None,
        scale_phi: float = 0.0,
        length: int | None = None,
    ) -> Guidance:
        """The reference's CFG inputs, prepared once: at cfg 1.0 (or without cross-attention
        conditioning) one pass; otherwise the conditional batch followed by the unconditional one,
        whose cross-attention conditioning is zeros, or the negative conditioning (its masked
        tokens zeroed) when given. The global conditioning is the same in both halves."""
        cross_attn = None if cross_attn is None else mx.array(cross_attn)
        global_cond = None if global_cond is None else mx.array(global_cond)
        if cross_attn is None and global_cond is None:
            raise ValueError("prepare_guidance needs cross-attention or global conditioning")
        batch = (cross_attn if cross_attn is not None else global_cond).shape[0]
        if cfg_scale == 1.0 or cross_attn is None:
            prep = self.prepare_conditioning(cross_attn, global_cond, cross_attn_mask, length)
            return Guidance(prep, float(cfg_scale), batch, scale_phi)
        if negative_cross_attn is not None:
            uncond = mx.array(negative_cross_attn).astype(cross_attn.dtype)
            if negative_cross_attn_mask is not None:
                keep = mx.array(negative_cross_attn_mask).astype(mx.bool_)[..., None]
                uncond = mx.where(keep, uncond, mx.zeros_like(uncond))
        else:
            uncond = mx.zeros_like(cross_attn)
        both = mx.concatenate([cross_attn, uncond], axis=0)
        both_g = None if global_cond is None else mx.concatenate([global_cond, global_cond], axis=0)
        both_mask = None
        if cross_attn_mask is not None:
            both_mask = mx.concatenate([mx.array(cross_attn_mask)] * 2, axis=0)
        prep = self.prepare_conditioning(both, both_g, both_mask, length)
        return Guidance(prep, float(cfg_scale), batch, scale_phi)

    def prepare_guidance_from(
        self, cond: Conditioning, cfg_scale: float = 1.0, scale_phi: float = 0.0, length: int | None = None
    ) -> Guidance:
        """``prepare_guidance`` from an assembled ``Conditioning``."""
        return self.prepare_guidance(cond.cross_attn, cond.global_cond, cfg_scale, cond.negative_cross_attn,
                                     cond.negative_cross_attn_mask, cond.cross_attn_mask, scale_phi, length)

    def guided(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn: mx.array | None,
        global_cond: mx.array | None,
        cfg_scale: float = 1.0,
        negative_cross_attn: mx.array | None = None,
        negative_cross_attn_mask: mx.array | None = None,
        scale_phi: float = 0.0,
    ) -> mx.array:
        """One-off equivalent of the reference ``DiTWrapper.forward`` (prepares and runs one step)."""
        g = self.prepare_guidance(cross_attn, global_cond, cfg_scale, negative_cross_attn,
                                  negative_cross_attn_mask, scale_phi=scale_phi)
        return guided_velocity(self, x, t, g)

    # -- weights ---------------------------------------------------------------------------------
    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The DiT's weights of a real checkpoint (``model.model.*``) under this module's keys:
        prefix stripped, rotary ``inv_freq`` dropped (recomputed), 1x1 conv weights (out, in, 1)
        transposed to MLX's (out, 1, in). Keys without the prefix are ignored."""
        prefix = "model.model."
        out = {}
        for key, value in weights.items():
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
            if key.endswith("rotary_pos_emb.inv_freq"):
                continue
            if key in ("preprocess_conv.weight", "postprocess_conv.weight") and value.shape[-1] == 1 \
                    and value.shape[1] != 1:
                value = value.transpose(0, 2, 1)
            out[key] = value
        return out


def guided_velocity(model: DiffusionTransformer, x: mx.array, t: mx.array, guidance: Guidance,
                    between_blocks: Callable[[mx.array], None] | None = None) -> mx.array:
    """Model output with classifier-free guidance, as the reference DiT computes it:
    ``uncond + (cond - uncond) * cfg_scale`` from one batched pass (exactly one pass of batch B
    when no guidance applies), with the optional CFG rescale ``scale_phi`` (std over channels).
    ``between_blocks``: see ``DiffusionTransformer.forward_prepared``."""
    if not guidance.batched:
        return model.forward_prepared(x, t, guidance.prepared, between_blocks)
    b = x.shape[0]
    t = mx.broadcast_to(mx.array(t, dtype=x.dtype).reshape(-1), (b,))
    out = model.forward_prepared(mx.concatenate([x, x], axis=0), mx.concatenate([t, t], axis=0),
                                 guidance.prepared, between_blocks)
    cond, uncond = out[:b], out[b:]
    cfg = uncond + (cond - uncond) * guidance.cfg_scale
    if guidance.scale_phi != 0.0:
        cond_std = mx.std(cond, axis=-1, keepdims=True, ddof=1)
        cfg_std = mx.std(cfg, axis=-1, keepdims=True, ddof=1)
        cfg = guidance.scale_phi * (cfg * (cond_std / cfg_std)) + (1 - guidance.scale_phi) * cfg
    return cfg
