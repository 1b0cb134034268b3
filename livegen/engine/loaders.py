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
