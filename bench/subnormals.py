"""Benchmark: GW k-means with and without subnormal floats in the transport, same clouds, same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/subnormals.py [--clouds 600] [--max-iter 2] [--seed 0]

At ε = 5e-4 most entries of a transport plan are far below the largest of their column. Written
as they fall, two thirds of them are subnormal floats, and every product that makes or reads one
takes a microcode assist (on Intel cores about 100 times the cost of a normal one). The solver
writes them as 0 (`core.semidual.FLOOR_BITS`, `TINY_MASS`). The reference is the same solver as
it was before: terms clamped at float32's smallest normal exponent, nothing cut off.
Prints the machine, both times, their ratio, the share of subnormal plan entries of one solve on
each setting, and whether both flag the same samples.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import semidual  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.experiment import ExperimentConfig  # noqa: E402
from core.grid_clouds import GridClouds  # noqa: E402
from core.gromov import GridGW  # noqa: E402
from core.gw_barycenter import random_structure  # noqa: E402
from core.gw_kmeans import GWConfig, gw_kmeans  # noqa: E402
from core.heatmaps import experiment_heatmaps  # noqa: E402
from core.lrp import LRPConfig  # noqa: E402
from core.options import OneLineParser, run_script, whole  # noqa: E402

SETTINGS = {"no subnormals (ours)": (semidual.FLOOR_BITS, semidual.KEEP_FLOOR, semidual.TINY_MASS),
            "subnormals (before)": (-126.0, True, 0.0)}


def subnormal_share(clouds: GridClouds, epsilon: float) -> float:
    count = min(len(clouds), 128)
    solver = GridGW(clouds, epsilon, arithmetic="float32")
    plans = solver.solve(torch.arange(count), random_structure(10, 1).expand(count, -1, -1)).plans.float()
    return float(((plans != 0) & (plans.abs() < torch.finfo(torch.float32).tiny)).float().mean())


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clouds", type=whole(2, 100_000), default=600, help="clouds of class 5 to cluster (default 600)")
    parser.add_argument("--max-iter", type=whole(1, 100), default=2, help="k-means iterations at most (default 2)")
    parser.add_argument("--seed", type=whole(0, 2**32 - 1), default=0, help="k-means seed (default 0)")
    args = parser.parse_args(argv)
    data = load_gtsrb()  # run_script makes a missing data folder one line
    print(describe_machine())
    heatmaps = experiment_heatmaps(ExperimentConfig(), 5, LRPConfig(), data)
    chosen = np.random.default_rng(0).permutation(len(heatmaps.poison_mask))[: args.clouds]
    clouds = GridClouds.from_heatmaps(heatmaps.heatmaps[torch.from_numpy(chosen)], 0.99)
    truth = heatmaps.poison_mask.numpy()[chosen]
    config = GWConfig(max_iter=args.max_iter, seed=args.seed)
    gw_kmeans(GridClouds.from_heatmaps(heatmaps.heatmaps[:8], 0.99), GWConfig(max_iter=1))  # compile the kernels first
    seconds, flagged = {}, {}
    try:
        for name, setting in SETTINGS.items():
            semidual.FLOOR_BITS, semidual.KEEP_FLOOR, semidual.TINY_MASS = setting
            share = subnormal_share(clouds, config.epsilon)
            started = time.perf_counter()
            result = gw_kmeans(clouds, config, truth=truth)
            seconds[name] = time.perf_counter() - started
            flagged[name] = result.flagged
            print(f"{name}: {seconds[name]:.1f} s for {len(clouds)} clouds, {len(result.iterations) - 1} iterations; "
                  f"accuracy {result.score(truth).accuracy:.4f}; subnormal plan entries {100 * share:.1f} %", flush=True)
    finally:
        semidual.FLOOR_BITS, semidual.KEEP_FLOOR, semidual.TINY_MASS = SETTINGS["no subnormals (ours)"]
    before, ours = seconds["subnormals (before)"], seconds["no subnormals (ours)"]
    same = float((flagged["subnormals (before)"] == flagged["no subnormals (ours)"]).mean())
    print(f"ratio: {before / ours:.1f}x faster without subnormals; the same flag for {100 * same:.1f} % of the samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
