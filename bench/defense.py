"""Benchmark: B6 barycentric-defense barycenters per second on 32×32×3 GTSRB test images,
with the separable banded kernel against the unfold-based 7×7 local convolution (the way
published code applies the kernel), the same algorithm and settings, in the same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/defense.py [--images 64] [--reference-images 4] [--iterations 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import load_gtsrb  # noqa: E402
from core.defense import DefenseConfig, UnfoldKernel, purify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images purified with the banded kernel (default 64)")
    parser.add_argument("--reference-images", type=int, default=4, help="images purified with the unfold reference (default 4)")
    parser.add_argument("--iterations", type=int, default=DefenseConfig().iterations, help="iterations of Algorithm 1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = replace(DefenseConfig(), iterations=args.iterations)
    images = load_gtsrb().test.images
    images = images.float() / 255 if images.max() > 1 else images.float()
    fast = images[: args.images]
    started = time.perf_counter()
    ours = purify(fast, config)
    ours_rate = len(fast) / (time.perf_counter() - started)
    slow = images[: args.reference_images]
    started = time.perf_counter()
    reference = purify(slow, config, kernel=UnfoldKernel(32, config))
    reference_rate = len(slow) / (time.perf_counter() - started)
    difference = float((ours[: len(slow)] - reference).abs().max())
    print(f"B6, {config.iterations} iterations, γ = {config.gamma}, θ = {config.theta:g}, τ = {config.tau}: "
          f"banded kernel {ours_rate:.2f} images/s ({len(fast)} images); unfold-based {reference_rate:.3f} images/s "
          f"({len(slow)} images); ratio {ours_rate / reference_rate:.1f}; largest pixel difference {difference:.1e}")


if __name__ == "__main__":
    main()
