"""livegen.device.configure_mlx's three profiles (issue 11): batch, the daemon with the audio
callback in C (rtmixer) and the daemon with the Python callback."""

from __future__ import annotations

import mlx.core as mx
import pytest

from livegen import _blas, device

cpu_only = pytest.mark.skipif(mx.is_available(mx.gpu), reason="the CPU settings are off on a GPU")


@cpu_only
@pytest.mark.parametrize("kwargs, profile, large_cache, tiles", [
    ({}, "batch", True, True),
    ({"daemon": True}, "daemon", True, True),
    ({"realtime": True}, "daemon-python-audio", False, False),
])
def test_profiles(monkeypatch, kwargs, profile, large_cache, tiles):
    from livegen.models.stable_audio.vae import AudioAutoencoder, AutoencoderConfig
    from tests.reference.sa_checkpoint import shrink_config

    monkeypatch.delenv("LIVEGEN_CPU_THREADS", raising=False)
    monkeypatch.delenv("LIVEGEN_MLX_CACHE_MB", raising=False)
    monkeypatch.setattr(device, "_cpu_count", lambda: 4)
    applied = device.configure_mlx(force=True, **kwargs)
    try:
        assert applied["profile"] == profile == device.profile()
        assert device.realtime() is (profile == "daemon-python-audio")
        assert (applied["cache_limit"] == device.default_cache_limit()) is large_cache
        if _blas.status()[0]:  # an optimised BLAS is preloaded: its thread count was set
            assert applied["blas_threads"] == (4 if profile == "batch" else 3)  # the daemon leaves a core
        cfg = AutoencoderConfig.from_dict(shrink_config("small")["model"]["pretransform"]["config"])
        assert (AudioAutoencoder(cfg).tile_latents() is not None) is tiles
    finally:
        monkeypatch.undo()  # the real core count again, then the batch settings back
        device.configure_mlx(force=True)
