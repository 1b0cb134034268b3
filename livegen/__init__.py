"""livegen: a real-time, MIDI/OSC-triggered generative-audio instrument (MLX).

Importing ``livegen`` (or its pure modules: settings, mapping, request, control.osc, ...) loads
neither MLX nor a BLAS. The optimised BLAS is loaded by an explicit call,
:func:`livegen._blas.preload`, which the entry points that lead to MLX make before ``mlx.core``
is imported: the command line (``livegen.cli.main``), the ``livegen.models`` package (the
engines; so ``from livegen.models.stable_audio import StableAudioPipeline`` gets the fast BLAS)
and ``livegen.device``. Code that imports ``mlx.core`` itself first should call
``livegen._blas.preload()`` before it.
"""

__version__ = "0.1.0"
