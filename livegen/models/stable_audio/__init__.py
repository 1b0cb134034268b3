"""Stable Audio Open (small and 1.0) in MLX.

``StableAudioPipeline`` (``livegen.models.stable_audio.pipeline``) is the entry point; it is
imported lazily so that importing one component module (e.g. ``vae``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["StableAudioPipeline"]

if TYPE_CHECKING:
    from livegen.models.stable_audio.pipeline import StableAudioPipeline


def __getattr__(name: str) -> Any:
    if name == "StableAudioPipeline":
        from livegen.models.stable_audio.pipeline import StableAudioPipeline

        return StableAudioPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
