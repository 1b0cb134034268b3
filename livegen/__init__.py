"""livegen: a real-time, MIDI/OSC-triggered generative-audio instrument (MLX).

Importing ``livegen`` loads an optimised BLAS before MLX on Linux (see ``livegen._blas``),
so import ``livegen`` (or any submodule) before ``mlx.core``.
"""

from livegen import _blas

_blas.preload()

__version__ = "0.1.0"
