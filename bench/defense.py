"""Benchmark: B6 barycentric-defense barycenters per second on 32×32×3 GTSRB test images,
with the separable banded kernel against the unfold-based 7×7 local convolution (the way
published code applies the kernel), the same algorithm and settings, in the same run.

It then checks the iteration count against the default experiment's model (if it is
trained), on test images clean and attacked (FGSM, CW): how many predicted classes change
when the per-image early stop (--tol) ends the iterations before the fixed count, and when
the count is raised to the 2,000 iterations of the authors' code.

    GTSRB_DIR=../shared/data/gtsrb python bench/defense.py [--images 64] [--reference-images 4] [--iterations 300]
                                                           [--tol 1e-4] [--check-images 200]
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.options import OneLineParser, real, run_script, whole  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.defense import DefenseConfig, UnfoldKernel, purify  # noqa: E402
from core.evasion import AttackConfig, attack  # noqa: E402
from core.experiment import ExperimentConfig, load_trained  # noqa: E402
from core.models import predict  # noqa: E402


def flops_per_image(config: DefenseConfig) -> float:
    """Matrix-product flops of Algorithm 1 for one 3-channel image: each iteration applies
    K = B·X·B twice to every (marginal, channel) map, and B·X·B is two 32×32 products."""
    maps = (len(config.angles) + 2) * 3
    return config.iterations * 2 * maps * 2 * (2 * 32 ** 3)


def check_iterations(data, config: DefenseConfig, tol: float, count: int) -> None:
    trained = load_trained(data, ExperimentConfig())
    if trained is None:
        print("iteration check skipped: the default experiment's model is not trained (python -m core train)")
        return
    model = trained.model
    images = data.test.images[:count].float() / 255
    labels = data.test.labels[:count]
    sets = {"clean": images}
    for name in ("fgsm", "cw-l2"):
        sets[name] = attack(model, images, labels, AttackConfig(name=name))
    for name, x in sets.items():
        started = time.perf_counter()
        full = predict(model, purify(x, config))
        full_seconds = time.perf_counter() - started
        started = time.perf_counter()
        early = predict(model, purify(x, replace(config, tol=tol)))
        early_seconds = time.perf_counter() - started
        longer = predict(model, purify(x, replace(config, iterations=2000)))
        print(f"{name:>6} ({count} images): accuracy {float((full == labels).float().mean()):.1%} at {config.iterations} iterations, "
              f"{float((longer == labels).float().mean()):.1%} at 2000; predictions changed by the early stop (tol {tol:g}) "
              f"{float((early != full).float().mean()):.1%} (speed-up {full_seconds / early_seconds:.2f}), "
              f"by 2000 iterations {float((longer != full).float().mean()):.1%}")


def main() -> None:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=whole(1, 100_000), default=64, help="images purified with the banded kernel (default 64)")
    parser.add_argument("--reference-images", type=whole(1, 100_000), default=4, help="images purified with the unfold reference (default 4)")
    parser.add_argument("--iterations", type=whole(1, 100_000), default=DefenseConfig().iterations, help="iterations of Algorithm 1")
    parser.add_argument("--tol", type=real(0.0, 1.0, open_low=True), default=1e-4, help="early-stop tolerance to check against the fixed count (default 1e-4)")
    parser.add_argument("--check-images", type=whole(0, 100_000), default=200, help="test images for the iteration check (0: skip; default 200)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(describe_machine())
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
    print(f"matrix products: {flops_per_image(config) / 1e9:.2f} GFLOP per image, {flops_per_image(config) * ours_rate / 1e9:.0f} GFLOP/s reached")
    if args.check_images:
        check_iterations(load_gtsrb(), config, args.tol, args.check_images)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
