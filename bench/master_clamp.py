"""Cost of the mixer's master safety (livegen/output/mixer.py) per audio block.

    python -m bench.master_clamp [--block 256] [--blocks 20000]

Mixes the same four looping voices with the safety off (``ceiling=None``), on with nothing
clipping (voices at 0.1), and on with every block clipping (voices at 0.9), and prints the mean
time per block of each and the difference: what the safety adds to every callback.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from livegen.output.mixer import Mixer


def per_block(ceiling: float | None, level: float, block: int, blocks: int) -> float:
    m = Mixer(2, 8, fade_samples=64, max_block=block, ceiling=ceiling)
    rng = np.random.default_rng(0)
    for slot in range(4):
        m.schedule(slot, m.prepare(level * rng.uniform(-1, 1, (2, 48000)).astype(np.float32)), 0, loop=True)
    out = np.zeros((block, 2), np.float32)
    for i in range(200):
        m.mix(out, i * block)
    t0 = time.perf_counter()
    for i in range(200, 200 + blocks):
        m.mix(out, i * block)
    return (time.perf_counter() - t0) / blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=20000)
    a = ap.parse_args()
    off = per_block(None, 0.1, a.block, a.blocks)
    quiet = per_block(1.0, 0.1, a.block, a.blocks)
    loud = per_block(1.0, 0.9, a.block, a.blocks)
    print(f"{a.block} frames x 2 ch, 4 voices: mix without safety {off * 1e6:.1f} us/block; "
          f"with safety, nothing clips {quiet * 1e6:.1f} us (+{(quiet - off) * 1e6:.1f}); "
          f"every block clips {loud * 1e6:.1f} us (+{(loud - off) * 1e6:.1f})")


if __name__ == "__main__":
    main()
