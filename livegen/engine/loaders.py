"""What the daemon needs from the settings before it starts the generation thread: zero-argument
engine loaders (called on that thread), the engines' extra keyword arguments, and a check that the
audio output can open (before the slow model load)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livegen.settings import Settings


def build_loaders(settings: Settings) -> dict[str, Callable[[], Any]]:
    """Zero-argument engine loaders (run on the worker thread), one per configured model."""
    loaders: dict[str, Callable[[], Any]] = {}
    for name, m in settings.models.items():
        if m.engine == "stable-audio":

            def load(m=m):  # noqa: ANN202
                from livegen.models.stable_audio import StableAudioPipeline

                return StableAudioPipeline.from_pretrained(m.path, t5=m.t5)
        else:

            def load(m=m):  # noqa: ANN202
                from livegen.models.musicgen import MusicGenPipeline

                return MusicGenPipeline.from_pretrained(m.path)

        loaders[name] = load
    return loaders


def engine_defaults(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per-model keyword arguments the engines take besides the request (MusicGen sampling)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in settings.models.items():
        if m.engine == "musicgen":
            out[name] = {"top_k": m.top_k, "top_p": m.top_p, "temperature": m.temperature}
    return out


def worker_options(settings: Settings, render_nice: int | None = None) -> Any:
    """The generation thread's options as the daemon sets them (the daemon, ``livegen render``
    and the Ray replicas all build them here, so their clips are the same samples);
    ``render_nice`` overrides the thread's priority drop (0 where no audio thread needs the CPU).

    ``python_audio`` decides the BLAS thread count (livegen.device.configure_mlx), and the thread
    count changes the last bits of a clip (GEMM sums in another order: ~1e-5 apart, measured), so
    it follows the daemon's audio settings even where no audio plays; on another machine the core
    count (or ``LIVEGEN_CPU_THREADS``) has to match too for sample-exact clips."""
    from livegen.engine.worker import RENDER_NICE, WorkerOptions

    s = settings
    return WorkerOptions(queue_size=s.engine.queue_size, warmup_seconds=tuple(s.engine.warmup_seconds),
                         finish_running_on_shutdown=s.engine.finish_running_on_shutdown,
                         fade_seconds=s.audio.fade_ms / 1000.0, default_model=s.default_model,
                         model_kwargs=engine_defaults(s), levels=s.levels,
                         render_nice=RENDER_NICE if render_nice is None else render_nice,
                         # full speed unless the audio callback is Python (livegen.device.configure_mlx)
                         python_audio=s.audio.enabled and getattr(s.audio, "backend", "python") == "python")


def check_audio_device(settings: Settings) -> None:
    """Raise :class:`OSError` with a sentence when the configured output cannot be opened."""
    import sounddevice as sd

    a = settings.audio
    try:
        sd.check_output_settings(device=a.device, channels=a.channels, samplerate=a.sample_rate,
                                 dtype="float32")
    except Exception as exc:  # sounddevice.PortAudioError, ValueError for a bad device
        raise OSError(f"cannot open the audio output {a.device if a.device is not None else '(default)'}: "
                      f"{exc} (see `livegen devices`; on Linux without sound hardware start "
                      "bin/livegen-jack-dummy)") from None
