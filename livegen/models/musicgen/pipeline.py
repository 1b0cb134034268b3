"""MusicGen text-to-music (and melody / continuation) pipeline in MLX.

One object holds the T5 text encoder, the codebook decoder and the EnCodec codec of a
transformers-format MusicGen checkpoint (``facebook/musicgen-*``). Public methods take and return
numpy; every MLX array is made and evaluated on the calling thread, so create and use a pipeline
on one thread (the generation thread).

Generation follows ``MusicgenForConditionalGeneration.generate``: T5 prompt states projected by
``enc_to_dec_proj`` with padded positions zeroed; classifier-free guidance batches the prompt with
a null conditioning (zero states and an all-zero mask; melody: zero text and a chroma whose first
bin is 1) in one forward of batch 2; the delay pattern offsets codebook ``k`` by ``k`` steps (stereo:
codebook pairs L/R interleaved); the decoder starts from ``decoder_start_token_id``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from livegen.device import configure_mlx
from livegen.errors import Cancelled, WeightsError
from livegen.models.musicgen.config import MusicGenConfig
from livegen.models.musicgen.encodec import Encodec, EncodecConfig
from livegen.models.musicgen.encodec_stream import EncodecStreamDecoder
from livegen.models.musicgen.sampling import (
    Conditioning,
    build_delay_pattern_mask,
    channel_codebooks,
    decode_steps,
    undelay,
)
from livegen.models.musicgen.transformer import MusicGenLM
from livegen.models.t5 import T5Config, T5Encoder

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]

# frames per block of the cancellable EnCodec decode (1 s at 50 Hz): cancel is polled between blocks
DECODE_BLOCK_FRAMES = 50

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def as_dtype(dtype: str | mx.Dtype | None) -> mx.Dtype:
    if dtype is None:
        return mx.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    return dtype


def dtype_name(dtype: mx.Dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


def _load_tokenizer(path: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise WeightsError(
            f"could not load the T5 tokenizer from {path} ({' '.join(str(exc).split())})."
        ) from None


def _strip(weights: dict[str, mx.array], prefix: str) -> dict[str, mx.array]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _load_strict(model, weights: dict[str, mx.array], dtype: mx.Dtype, source: str) -> None:
    from livegen.weights import check_keys

    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    check_keys(expected, weights, source)
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())


class MusicGenPipeline:
    """Text (+ melody / audio prompt) -> 32 kHz audio with a MusicGen checkpoint."""

    def __init__(
        self,
        config: MusicGenConfig,
        lm: MusicGenLM,
        text_encoder: T5Encoder,
        tokenizer: Any,
        codec: Encodec,
        dtype: mx.Dtype = mx.float32,
    ) -> None:
        configure_mlx()  # BLAS threads for the CPU (once per process; see livegen.device)
        self.config = config
        self.lm = lm
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.codec = codec
        self.dtype = dtype
        self.sample_rate = config.sampling_rate
        self.frame_rate = config.frame_rate
        self.hop_length = codec.config.hop_length
        self.audio_channels = config.audio_channels
        self.last_seed: int | None = None

    @property
    def max_seconds(self) -> float:
        """Longest clip within the decoder's trained positions (the sinusoids themselves extend further)."""
        cfg = self.config
        used = channel_codebooks(cfg.num_codebooks, self.audio_channels) + (
            cfg.chroma_length if cfg.is_melody else 0
        )
        return (cfg.decoder.max_position_embeddings - used) / self.frame_rate

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        config: MusicGenConfig,
        weights: dict[str, mx.array],
        tokenizer: Any,
        dtype: str | mx.Dtype | None = None,
        converted: bool = False,
        source: str = "MusicGen checkpoint",
    ) -> MusicGenPipeline:
        """Build from a checkpoint dict: transformers keys, or (``converted``) our MLX keys.

        Names and shapes are checked strictly for all three parts. The codec stays float32.
        """
        dt = as_dtype(dtype)
        lm = MusicGenLM.from_weights(config, weights, dtype=dt, source=source)
        t5 = T5Encoder(T5Config.from_dict(config.text_encoder))
        _load_strict(t5, T5Encoder.sanitize(weights, prefix="text_encoder."), dt, f"{source} (text_encoder)")
        codec = Encodec(EncodecConfig.from_dict(config.audio_encoder))
        audio = _strip(weights, "audio_encoder.")
        if not converted:
            audio = Encodec.sanitize(audio)
        _load_strict(codec, audio, mx.float32, f"{source} (audio_encoder)")
        return cls(config, lm, t5, tokenizer, codec, dt)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str, dtype: str | mx.Dtype | None = None, allow_pickle: bool = False
    ) -> MusicGenPipeline:
        """A Hugging Face repo id / short name / snapshot dir, or a converted dir.

        A transformers-format checkpoint is converted once into the livegen cache
        (``livegen.weights.converted_dir``) and loaded from there; ``.bin`` weights need
        ``allow_pickle=True``.
        """
        from livegen.models.musicgen.convert import convert, is_converted
        from livegen.weights import load_weights
        from livegen.weights_check import converted_problem, require_intact

        dt = as_dtype(dtype)
        path = Path(str(path_or_repo_id)).expanduser()
        if path.is_dir():  # a damaged converted folder must not be taken for a checkpoint to convert
            require_intact(path, "musicgen")
        if not (path.is_dir() and is_converted(path)):
            path = convert(str(path_or_repo_id), dtype=dtype_name(dt), allow_pickle=allow_pickle)
        found = converted_problem(path, "musicgen")
        if found is not None:
            raise WeightsError(f"{found[0]} {found[1]}; delete {path} and convert the model again "
                               "(`livegen convert` with the original checkpoint).")
        config_data = json.loads((path / "config.json").read_text())
        try:
            config = MusicGenConfig.from_dict(config_data, config_data.get("generation_config"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise WeightsError(f"{path / 'config.json'} describes a MusicGen model livegen cannot run "
                               f"({' '.join(str(exc).split())}).") from None
        weights = load_weights(path)
        return cls.from_weights(config, weights, _load_tokenizer(path), dt, converted=True, source=str(path))

    # -- building blocks ---------------------------------------------------------------------
    def _text(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        enc = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=512, return_tensors="np"
        )
        ids = mx.array(np.asarray(enc["input_ids"], dtype=np.int32))
        mask = mx.array(np.asarray(enc["attention_mask"], dtype=np.int32))
        hidden = self.text_encoder(ids, mask)
        return self.lm.project_text(hidden.astype(self.dtype), mask), mask

    def encode_text(self, prompts: str | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt states after ``enc_to_dec_proj`` (padded positions zero) [B, T, D] and mask [B, T]."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states, mask = self._text(prompts)
        mx.eval(states, mask)
        return np.array(states.astype(mx.float32)), np.array(mask)

    def melody_chroma(self, melody: tuple[np.ndarray, int] | np.ndarray, batch: int = 1) -> np.ndarray:
        """``(audio [C, N] or [N], rate)`` -> one-hot chroma [batch, T, 12] (the melody conditioning)."""
        from livegen.models.musicgen.chroma import chroma_features

        if not self.config.is_melody:
            raise ValueError("this MusicGen model has no melody conditioning (use a musicgen-melody model)")
        if isinstance(melody, tuple):
            audio, rate = melody
        else:
            audio, rate = melody, self.sample_rate
        chroma = chroma_features(
            np.asarray(audio, dtype=np.float32), int(rate), n_chroma=self.config.num_chroma
        )
        if chroma.shape[0] == 1 and batch > 1:
            chroma = np.repeat(chroma, batch, axis=0)
        return chroma

    def _conditioning(self, prompts: list[str], guidance_scale: float, melody: Any = None) -> Conditioning:
        guided = guidance_scale is not None and guidance_scale > 1
        text, mask = self._text(prompts)
        if not self.config.is_melody:
            if melody is not None:
                raise ValueError(
                    "this MusicGen model has no melody conditioning (use a musicgen-melody model)"
                )
            if guided:
                text = mx.concatenate([text, mx.zeros_like(text)], axis=0)
                mask = mx.concatenate([mask, mx.zeros_like(mask)], axis=0)
            return Conditioning(cross_kv=self.lm.cross_key_values(text), cross_mask=mask)
        b, nc = len(prompts), self.config.num_chroma
        chroma = self.melody_chroma(melody, batch=b) if melody is not None else None
        # the reference's null melody: zeros with the first chroma bin set (also used without a melody)
        null = np.zeros((b, 1 if chroma is None else chroma.shape[1], nc), dtype=np.float32)
        null[..., 0] = 1.0
        chroma = mx.array(null if chroma is None else chroma)
        null = mx.array(null)
        if guided:
            text = mx.concatenate([text, mx.zeros_like(text)], axis=0)
            chroma = mx.concatenate([chroma, null], axis=0)
        audio_states = self.lm.project_chroma(chroma.astype(self.dtype))
        return Conditioning(prefix=mx.concatenate([audio_states, text.astype(self.dtype)], axis=1))

    def logits(self, codes: np.ndarray, prompts: str | list[str], melody: Any = None) -> np.ndarray:
        """Decoder logits for given (delayed) codes [B, K, T] -> [B, K, T, vocab], no guidance."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cond = self._conditioning(prompts, 1.0, melody)
        out = self.lm(
            mx.array(np.asarray(codes, dtype=np.int32)),
            cross_kv=cond.cross_kv,
            cross_mask=cond.cross_mask,
            prefix=cond.prefix,
        )
        return np.array(out.astype(mx.float32))

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Undelayed codes [B, K, T] -> audio [B, C, T * hop] (stereo: even codebooks left, odd right)."""
        c = mx.array(np.asarray(codes, dtype=np.int32))
        if self.audio_channels == 2:
            audio = mx.concatenate([self.codec.decode(c[:, 0::2]), self.codec.decode(c[:, 1::2])], axis=1)
        else:
            audio = self.codec.decode(c)
        return np.array(audio.astype(mx.float32))

    def _decode_cancellable(self, codes: np.ndarray, cancel: Cancel | None = None,
                            decode_progress: Progress | None = None) -> np.ndarray:
        """``decode_codes`` with ``cancel()`` polled between blocks of ``DECODE_BLOCK_FRAMES`` frames
        (raising ``livegen.errors.Cancelled``) and ``decode_progress(done, total)`` after each:
        codes longer than one block go through the streaming EnCodec decoder (equal to the one-shot
        decode to float rounding), so no piece of work is longer than a block."""
        frames = codes.shape[2]
        total = max(1, -(-frames // DECODE_BLOCK_FRAMES))

        def check(done: int) -> None:
            if decode_progress is not None and done:
                decode_progress(done, total)
            if cancel is not None and cancel():
                raise Cancelled(f"generation cancelled while decoding ({done} of {total} blocks done)")

        check(0)
        if total == 1:
            audio = self.decode_codes(codes)
            check(1)
            return audio
        c = mx.array(np.asarray(codes, dtype=np.int32))
        parts = [c[:, 0::2], c[:, 1::2]] if self.audio_channels == 2 else [c]
        decoders = [EncodecStreamDecoder(self.codec) for _ in parts]
        out: list[list[np.ndarray]] = [[] for _ in parts]
        for block in range(total):
            lo, hi = block * DECODE_BLOCK_FRAMES, min(frames, (block + 1) * DECODE_BLOCK_FRAMES)
            for d, part, pieces in zip(decoders, parts, out, strict=True):
                pieces.append(np.array(d.push(part[:, :, lo:hi]).astype(mx.float32)))
                if hi == frames:
                    pieces.append(np.array(d.flush().astype(mx.float32)))
            check(block + 1)
        return np.concatenate([np.concatenate(p, axis=2) for p in out], axis=1)

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        """Audio [B, C, N] (or [C, N]) at 32 kHz -> codes [B, K, ceil(N / hop)].

        A mono clip given to a stereo model is used for both sides; a stereo clip given to a
        mono model is mixed down.
        """
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"audio must be [B, C, N] or [C, N], got shape {x.shape}")
        want = self.audio_channels
        if x.shape[1] != want:
            x = np.repeat(x[:, :1], 2, axis=1) if want == 2 and x.shape[1] == 1 else x.mean(1, keepdims=True)
            if x.shape[1] != want:
                raise ValueError(f"cannot use {audio.shape[-2]}-channel audio with a {want}-channel model")
        k = self.config.num_codebooks // want
        if want == 2:
            left = self.codec.encode(mx.array(x[:, :1]), num_codebooks=k)
            right = self.codec.encode(mx.array(x[:, 1:]), num_codebooks=k)
            codes = mx.stack([left, right], axis=2).reshape(x.shape[0], 2 * k, -1)
        else:
            codes = self.codec.encode(mx.array(x), num_codebooks=k)
        return np.array(codes).astype(np.int64)

    # -- generation --------------------------------------------------------------------------
    def _frames(self, seconds: float | None, num_frames: int | None) -> int:
        if num_frames is None:
            if seconds is None or not seconds > 0:
                raise ValueError(f"seconds must be positive, got {seconds}")
            num_frames = int(round(seconds * self.frame_rate))
        if num_frames < 1:
            raise ValueError(f"need at least one frame, got {num_frames}")
        return num_frames

    def _prompt_codes(self, audio_prompt: np.ndarray | None, batch: int) -> np.ndarray | None:
        if audio_prompt is None:
            return None
        codes = self.encode_audio(audio_prompt)
        if codes.shape[0] == 1 and batch > 1:
            codes = np.repeat(codes, batch, axis=0)
        return codes

    def _steps(
        self,
        prompts: list[str],
        num_frames: int,
        prompt_codes: np.ndarray | None,
        *,
        top_k: int,
        top_p: float,
        temperature: float,
        guidance_scale: float,
        seed: int | None,
        melody: Any,
        cancel: Cancel | None,
    ) -> tuple[Iterator[tuple[int, np.ndarray]], int, int]:
        """(step iterator, first position, total positions) for ``num_frames`` new frames."""
        b, k = len(prompts), self.config.num_codebooks
        start_id = self.config.decoder_start_token_id
        bos = np.full((b, k, 1), start_id, dtype=np.int64)
        ids = bos if prompt_codes is None else np.concatenate([bos, prompt_codes], axis=2)
        ch = channel_codebooks(k, self.audio_channels)
        total_frames = num_frames + (0 if prompt_codes is None else prompt_codes.shape[2])
        max_length = max(total_frames + ch, 2 * ch - 1)  # shorter: the reference drops the delay pattern
        start_ids, pattern = build_delay_pattern_mask(ids, start_id, max_length, self.audio_channels)
        seed = secrets.randbits(31) if seed is None else int(seed)
        self.last_seed = seed
        cond = self._conditioning(prompts, guidance_scale, melody)
        steps = decode_steps(
            self.lm,
            pattern,
            start_ids.shape[-1],
            cond,
            guidance_scale=guidance_scale,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            key=mx.random.key(seed),
            cancel=cancel,
        )
        return steps, start_ids.shape[-1], max_length

    def generate_tokens(
        self,
        prompt: str | list[str],
        seconds: float | None = 5.0,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        melody: Any = None,
        audio_prompt: np.ndarray | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        num_frames: int | None = None,
    ) -> np.ndarray:
        """Undelayed codes [B, K, P + T]: the audio prompt's P frames (if any) then T new frames."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = self._frames(seconds, num_frames)
        prompt_codes = self._prompt_codes(audio_prompt, len(prompts))
        steps, start, total = self._steps(
            prompts, n, prompt_codes, top_k=top_k, top_p=top_p, temperature=temperature,
            guidance_scale=guidance_scale, seed=seed, melody=melody, cancel=cancel,
        )  # fmt: skip
        seq = None
        for pos, filled in steps:
            seq = filled
            if progress is not None:
                progress(pos - start + 1, total - start)
        frames = n + (0 if prompt_codes is None else prompt_codes.shape[2])
        return undelay(seq, self.audio_channels, frames)

    def warmup(self, seconds_list: Sequence[float] = ()) -> None:
        """Run one short generation so the first real one is as fast as the next.

        It traces the compiled one-token step (and builds its kernels), fills the allocator pools
        and runs the codec once. The compiled parts have fixed shapes that do not depend on the
        clip length, so one short clip serves every length in ``seconds_list``.
        """
        del seconds_list  # one warm-up covers every length (see above)
        self.generate("warm-up", seconds=min(0.25, self.max_seconds), seed=0)

    def generate(
        self,
        prompt: str,
        seconds: float = 5.0,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        melody: Any = None,
        audio_prompt: np.ndarray | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        decode_progress: Progress | None = None,
    ) -> np.ndarray:
        """One clip, float32 [C, N] at 32 kHz, N = round(seconds * 50) * 640.

        ``melody``: ``(audio [C, N], rate)`` for melody models. ``audio_prompt``: audio [C, N] at
        32 kHz to continue; its codes are the decoder's prefix and only the continuation
        (``seconds`` long) is returned. ``cancel()`` is polled before each decoding step and, when
        given, between the EnCodec decode's blocks (``_decode_cancellable``).
        """
        codes = self.generate_tokens(
            prompt, seconds, top_k=top_k, top_p=top_p, temperature=temperature, guidance_scale=guidance_scale,
            seed=seed, melody=melody, audio_prompt=audio_prompt, progress=progress, cancel=cancel,
        )  # fmt: skip
        if cancel is None and decode_progress is None:
            audio = self.decode_codes(codes)[0]
        else:
            audio = self._decode_cancellable(codes, cancel, decode_progress)[0]
        skip = codes.shape[2] - self._frames(seconds, None)
        return np.ascontiguousarray(audio[:, skip * self.hop_length :])

    def generate_stream(
        self,
        prompt: str,
        seconds: float = 8.0,
        chunk_seconds: float = 0.5,
        top_k: int = 250,
        top_p: float = 0.0,
        temperature: float = 1.0,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        melody: Any = None,
        audio_prompt: np.ndarray | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield float32 [C, n] pieces as frames complete; their concatenation equals ``generate``.

        Frames are decoded in blocks of about ``chunk_seconds`` with the streaming EnCodec decoder.
        """
        n = self._frames(seconds, None)
        chunk = max(1, int(round(chunk_seconds * self.frame_rate)))
        prompt_codes = self._prompt_codes(audio_prompt, 1)
        steps, start, total = self._steps(
            [prompt], n, prompt_codes, top_k=top_k, top_p=top_p, temperature=temperature,
            guidance_scale=guidance_scale, seed=seed, melody=melody, cancel=cancel,
        )  # fmt: skip
        ch = channel_codebooks(self.config.num_codebooks, self.audio_channels)
        p = 0 if prompt_codes is None else prompt_codes.shape[2]
        frames = n + p
        decoders = [EncodecStreamDecoder(self.codec) for _ in range(self.audio_channels)]
        state = {"pushed": 0, "skip": p * self.hop_length}

        def emit(seq: np.ndarray, upto: int, final: bool) -> np.ndarray | None:
            if cancel is not None and cancel():
                raise Cancelled("generation cancelled while decoding")
            pieces = []
            if upto > state["pushed"]:
                codes = undelay(seq, self.audio_channels, upto)[:, :, state["pushed"] : upto]
                c = mx.array(codes.astype(np.int32))
                if self.audio_channels == 2:
                    pieces = [decoders[0].push(c[:, 0::2]), decoders[1].push(c[:, 1::2])]
                else:
                    pieces = [decoders[0].push(c)]
                state["pushed"] = upto
            if final:
                tails = [d.flush() for d in decoders]
                pieces = (
                    tails
                    if not pieces
                    else [mx.concatenate([a, t], axis=2) for a, t in zip(pieces, tails, strict=True)]
                )
            if not pieces:
                return None
            audio = np.array(mx.concatenate(pieces, axis=1)[0].astype(mx.float32))
            cut = min(state["skip"], audio.shape[1])
            state["skip"] -= cut
            audio = audio[:, cut:]
            return audio if audio.shape[1] else None

        seq = None
        for pos, seq in steps:
            if progress is not None:
                progress(pos - start + 1, total - start)
            done = min(frames, pos - ch + 1)
            if done - state["pushed"] >= chunk:
                out = emit(seq, done, final=False)
                if out is not None:
                    yield out
        out = emit(seq, frames, final=True)
        if out is not None:
            yield out
