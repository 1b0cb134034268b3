"""How far the full-size Oobleck decode is from the exact answer, livegen vs the reference.

With random weights the full-size Stable Audio VAE decoder is a deep, badly conditioned network
(activations in the hundreds), so two fp32 implementations differ by more than at the tiny test
sizes. This measures each fp32 result against the reference decoder run in float64 on the same
random checkpoint and latents: if livegen's distance to float64 is of the order of the
reference's own, the fp32 difference between them is rounding, not a formulation error.

    python bench/vae_precision.py [--latents 8] [--seed 0]

Prints max |a - b| / max |b| for livegen (matmul convolutions, and MLX's native ones) and the
reference in fp32, each against the float64 reference, and livegen against the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG = Path("/work/shared/reference/stable-audio-open-small.model_config.json")


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def measure(latents: int, seed: int, config: Path = CONFIG) -> dict[str, float]:
    import importlib

    import mlx.core as mx
    import torch

    import livegen  # noqa: F401  (optimised BLAS before MLX)
    from livegen.models import conv
    from livegen.models.stable_audio.vae import AudioAutoencoder
    from tests.reference import sat
    from tests.reference.sa_checkpoint import randomize_

    sat.load()
    module = importlib.import_module("stable_audio_tools.models.autoencoders")
    cfg = json.loads(config.read_text())["model"]["pretransform"]["config"]
    ae = module.create_autoencoder_from_config({"sample_rate": 44100, "model": cfg}).eval()
    randomize_(ae, seed=seed)
    model = AudioAutoencoder.from_weights(cfg, {k: mx.array(v.detach().numpy()) for k, v in ae.state_dict().items()})
    lat = np.random.default_rng(seed).standard_normal((1, cfg["latent_dim"], latents)).astype(np.float32)
    with torch.no_grad():
        ref32 = ae.decode(torch.from_numpy(lat)).numpy()
        ref64 = ae.double().decode(torch.from_numpy(lat).double()).numpy()
    ours = model.decode_numpy(lat)
    with conv.implementation("native"):
        native = model.decode_numpy(lat)
    return {
        "max_abs_output": float(np.abs(ref64).max()),
        "reference_fp32_vs_fp64": rel(ref32, ref64),
        "livegen_vs_fp64": rel(ours, ref64),
        "livegen_native_conv_vs_fp64": rel(native, ref64),
        "livegen_vs_reference_fp32": rel(ours, ref32),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", type=int, default=8, help="latent frames to decode (default 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, value in measure(args.latents, args.seed).items():
        print(f"{name:32s} {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
