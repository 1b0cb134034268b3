"""Import stable-audio-tools (and the parts of k-diffusion it samples with) offline.

``k_diffusion/__init__.py`` imports its training stack (torchvision, clip, kornia, skimage)
which the sampling path never calls. Instead of editing the installed package we register
a bare package module that points at the real directory, so that only the submodules the
reference sampler needs (``sampling``, ``external``, ``utils``) are executed, unmodified.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _install_torchvision_stand_in() -> list[str]:
    """``k_diffusion.utils`` imports ``torchvision.transforms.functional`` at module level
    for two PIL image helpers that sampling never calls. PyPI's torchvision does not load
    beside the CPU torch, so give the test process an empty stand-in whose functions fail
    loudly if anything ever does call them."""
    try:
        import torchvision.transforms.functional  # noqa: F401
        return []
    except Exception:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]

    def _unavailable(*_a, **_k):
        raise RuntimeError("torchvision stand-in: image helpers are not available in parity tests")

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.to_tensor = _unavailable
    fn.to_pil_image = _unavailable
    tv.transforms = tr
    tr.functional = fn
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                        "torchvision.transforms.functional": fn})
    return ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]


def _install_k_diffusion_stub() -> None:
    if "k_diffusion" in sys.modules:
        return
    stand_ins = _install_torchvision_stand_in()
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    sys.modules["k_diffusion"] = pkg
    try:
        for name in ("utils", "sampling", "external"):
            setattr(pkg, name, importlib.import_module(f"k_diffusion.{name}"))
    finally:
        # The stand-in served only k_diffusion.utils' import; keep it out of everyone
        # else's way (transformers probes for torchvision).
        for name in stand_ins:
            sys.modules.pop(name, None)


def _unavailable(*_a, **_k):
    raise RuntimeError("torchaudio stand-in: resampling/loudness are not available in parity tests")


_NEEDS_TORCHAUDIO = (
    "stable_audio_tools.data.utils",
    "stable_audio_tools.inference.utils",
    "stable_audio_tools.models.pretransforms",
    "stable_audio_tools.models.autoencoders",
    "stable_audio_tools.models.conditioners",
    "stable_audio_tools.models.diffusion",
)


def install_torchaudio_stand_in() -> None:
    """``stable_audio_tools.models`` imports ``torchaudio.transforms`` at module level for
    resampling helpers that model construction and the forward passes never call. PyPI's
    torchaudio is a CUDA build that does not load beside the CPU torch, so when torchaudio cannot
    be imported, import those modules against a stand-in whose transforms fail loudly if anything
    does call them, then take the stand-in out of ``sys.modules`` again (transformers probes for
    torchaudio)."""
    if all(name in sys.modules for name in _NEEDS_TORCHAUDIO):
        return
    try:
        import torchaudio  # noqa: F401
        return
    except Exception:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchaudio"]:
            del sys.modules[name]
    import transformers  # noqa: F401  (import before the stand-in exists: it probes for torchaudio)

    ta = types.ModuleType("torchaudio")
    tr = types.ModuleType("torchaudio.transforms")
    for name in ("Resample", "Loudness", "MelSpectrogram", "Spectrogram"):
        setattr(tr, name, _unavailable)
    ta.transforms = tr
    ta.load = ta.save = _unavailable
    sys.modules.update({"torchaudio": ta, "torchaudio.transforms": tr})
    try:
        for name in _NEEDS_TORCHAUDIO:
            importlib.import_module(name)
    finally:
        sys.modules.pop("torchaudio", None)
        sys.modules.pop("torchaudio.transforms", None)


def load() -> types.SimpleNamespace:
    """Return the reference modules; raises ImportError when they are not installed."""
    import torch  # noqa: F401

    _install_k_diffusion_stub()
    install_torchaudio_stand_in()
    factory = importlib.import_module("stable_audio_tools.models.factory")
    sampling = importlib.import_module("stable_audio_tools.inference.sampling")
    return types.SimpleNamespace(factory=factory, sampling=sampling)
