"""The MusicGen decoder: a pre-norm transformer language model over K EnCodec codebooks.

Matches transformers' ``MusicgenForCausalLM`` (text-conditioned through cross-attention) and
``MusicgenMelodyForCausalLM`` (no cross-attention: the projected chroma and text states are
prepended to the token embeddings as a prefix). Input embeddings are the sum of one embedding per
codebook; positions are sinusoidal ``[cos, sin]`` (tensor2tensor order) offset by the cache length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from livegen.models.musicgen.config import DecoderConfig, MusicGenConfig

_NEG = -1e9  # finite "masked" score: a fully masked row averages (zero) values instead of giving NaN


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
    """``MusicgenSinusoidalPositionalEmbedding.get_embedding`` in float32: [num_positions, dim]."""
    half = dim // 2
    scale = np.float32(math.log(10000) / (half - 1))
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale).astype(np.float32)
    args = np.arange(num_positions, dtype=np.float32)[:, None] * freqs[None, :]
    emb = np.concatenate([np.cos(args), np.sin(args)], axis=1).astype(np.float32)
    if dim % 2 == 1:
        emb = np.concatenate([emb, np.zeros((num_positions, 1), np.float32)], axis=1)
    return emb


def _activation(name: str):
    if name == "gelu":
        return nn.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return nn.gelu_approx
    if name == "relu":
        return nn.relu
    if name in ("silu", "swish"):
        return nn.silu
    raise ValueError(f"unsupported activation {name!r}")


class KVCache:
    """Self-attention keys/values [B, H, T, Dh] in a preallocated buffer, written in place.

    ``capacity`` (positions) sizes the buffer up front (the decode loop knows the final length);
    beyond it the buffer grows in steps of ``step`` positions.
    """

    step = 256

    def __init__(self, capacity: int | None = None) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self.capacity = capacity

    def update(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        n = k.shape[2]
        if self.keys is None or self.offset + n > self.keys.shape[2]:
            need = self.offset + n
            if self.keys is None and self.capacity is not None:
                need = max(need, self.capacity)
            size = ((need + self.step - 1) // self.step) * self.step
            grow = size - (0 if self.keys is None else self.offset)
            shape = (k.shape[0], k.shape[1], grow, k.shape[3])
            new_k, new_v = mx.zeros(shape, k.dtype), mx.zeros(shape, v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[:, :, : self.offset], new_k], axis=2)
                self.values = mx.concatenate([self.values[:, :, : self.offset], new_v], axis=2)
        self.keys[:, :, self.offset : self.offset + n] = k
        self.values[:, :, self.offset : self.offset + n] = v
        self.offset += n
        return self.keys[:, :, : self.offset], self.values[:, :, : self.offset]

    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]


class Fusion:
    """One weight for sibling bias-free ``nn.Linear`` layers that read the same input.

    ``x @ fused.T`` is one GEMM instead of one per layer (fewer BLAS calls, the input read once).
    The layers' weights are replaced by row views of the fused array, so the parameters keep their
    names (loading, saving, strict key checks) and no memory is duplicated. A weight replaced later
    (``load_weights``, ``set_dtype``) is noticed by identity and the fused array rebuilt.
    """

    def __init__(self) -> None:
        self._parts: list[mx.array] | None = None
        self._fused: mx.array | None = None

    def weight(self, layers: list[nn.Linear]) -> mx.array:
        parts = [layer.weight for layer in layers]
        if self._parts is None or any(a is not b for a, b in zip(self._parts, parts, strict=True)):
            fused = mx.concatenate(parts, axis=0)
            mx.eval(fused)
            start = 0
            for layer, w in zip(layers, parts, strict=True):
                layer.weight = fused[start : start + w.shape[0]]
                start += w.shape[0]
            mx.eval([layer.weight for layer in layers])
            self._parts, self._fused = [layer.weight for layer in layers], fused
        return self._fused


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.fused = True  # one GEMM for q/k/v (see Fusion); False: one per projection
        self._qkv, self._kv = Fusion(), Fusion()  # plain attributes, not parameters

    def _split(self, x: mx.array) -> mx.array:
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def _project(self, x: mx.array, layers: list[nn.Linear], fusion: Fusion) -> list[mx.array]:
        if not self.fused:
            return [self._split(layer(x)) for layer in layers]
        y = x @ fusion.weight(layers).T
        d = self.heads * self.head_dim
        return [self._split(y[..., i * d : (i + 1) * d]) for i in range(len(layers))]

    def key_values(self, x: mx.array) -> tuple[mx.array, mx.array]:
        k, v = self._project(x, [self.k_proj, self.v_proj], self._kv)
        return k, v

    def __call__(
        self,
        x: mx.array,
        kv: tuple[mx.array, mx.array] | None = None,
        mask: mx.array | None = None,
        cache: KVCache | None = None,
    ) -> mx.array:
        b, t, _ = x.shape
        if kv is None:
            q, k, v = self._project(x, [self.q_proj, self.k_proj, self.v_proj], self._qkv)
            if cache is not None:
                k, v = cache.update(k, v)
        else:
            q = self._split(self.q_proj(x))
            k, v = kv
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, -1))


def _weight_product(x: mx.array, w: mx.array) -> mx.array:
    """``x @ w.T`` for the few rows of a decoding step, computed as ``(w @ rows.T).T``: OpenBLAS
    streams the weight faster in this orientation (measured on the CPU test machine, 2 threads:
    [2, 1024] x [1024, 4096] 1.27 ms -> 1.00 ms; a musicgen-small step 8 % faster)."""
    *lead, d = x.shape
    rows = x.reshape(-1, d)
    return (w @ rows.T).T.reshape(*lead, w.shape[0])


@cache
def _step_functions(
    activation: str, heads: int, scale: float, eps: float, cross: bool, masked: bool
) -> tuple[Callable, Callable]:
    """Compiled (``mx.compile``) halves of a one-token decoder layer, around the self-attention.

    ``pre(x, ln_w, ln_b, weights)`` -> q, k, v ``[B, H, 1, Dh]`` (``weights``: the fused q/k/v weight
    or the three separately); ``post(x, attn, p)`` -> next hidden state: self-attention output
    projection, cross-attention (``p['xk']``/``p['xv']``, additive ``p['xmask']``) and the FFN, each
    with its residual. Every shape is fixed during decoding, so each half is traced once per
    generation shape; the cache update and the self-attention (whose length grows) stay outside.
    """
    act = _activation(activation)
    mm = _weight_product

    def split(y: mx.array) -> mx.array:
        b, t, d = y.shape
        return y.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)

    def merge(o: mx.array) -> mx.array:
        b, _, t, _ = o.shape
        return o.transpose(0, 2, 1, 3).reshape(b, t, -1)

    def pre(x: mx.array, ln_w: mx.array, ln_b: mx.array, weights: list[mx.array]) -> list[mx.array]:
        h = mx.fast.layer_norm(x, ln_w, ln_b, eps)
        if len(weights) == 3:
            return [split(mm(h, w)) for w in weights]
        y = mm(h, weights[0])
        d = x.shape[-1]
        return [split(y[..., i * d : (i + 1) * d]) for i in range(3)]

    def post(x: mx.array, attn: mx.array, p: dict[str, mx.array]) -> mx.array:
        x = x + mm(merge(attn), p["wo"])
        if cross:
            h = mx.fast.layer_norm(x, p["xln_w"], p["xln_b"], eps)
            q = split(mm(h, p["xwq"]))
            o = mx.fast.scaled_dot_product_attention(
                q, p["xk"], p["xv"], scale=scale, mask=p["xmask"] if masked else None
            )
            x = x + mm(merge(o), p["xwo"])
        h = mx.fast.layer_norm(x, p["fln_w"], p["fln_b"], eps)
        return x + mm(act(mm(h, p["fc1"])), p["fc2"])

    return mx.compile(pre), mx.compile(post)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, cross_attention: bool) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.self_attn = Attention(d, cfg.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        if cross_attention:
            self.encoder_attn = Attention(d, cfg.num_attention_heads)
            self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, d, bias=False)
        self.final_layer_norm = nn.LayerNorm(d)
        self.activation = cfg.activation_function
        self.act = _activation(cfg.activation_function)
        self.compiled = True  # one-token steps through _step_functions; False: the plain modules

    def __call__(
        self,
        x: mx.array,
        mask: mx.array | None,
        cache: KVCache | None,
        cross_kv: tuple[mx.array, mx.array] | None,
        cross_mask: mx.array | None,
    ) -> mx.array:
        if self.compiled and x.shape[1] == 1 and mask is None:
            return self._step(x, cache, cross_kv, cross_mask)
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask=mask, cache=cache)
        if cross_kv is not None:
            x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), kv=cross_kv, mask=cross_mask)
        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))

    def _step(
        self,
        x: mx.array,
        cache: KVCache | None,
        cross_kv: tuple[mx.array, mx.array] | None,
        cross_mask: mx.array | None,
    ) -> mx.array:
        """The same layer for one new position, with the fixed-shape parts compiled."""
        a, ln = self.self_attn, self.self_attn_layer_norm
        pre, post = _step_functions(
            self.activation, a.heads, a.scale, ln.eps, cross_kv is not None, cross_mask is not None
        )
        projections = [a.q_proj, a.k_proj, a.v_proj]
        weights = [a._qkv.weight(projections)] if a.fused else [p.weight for p in projections]
        q, k, v = pre(x, ln.weight, ln.bias, weights)
        if cache is not None:
            k, v = cache.update(k, v)
        attn = mx.fast.scaled_dot_product_attention(q, k, v, scale=a.scale)
        p = {"wo": a.out_proj.weight, "fc1": self.fc1.weight, "fc2": self.fc2.weight}
        p["fln_w"], p["fln_b"] = self.final_layer_norm.weight, self.final_layer_norm.bias
        if cross_kv is not None:
            c, cln = self.encoder_attn, self.encoder_attn_layer_norm
            p.update(xln_w=cln.weight, xln_b=cln.bias, xwq=c.q_proj.weight, xwo=c.out_proj.weight)
            p["xk"], p["xv"] = cross_kv
            if cross_mask is not None:
                p["xmask"] = cross_mask
        return post(x, attn, p)


class Decoder(nn.Module):
    """``decoder.model.decoder``: codebook embeddings, layers, final layer norm."""

    def __init__(self, cfg: DecoderConfig, cross_attention: bool) -> None:
        super().__init__()
        self.embed_tokens = [
            nn.Embedding(cfg.vocab_size + 1, cfg.hidden_size) for _ in range(cfg.num_codebooks)
        ]
        self.layers = [DecoderLayer(cfg, cross_attention) for _ in range(cfg.num_hidden_layers)]
        self.layer_norm = nn.LayerNorm(cfg.hidden_size)


def causal_mask(n_new: int, offset: int, dtype: mx.Dtype) -> mx.array | None:
    if n_new == 1:
        return None
    rows = mx.arange(offset, offset + n_new)[:, None]
    cols = mx.arange(offset + n_new)[None, :]
    return mx.where(cols <= rows, mx.array(0.0, dtype), mx.array(_NEG, dtype))


def padding_mask(mask: mx.array | None, dtype: mx.Dtype) -> mx.array | None:
    """[B, S] 1/0 key mask -> additive [B, 1, 1, S]."""
    if mask is None:
        return None
    return mx.where(mask[:, None, None, :] > 0, mx.array(0.0, dtype), mx.array(_NEG, dtype))


class MusicGenLM(nn.Module):
    """Decoder + heads + conditioning projections, with MLX parameter names.

    Parameter names: ``decoder.*`` (transformers' ``decoder.model.decoder.*``), ``lm_heads.N``,
    ``enc_to_dec_proj`` and, for melody checkpoints, ``audio_enc_to_dec_proj``.
    """

    def __init__(self, config: MusicGenConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config.decoder
        self.melody = config.is_melody
        self.decoder = Decoder(cfg, cross_attention=not self.melody)
        self.lm_heads = [
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_codebooks)
        ]
        if config.has_enc_to_dec_proj:
            self.enc_to_dec_proj = nn.Linear(config.text_hidden_size, cfg.hidden_size)
        if config.has_audio_enc_to_dec_proj:
            self.audio_enc_to_dec_proj = nn.Linear(config.num_chroma, cfg.hidden_size)
        self._positions = mx.array(sinusoidal_positions(cfg.max_position_embeddings, cfg.hidden_size))
        self.fused = True  # one GEMM for the K heads (and q/k/v in every layer); see set_fused
        self._heads = Fusion()

    def set_compiled(self, compiled: bool) -> None:
        """Run one-token decoder steps through compiled (``mx.compile``) layer halves; on by default."""
        for layer in self.decoder.layers:
            layer.compiled = compiled

    def set_fused(self, fused: bool) -> None:
        """Fuse the projections that share an input (q/k/v, cross k/v, the K heads) into one GEMM each.

        On by default; the unfused path computes the same numbers one projection at a time.
        """
        self.fused = fused
        for layer in self.decoder.layers:
            for name in ("self_attn", "encoder_attn"):
                if name in layer:
                    layer[name].fused = fused

    # -- conditioning -------------------------------------------------------------------------
    def project_text(self, hidden: mx.array, mask: mx.array | None) -> mx.array:
        """T5 output [B, T, Dt] -> decoder width, padded positions zeroed (as the reference does)."""
        if "enc_to_dec_proj" in self:
            hidden = self.enc_to_dec_proj(hidden)
        if mask is not None:
            hidden = hidden * mask[..., None].astype(hidden.dtype)
        return hidden

    def project_chroma(self, chroma: mx.array) -> mx.array:
        """Melody: chroma [B, T, 12] -> [B, chroma_length, D], tiled when short, cut when long."""
        h = self.audio_enc_to_dec_proj(chroma) if "audio_enc_to_dec_proj" in self else chroma
        n = self.config.chroma_length
        if h.shape[1] < n:
            h = mx.tile(h, (1, int(math.ceil(n / h.shape[1])), 1))
        return h[:, :n]

    def cross_key_values(self, encoder_states: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Cross-attention K/V for every layer, computed once per generation."""
        return [layer.encoder_attn.key_values(encoder_states) for layer in self.decoder.layers]

    # -- forward ------------------------------------------------------------------------------
    def positions(self, start: int, n: int) -> mx.array:
        if start + n > self._positions.shape[0]:
            self._positions = mx.array(sinusoidal_positions(start + n, self.config.decoder.hidden_size))
        return self._positions[start : start + n]

    def __call__(
        self,
        codes: mx.array,
        cache: list[KVCache] | None = None,
        cross_kv: list[tuple[mx.array, mx.array]] | None = None,
        cross_mask: mx.array | None = None,
        prefix: mx.array | None = None,
    ) -> mx.array:
        """codes int [B, K, T] (delayed) -> logits [B, K, T, vocab] for those T positions.

        ``cross_kv``/``cross_mask`` (text models): from :meth:`cross_key_values` and a [B, S] mask.
        ``prefix`` (melody models, first call only): [B, P, D] states placed before the tokens.
        """
        _, k, t = codes.shape
        x = self.decoder.embed_tokens[0](codes[:, 0])
        for i in range(1, k):
            x = x + self.decoder.embed_tokens[i](codes[:, i])
        if prefix is not None:
            x = mx.concatenate([prefix.astype(x.dtype), x], axis=1)
        offset = cache[0].offset if cache is not None else 0
        n = x.shape[1]
        x = x + self.positions(offset, n).astype(x.dtype)
        mask = causal_mask(n, offset, x.dtype)
        xmask = padding_mask(cross_mask, x.dtype)
        for i, layer in enumerate(self.decoder.layers):
            x = layer(
                x,
                mask,
                cache[i] if cache is not None else None,
                cross_kv[i] if cross_kv is not None else None,
                xmask,
            )
        x = self.decoder.layer_norm(x[:, n - t :])
        return self.heads(x)

    def heads(self, x: mx.array) -> mx.array:
        """Final states [B, T, D] -> logits [B, K, T, vocab]."""
        if not self.fused:
            return mx.stack([head(x) for head in self.lm_heads], axis=1)
        b, t, _ = x.shape
        w = self._heads.weight(self.lm_heads)
        y = _weight_product(x, w) if t == 1 else x @ w.T  # [B, T, K * vocab]
        return y.reshape(b, t, len(self.lm_heads), -1).transpose(0, 2, 1, 3)

    def make_cache(self, capacity: int | None = None) -> list[KVCache]:
        """One self-attention cache per layer; ``capacity``: positions to preallocate."""
        return [KVCache(capacity) for _ in self.decoder.layers]

    # -- weights ------------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        config: MusicGenConfig,
        weights: dict[str, mx.array],
        dtype: mx.Dtype = mx.float32,
        source: str = "MusicGen checkpoint",
    ) -> MusicGenLM:
        """Build from a full checkpoint dict (transformers or MLX keys); strict names and shapes."""
        from livegen.weights import check_keys

        model = cls(config)
        ours = cls.sanitize(weights)
        expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
        check_keys(expected, ours, source)
        model.load_weights([(k, v.astype(dtype)) for k, v in ours.items()], strict=True)
        model._positions = model._positions.astype(dtype)
        model.eval()
        mx.eval(model.parameters())
        return model

    @staticmethod
    def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint keys of the decoder part -> MLX names; ``text_encoder.*``/``audio_encoder.*`` dropped.

        transformers ``decoder.model.decoder.X`` -> ``decoder.X``, ``decoder.lm_heads.N`` -> ``lm_heads.N``;
        ``enc_to_dec_proj``/``audio_enc_to_dec_proj`` and keys already in MLX form pass through.
        """
        out: dict[str, mx.array] = {}
        for key, value in weights.items():
            if key.startswith(("text_encoder.", "audio_encoder.")):
                continue
            if key.startswith(
                ("decoder.embed_tokens.", "decoder.layers.", "decoder.layer_norm.", "lm_heads.")
            ):
                out[key] = value
            elif key.startswith("decoder.model.decoder."):
                if ".embed_positions." in key:
                    continue  # sinusoidal buffer, recomputed
                out["decoder." + key[len("decoder.model.decoder.") :]] = value
            elif key.startswith("decoder.lm_heads."):
                out[key[len("decoder.") :]] = value
            elif key.startswith(("enc_to_dec_proj.", "audio_enc_to_dec_proj.")):
                out[key] = value
        return out
