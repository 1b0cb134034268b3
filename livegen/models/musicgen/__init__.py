"""MusicGen (text-to-music, melody, continuation) in MLX: see ``pipeline.MusicGenPipeline``."""

from livegen.models.musicgen.pipeline import MusicGenPipeline

__all__ = ["MusicGenPipeline"]
