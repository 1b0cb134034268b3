"""Exceptions shared across livegen.

Every message is one sentence the user can act on; callers print it without a traceback.
"""

from __future__ import annotations


class LivegenError(Exception):
    """Base class of the errors livegen raises on purpose."""


class WeightsError(LivegenError):
    """A checkpoint could not be found, downloaded, read or matched to the model."""


class ModelTypeError(WeightsError):
    """A checkpoint is not of a model type livegen can run."""


class Cancelled(LivegenError):
    """A generation was cancelled through its ``cancel()`` hook."""
