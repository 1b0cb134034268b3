"""Model ports (MLX): the shared T5 text encoder, Stable Audio Open and MusicGen."""
