"""Model ports (MLX): the shared T5 text encoder, Stable Audio Open and MusicGen.

Importing this package loads the optimised BLAS (``livegen._blas.preload``) before any of its
modules imports ``mlx.core``; on Linux that makes MLX's GEMMs run in OpenBLAS.
"""

from livegen import _blas

_blas.preload()
