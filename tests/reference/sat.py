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


def load() -> types.SimpleNamespace:
    """Return the reference modules; raises ImportError when they are not installed."""
    import torch  # noqa: F401

    _install_k_diffusion_stub()
    factory = importlib.import_module("stable_audio_tools.models.factory")
    sampling = importlib.import_module("stable_audio_tools.inference.sampling")
    return types.SimpleNamespace(factory=factory, sampling=sampling)
