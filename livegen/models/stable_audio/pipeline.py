"""StableAudioPipeline: text (+ optional init audio) -> stereo audio with Stable Audio Open in MLX.

Public methods take and return numpy arrays in the reference layout (``[B, C, L]``); all MLX work
happens on the calling thread, and every array is evaluated before it is handed back, so a
pipeline must be built and used on one thread (the daemon's generation thread).

    pipe = StableAudioPipeline.from_pretrained("stabilityai/stable-audio-open-small")
    audio = pipe.generate("128 BPM tech house drum loop", seconds=8.0, seed=1)   # [2, 352800]

First sound early: ``generate_stream`` (same parameters, plus ``chunk_latents``) samples the latents,
then yields the audio piece by piece from the VAE's exact streaming decoder
(``AudioAutoencoder.decode_chunks``), so playback can start after the first piece is decoded
instead of after the whole clip; the concatenated pieces equal ``generate``'s output::

    for piece in pipe.generate_stream("deep house chords", seconds=8.0, seed=1, chunk_latents=32):
        player.feed(piece)                      # [2, 65536] float32 pieces, the last one shorter
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from livegen.device import configure_mlx
from livegen.errors import Cancelled, WeightsError
from livegen.models.stable_audio import sampling as S
from livegen.models.stable_audio.conditioners import Conditioning
from livegen.models.stable_audio.config import StableAudioConfig
from livegen.models.stable_audio.convert import (
    DTYPES,
    StableAudioModel,
    ensure_converted,
    parse_config,
    resolve_t5,
)
from livegen.models.stable_audio.dit import guided_velocity
from livegen.weights import check_keys, load_weights

DEFAULTS = {
    "rf_denoiser": {"sampler": "pingpong", "steps": 8, "cfg_scale": 1.0, "init_strength": 0.5},
    "rectified_flow": {"sampler": "euler", "steps": 50, "cfg_scale": 7.0, "init_strength": 0.5},
    "v": {"sampler": "dpmpp-3m-sde", "steps": 100, "cfg_scale": 7.0, "init_strength": 0.5},
}


@dataclass
class PipelineConditioning:
    """Conditioning as numpy, comparable with the reference ``get_conditioning_inputs``."""

    cross_attn: np.ndarray  # [B, S, cond_dim]
    cross_attn_mask: np.ndarray  # [B, S] bool
    global_cond: np.ndarray | None  # [B, G]
    negative_cross_attn: np.ndarray | None = None
    negative_cross_attn_mask: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.cross_attn.shape[0])

    def to_mlx(self) -> Conditioning:
        def arr(a):
            return None if a is None else mx.array(a)

        return Conditioning(arr(self.cross_attn), arr(self.cross_attn_mask), arr(self.global_cond),
                            arr(self.negative_cross_attn), arr(self.negative_cross_attn_mask))


def _np(a: mx.array | None) -> np.ndarray | None:
    return None if a is None else np.array(a)


def _flat_layers(layers: Sequence) -> list:
    """The decoder's layers with each block (a module holding ``layers`` applied in sequence, not a
    residual unit) opened up: the steps a layer-by-layer decode evaluates one at a time."""
    from livegen.models.stable_audio.vae import DecoderBlock

    out: list = []
    for layer in layers:
        out.extend(_flat_layers(layer.layers) if isinstance(layer, DecoderBlock) else [layer])
    return out


class StableAudioPipeline:
    """Stable Audio Open small / 1.0. Build with :meth:`from_pretrained`."""

    def __init__(self, model: StableAudioModel, t5, config_dict: dict, *, dtype: mx.Dtype = mx.float32,
                 source: str = "", t5_source: str = ""):
        configure_mlx()  # BLAS threads for the CPU (once per process; see livegen.device)
        self.model = model
        self.t5 = t5
        self.config: StableAudioConfig = model.config
        self.model_config = config_dict
        self.dtype = dtype
        self.source = source
        self.t5_source = t5_source
        self.sample_rate = int(self.config.sample_rate)
        self.audio_channels = int(self.model.vae.config.io_channels)
        self.ratio = int(self.model.vae.downsampling_ratio)
        self.latent_dim = int(self.config.io_channels)
        self.objective = self.config.diffusion_objective
        self.defaults = dict(DEFAULTS[self.objective])
        # rf_denoiser (small) runs on the smallest latent length that covers the clip; other models
        # run on the trained window (sample_size) and the result is cut, as the reference does.
        self.variable_length = self.objective == "rf_denoiser"
        self.max_seconds = self.config.sample_size / self.sample_rate
        self.last_seed: int | None = None
        self._numbers = {c.id: c for c in self.config.number_conditioners}

    # ------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, t5: str | None = None, dtype: str | None = None,
                        *, allow_pickle: bool = False) -> StableAudioPipeline:
        """Load a converted MLX dir, or convert a hub snapshot / repo id / local checkpoint into the
        cache first (once; later loads use the converted dir). ``t5``: dir or repo id of the T5
        encoder (default: the one stored at conversion, google-t5/t5-base)."""
        from livegen.weights_check import require_intact

        local = Path(str(path_or_repo_id)).expanduser()
        if local.is_dir():  # a damaged converted folder must not be taken for a checkpoint to convert
            require_intact(local, "stable_audio", need_t5=t5 is None)
        directory = ensure_converted(path_or_repo_id, t5=t5, dtype=dtype, allow_pickle=allow_pickle)
        return cls.from_converted(directory, t5=t5)

    @classmethod
    def from_converted(cls, directory: str | Path, t5: str | None = None) -> StableAudioPipeline:
        from livegen.models.t5 import T5TextEncoder
        from livegen.weights_check import converted_problem

        directory = Path(directory)
        found = converted_problem(directory, "stable_audio", need_t5=t5 is None)
        if found is not None:
            raise WeightsError(f"{found[0]} {found[1]}; delete {directory} and convert the model again "
                               "(`livegen convert` with the original checkpoint).")
        manifest = json.loads((directory / "manifest.json").read_text())
        dtype = DTYPES.get(manifest.get("dtype", "float32"), mx.float32)
        config_dict = json.loads((directory / "config.json").read_text())
        config = parse_config(config_dict, str(directory / "config.json"))
        model = StableAudioModel(config)
        weights = load_weights(directory / "model.safetensors")
        check_keys(model.expected_shapes(), weights, str(directory / "model.safetensors"))
        model.load_weights(list(weights.items()), strict=True)
        model.eval()
        mx.eval(model.parameters())
        t5_encoder = None
        t5_source = ""
        if config.t5 is not None:
            if t5 is not None or not (directory / "t5").is_dir():
                t5_dir, info = resolve_t5(t5)
                t5_source = info.get("repo") or info.get("source", "")
            else:
                t5_dir, t5_source = directory / "t5", manifest.get("t5", "")
            try:
                t5_encoder = T5TextEncoder.from_dir(t5_dir, dtype=dtype)
            except ValueError as exc:
                raise WeightsError(f"could not load the T5 encoder from {t5_dir}: {exc}") from None
        source = manifest.get("repo") or manifest.get("source") or str(directory)
        return cls(model, t5_encoder, config_dict, dtype=dtype, source=source, t5_source=t5_source)

    # ------------------------------------------------------------------------- conditioning

    def _condition_mx(self, prompt: str | Sequence[str], seconds_total: float, seconds_start: float = 0.0,
                      negative_prompt: str | Sequence[str] | None = None) -> Conditioning:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        emb = mask = neg = neg_mask = None
        t5cfg = self.config.t5
        if t5cfg is not None:
            emb, mask = self.t5.encode(prompts, t5cfg.max_length)
            if negative_prompt is not None:
                negs = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
                if len(negs) != batch:
                    raise ValueError(f"{len(negs)} negative prompts for {batch} prompts")
                neg, neg_mask = self.t5.encode(negs, t5cfg.max_length)
        numbers = {}
        for cid in self._numbers:
            if cid == "seconds_start":
                numbers[cid] = float(seconds_start)
            elif cid == "seconds_total":
                numbers[cid] = float(seconds_total)
            else:
                raise ValueError(f"number conditioner {cid!r} is not supported by the pipeline")
        if emb is None:
            numbers = {k: [v] * batch for k, v in numbers.items()}
        cond = self.model.conditioner.assemble(emb, mask, numbers, neg, neg_mask)
        cast = self.dtype
        return Conditioning(
            cond.cross_attn.astype(cast), cond.cross_attn_mask,
            None if cond.global_cond is None else cond.global_cond.astype(cast),
            None if cond.negative_cross_attn is None else cond.negative_cross_attn.astype(cast),
            cond.negative_cross_attn_mask,
        )

    def condition(self, prompt: str | Sequence[str], seconds_total: float, seconds_start: float = 0.0,
                  negative_prompt: str | Sequence[str] | None = None) -> PipelineConditioning:
        """The DiT's conditioning for prompt(s) and timing, as numpy."""
        c = self._condition_mx(prompt, seconds_total, seconds_start, negative_prompt)
        mx.eval([a for a in (c.cross_attn, c.cross_attn_mask, c.global_cond, c.negative_cross_attn,
                             c.negative_cross_attn_mask) if a is not None])
        return PipelineConditioning(_np(c.cross_attn), _np(c.cross_attn_mask), _np(c.global_cond),
                                    _np(c.negative_cross_attn), _np(c.negative_cross_attn_mask))

    @staticmethod
    def _as_mx_cond(cond: PipelineConditioning | Conditioning) -> Conditioning:
        return cond.to_mlx() if isinstance(cond, PipelineConditioning) else cond

    # ------------------------------------------------------------------------- model calls

    def _denoiser(self, cond: Conditioning, cfg_scale: float, length: int, cancel=None):
        """``denoise(x, t)``; with ``cancel``, each DiT block's output is evaluated on its own and
        ``cancel()`` polled after it (raising ``livegen.errors.Cancelled``): a step is a few seconds
        on a loaded CPU, a block a small part of that, and the operations are the same."""
        guidance = self.model.dit.prepare_guidance_from(cond, cfg_scale=cfg_scale, length=length)
        mx.eval(guidance.prepared.arrays())
        dit = self.model.dit

        def between_blocks(h: mx.array) -> None:
            mx.eval(h)
            if cancel():
                raise Cancelled("generation cancelled during a sampler step")

        hook = between_blocks if cancel is not None else None

        def denoise(x: mx.array, t: float) -> mx.array:
            return guided_velocity(dit, x, mx.array([t], dtype=x.dtype), guidance, hook)

        return denoise

    def velocity(self, x: np.ndarray, t: float, cond: PipelineConditioning | Conditioning,
                 cfg_scale: float = 1.0) -> np.ndarray:
        """The DiT output (with CFG) for latents ``x`` [B, 64, L] at time ``t``; numpy [B, 64, L]."""
        xm = mx.array(np.asarray(x, dtype=np.float32)).transpose(0, 2, 1).astype(self.dtype)
        v = self._denoiser(self._as_mx_cond(cond), cfg_scale, xm.shape[1])(xm, float(t))
        return np.array(v.astype(mx.float32).transpose(0, 2, 1))

    def _encode_mx(self, audio: mx.array, key: mx.array | None = None) -> mx.array:
        """NLC audio -> NLC latents: the VAE mean, or a posterior sample when ``key`` is given (as the
        reference's VAE bottleneck does for init audio)."""
        vae = self.model.vae
        if key is None or vae.config.bottleneck != "vae":
            return vae.encode(audio)
        h = vae.encoder(audio)
        mean, scale = mx.split(h, 2, axis=-1)
        std = mx.logaddexp(scale, mx.zeros_like(scale)) + 1e-4  # softplus
        return mean + std * mx.random.normal(mean.shape, dtype=mean.dtype, key=key)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Audio [B, 2, N] -> latents [B, 64, N / ratio] (the VAE posterior mean)."""
        a = mx.array(np.asarray(audio, dtype=np.float32)).transpose(0, 2, 1).astype(self.dtype)
        lat = self._encode_mx(a)
        return np.array(lat.astype(mx.float32).transpose(0, 2, 1))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [B, 64, L] -> audio [B, 2, L * ratio]."""
        lat = mx.array(np.asarray(latents, dtype=np.float32)).transpose(0, 2, 1).astype(self.dtype)
        out = self.model.vae.decode(lat)
        return np.array(out.astype(mx.float32).transpose(0, 2, 1))

    # ------------------------------------------------------------------------- sampling

    def _sample_mx(self, cond: Conditioning, noise: mx.array, noise_source: S.NoiseSource, *, steps: int,
                   sampler: str, cfg_scale: float, init: mx.array | None = None,
                   init_strength: float | None = None, progress=None, cancel=None) -> mx.array:
        denoise = self._denoiser(cond, cfg_scale, noise.shape[1], cancel)
        hooks = {"progress": progress, "cancel": cancel}
        if self.objective == "v":
            sigma_max = S.V_SIGMA_MAX
            if init is not None:
                sigma_max = S.strength_to_sigma(init_strength if init_strength is not None else 1.0)
            return S.sample_v(denoise, noise, noise_source, steps=steps, sampler=sampler, init=init,
                              sigma_max=sigma_max, **hooks)
        sigma_max = 1.0 if init is None or init_strength is None else float(init_strength)
        return S.sample_rf(denoise, noise, noise_source, steps=steps, sampler=sampler, init=init,
                           sigma_max=sigma_max, **hooks)

    def sample(self, cond: PipelineConditioning | Conditioning, noise: np.ndarray, steps: int = 8,
               sampler: str = "pingpong", cfg_scale: float = 1.0, seed: int = 0, *,
               init_latents: np.ndarray | None = None, init_strength: float | None = None,
               noise_arrays: Sequence[np.ndarray] | None = None, progress=None, cancel=None) -> np.ndarray:
        """Run a sampler from ``noise`` [B, 64, L] (reference layout) and return latents [B, 64, L].

        Fresh noise (ping-pong, SDE samplers) comes from ``mx.random.key(seed)``, or, for parity
        tests, from ``noise_arrays`` (reference layout, one per draw)."""
        nm = mx.array(np.asarray(noise, dtype=np.float32)).transpose(0, 2, 1).astype(self.dtype)
        if noise_arrays is not None:
            source = S.NoiseSource(arrays=[np.ascontiguousarray(np.asarray(a).transpose(0, 2, 1))
                                           for a in noise_arrays])
        else:
            source = S.NoiseSource(mx.random.key(int(seed)))
        init = None
        if init_latents is not None:
            init = mx.array(np.asarray(init_latents, dtype=np.float32)).transpose(0, 2, 1).astype(self.dtype)
        out = self._sample_mx(self._as_mx_cond(cond), nm, source, steps=steps, sampler=sampler,
                              cfg_scale=cfg_scale, init=init, init_strength=init_strength,
                              progress=progress, cancel=cancel)
        return np.array(out.astype(mx.float32).transpose(0, 2, 1))

    def latent_length(self, seconds: float) -> int:
        """Latent frames the DiT runs on for a clip of ``seconds``."""
        if self.variable_length:
            return max(1, math.ceil(round(seconds * self.sample_rate) / self.ratio))
        return self.config.sample_size // self.ratio

    def _check_seconds(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if seconds > self.max_seconds + 1e-9:
            raise ValueError(f"seconds {seconds:g} exceeds this model's window of {self.max_seconds:.2f} s")

    def _generate_latents(self, prompt: str, seconds: float, steps: int | None, cfg_scale: float | None,
                          sampler: str | None, seed: int | None, negative_prompt: str | None,
                          init_audio: np.ndarray | None, init_strength: float | None,
                          progress, cancel) -> tuple[mx.array, int]:
        """Everything ``generate`` does before the VAE decode: (evaluated latents [1, L, 64], frames)."""
        self._check_seconds(seconds)
        steps = int(steps if steps is not None else self.defaults["steps"])
        cfg_scale = float(cfg_scale if cfg_scale is not None else self.defaults["cfg_scale"])
        sampler = sampler or self.defaults["sampler"]
        if seed is None:
            seed = secrets.randbelow(2**31)
        self.last_seed = int(seed)
        frames = int(round(seconds * self.sample_rate))
        length = self.latent_length(seconds)

        key = mx.random.key(int(seed))
        k_noise, k_steps, k_init = mx.random.split(key, 3)
        noise = mx.random.normal((1, length, self.latent_dim), key=k_noise).astype(self.dtype)
        init = None
        if init_audio is not None:
            strength = init_strength if init_strength is not None else self.defaults["init_strength"]
            if not 0 < strength <= 1:
                raise ValueError(f"init_strength must be in (0, 1], got {strength}")
            init_strength = float(strength)
            a = np.asarray(init_audio, dtype=np.float32)
            a = a[None] if a.ndim == 1 else a
            if a.shape[0] == 1 and self.audio_channels > 1:
                a = np.repeat(a, self.audio_channels, axis=0)
            a = a[: self.audio_channels]
            n = length * self.ratio
            a = a[:, :n] if a.shape[1] >= n else np.pad(a, ((0, 0), (0, n - a.shape[1])))
            init = self._encode_mx(mx.array(a.T[None]).astype(self.dtype), key=k_init)
        cond = self._condition_mx(prompt, seconds_total=seconds, negative_prompt=negative_prompt)
        latents = self._sample_mx(cond, noise, S.NoiseSource(k_steps), steps=steps, sampler=sampler,
                                  cfg_scale=cfg_scale, init=init, init_strength=init_strength,
                                  progress=progress, cancel=cancel)
        mx.eval(latents)
        return latents, frames

    def generate(self, prompt: str, seconds: float = 10.0, steps: int | None = None,
                 cfg_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                 negative_prompt: str | None = None, init_audio: np.ndarray | None = None,
                 init_strength: float | None = None, progress=None, cancel=None,
                 decode_progress=None) -> np.ndarray:
        """Audio float32 ``[channels, round(seconds * sample_rate)]`` at ``self.sample_rate``.

        ``None`` arguments take the checkpoint's defaults (``self.defaults``). ``init_audio``
        ([channels, frames] or [frames], at ``sample_rate``) is encoded and partially noised by
        ``init_strength`` in (0, 1] (1 = ignore it). The seed used is stored in ``last_seed``.
        ``cancel()`` is polled between sampler steps and between decode tiles (or decoder layers);
        ``decode_progress(done, total)`` follows the decode (see ``_decode_cancellable``)."""
        latents, frames = self._generate_latents(prompt, seconds, steps, cfg_scale, sampler, seed,
                                                 negative_prompt, init_audio, init_strength, progress, cancel)
        audio = self._decode_cancellable(latents, cancel, decode_progress)
        out = np.array(audio[0, :frames].astype(mx.float32).T)
        if out.shape[1] < frames:
            out = np.pad(out, ((0, 0), (0, frames - out.shape[1])))
        return np.ascontiguousarray(out)

    def decode_tile_latents(self, batch: int = 1) -> int | None:
        """Latent frames per VAE decode tile: ``LIVEGEN_DECODE_TILE_LATENTS`` if set (0: one shot),
        else the VAE's choice (``AudioAutoencoder.tile_latents``: cache-sized tiles on the CPU, one
        shot on a GPU and while audio is played from a Python callback)."""
        env = os.environ.get("LIVEGEN_DECODE_TILE_LATENTS", "").strip()
        if env:
            try:
                value = int(env)
            except ValueError:
                value = -1
            if value < 0:
                raise ValueError(f"LIVEGEN_DECODE_TILE_LATENTS must be a whole number >= 0, got {env!r}")
            return value or None
        return self.model.vae.tile_latents(batch)

    def _decode_cancellable(self, latents: mx.array, cancel=None, decode_progress=None) -> mx.array:
        """The VAE decode with ``cancel()`` polled between pieces of work (raising
        ``livegen.errors.Cancelled``) and ``decode_progress(done, total)`` after each: between tiles
        when the decode is tiled, else between the decoder's layers (the one-shot decode evaluated
        layer by layer: the same operations, so the same result). Either way no piece of work is
        longer than a tile or one layer, so a cancel (a stop, a shutdown) is seen within that."""
        vae = self.model.vae
        tile = self.decode_tile_latents(latents.shape[0])
        length = latents.shape[1]

        def check(done: int, total: int) -> None:
            if decode_progress is not None and done:
                decode_progress(done, total)
            if cancel is not None and cancel():
                raise Cancelled(f"generation cancelled while decoding ({done} of {total} done)")

        if tile is not None and length > tile:
            total = -(-length // tile)
            check(0, total)
            pieces = []
            for piece in vae.decode_chunks(latents, chunk=tile):
                pieces.append(piece)
                check(len(pieces), total)
            return mx.concatenate(pieces, axis=1)
        layers = _flat_layers(vae.decoder.layers)
        check(0, len(layers))
        x = latents
        for i, layer in enumerate(layers):
            x = layer(x)
            mx.eval(x)
            check(i + 1, len(layers))
        return x

    def generate_stream(self, prompt: str, seconds: float = 10.0, steps: int | None = None,
                        cfg_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                        negative_prompt: str | None = None, init_audio: np.ndarray | None = None,
                        init_strength: float | None = None, progress=None, cancel=None, *,
                        chunk_latents: int = 32) -> Iterator[np.ndarray]:
        """``generate`` that hands out audio as soon as the VAE has decoded it: samples the latents
        (same parameters, same seed handling), then yields float32 ``[channels, n]`` pieces of
        ``chunk_latents * ratio`` samples (the last one shorter) from the VAE's exact streaming
        decoder, cut to ``round(seconds * sample_rate)`` frames in all. Concatenated, the pieces
        equal ``generate(...)`` with the same arguments and seed (up to float rounding, ~1e-6).

        Nothing runs until the first ``next()``; iterate on the thread that owns the pipeline.
        ``cancel()`` is also polled between pieces (raising ``livegen.errors.Cancelled``)."""
        if chunk_latents < 1:
            raise ValueError(f"chunk_latents must be at least 1, got {chunk_latents}")
        latents, frames = self._generate_latents(prompt, seconds, steps, cfg_scale, sampler, seed,
                                                 negative_prompt, init_audio, init_strength, progress, cancel)
        emitted = 0
        for piece in self.model.vae.decode_chunks(latents, chunk=chunk_latents):
            if cancel is not None and cancel():
                raise Cancelled("generation cancelled while decoding")
            take = min(piece.shape[1], frames - emitted)
            if take > 0:
                emitted += take
                yield np.ascontiguousarray(np.array(piece[0, :take].astype(mx.float32)).T)
            if emitted >= frames:
                return
        if emitted < frames:  # a window shorter than the clip (not produced by latent_length)
            yield np.zeros((self.audio_channels, frames - emitted), dtype=np.float32)

    def warmup(self, seconds_list: Sequence[float] = (), steps: int = 1) -> None:
        """Run one tiny generation per clip length (fills caches, JIT kernels, allocator pools)."""
        for seconds in seconds_list or (min(1.0, self.max_seconds),):
            self.generate("warm-up", seconds=float(seconds), steps=steps, seed=0)
