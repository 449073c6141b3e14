"""Benchmark: GW k-means on the default experiment's class 5 (2,463 heatmap clouds), our
batched grid solver against POT called one pair at a time, measured in the same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/gromov.py [--pairs 4] [--agreement 30] [--seeds 2] [--skip-class]
                                                        [--paths float32,bfloat16]

First the CPU, its capability and its float32 and bfloat16 matrix-product throughput; parts 1
and 2 run once per arithmetic path of the change products (`core.arithmetic`): both where
bfloat16 is native, float32 alone where a bfloat16 product is more than 4 times slower than
a float32 one (`--paths` forces the list). Prints, in one run:
1. seconds for the whole class at the thesis's settings (threshold 0.99, ε = 5e-4,
   barycenters of 10 points; k-means to convergence or 10 iterations), and the counts;
2. the per-pair POT loop (`entropic_gromov_wasserstein2` at ε = 5e-4, a 10-point
   barycenter) on a sample of the same clouds, against our time per pair in a batch of the
   whole class, and the ratio;
3. the relative difference of GW values against POT at ε = 0.01 on a sample;
4. the share of samples that GW k-means flags identically with the grid solver and with
   the POT loop (the smaller cluster, so the arbitrary cluster numbers do not matter), same
   seeds, on a subset of the class (threshold 0.5 and ε = 0.01, where POT
   converges and the POT loop finishes in minutes): with every solve started from p qᵀ as
   POT does, and with the default warm starts (which may settle in other local optima);
5. the fused float32 kernels of `core.semidual` against the tensor operations they replace
   (`POISONLAB_FUSED=0` turns them off everywhere, part 1 included), and the ratio.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.arithmetic import OVERRIDE_ENV, describe_machine, machine_summary  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.experiment import ExperimentConfig  # noqa: E402
from core.grid_clouds import GridClouds  # noqa: E402
from core.gromov import GridGW  # noqa: E402
from core.gw_barycenter import random_structure  # noqa: E402
from core.gw_kmeans import GWConfig, gw_kmeans  # noqa: E402
from core.heatmaps import experiment_heatmaps  # noqa: E402
from core.lrp import LRPConfig  # noqa: E402


def pot_pair(clouds: GridClouds, i: int, structure: torch.Tensor, eps: float) -> float:
    import ot

    c, p = clouds.structure(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(ot.gromov.entropic_gromov_wasserstein2(c.numpy(), structure.numpy(), p.numpy(), ot.unif(len(structure)), epsilon=eps))


def main() -> None:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=whole(1, 10_000), default=4, help="clouds timed with the POT loop at ε = 5e-4 (default 4)")
    parser.add_argument("--values", type=whole(1, 10_000), default=12, help="clouds compared with POT at ε = 0.01 (default 12)")
    parser.add_argument("--agreement", type=whole(2, 10_000), default=24, help="clouds in the k-means agreement subset (default 24)")
    parser.add_argument("--seeds", type=whole(1, 1000), default=2, help="k-means seeds in the agreement check (default 2)")
    parser.add_argument("--skip-class", action="store_true", help="skip the whole-class k-means (part 1)")
    parser.add_argument("--paths", default="", help="arithmetic paths for parts 1 and 2, comma-separated (default: see above)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(describe_machine())
    machine = machine_summary()
    if args.paths:
        paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    elif machine["bfloat16_gflops"] * 4 < machine["float32_gflops"]:
        paths = ["float32"]
        print("bfloat16 path skipped: a bfloat16 product is more than 4 times slower than float32 here (--paths float32,bfloat16 forces it)")
    else:
        paths = ["float32", "bfloat16"]

    data = load_gtsrb()
    heatmaps = experiment_heatmaps(ExperimentConfig(), 5, LRPConfig(), data)
    truth = heatmaps.poison_mask.numpy()
    clouds = GridClouds.from_heatmaps(heatmaps.heatmaps, 0.99)
    n = len(clouds)
    print(f"class 5: {n} clouds, {int(truth.sum())} poisoned, {float((clouds.weights > 0).sum(1).double().mean()):.0f} points on average at t = 0.99")

    for path in paths:
        os.environ[OVERRIDE_ENV] = path
        if not args.skip_class:
            started = time.perf_counter()
            result = gw_kmeans(clouds, GWConfig(), truth=truth)
            seconds = time.perf_counter() - started
            s = result.score(truth)
            print(f"1. [{path}] whole class, thesis settings: {seconds:.1f} s, {len(result.iterations) - 1} iterations, converged {result.converged}; "
                  f"(tn, fp, fn, tp) = ({s.tn}, {s.fp}, {s.fn}, {s.tp}); accuracy {100 * s.accuracy:.2f} %, TPR {100 * s.tpr:.2f} %, "
                  f"TNR {100 * s.tnr:.2f} % (thesis 98.17 / 96.98 / 98.91)")

        structure = random_structure(10, seed=0)
        solver = GridGW(clouds, 5e-4)
        started = time.perf_counter()
        solver.solve(torch.arange(n), structure.expand(n, -1, -1))
        ours_per_pair = (time.perf_counter() - started) / n
        sample = np.linspace(0, n - 1, args.pairs).astype(int)
        started = time.perf_counter()
        for i in sample:
            pot_pair(clouds, int(i), structure, 5e-4)
        pot_per_pair = (time.perf_counter() - started) / len(sample)
        print(f"2. [{path}] GW distance to a 10-point barycenter at ε = 5e-4: POT loop {pot_per_pair:.3f} s per pair ({len(sample)} pairs); "
              f"ours {1000 * ours_per_pair:.2f} ms per pair (whole class in one batch); ratio POT / ours = {pot_per_pair / ours_per_pair:.0f}")
    os.environ[OVERRIDE_ENV] = paths[0]

    sample = np.linspace(0, n - 1, args.values).astype(int)
    ours = GridGW(clouds, 0.01).solve(torch.from_numpy(sample), structure.expand(len(sample), -1, -1)).values.numpy()
    reference = np.array([pot_pair(clouds, int(i), structure, 0.01) for i in sample])
    difference = np.abs(ours - reference) / reference
    print(f"3. GW values against POT at ε = 0.01 ({len(sample)} clouds): relative difference median {np.median(difference):.1e}, max {difference.max():.1e}")

    rng = np.random.default_rng(0)
    poisoned, clean = np.flatnonzero(truth), np.flatnonzero(~truth)
    k = args.agreement // 3
    subset = np.sort(np.concatenate([rng.choice(poisoned, k, replace=False), rng.choice(clean, args.agreement - k, replace=False)]))
    small = GridClouds.from_heatmaps(heatmaps.heatmaps[subset], 0.5)
    agree = {True: 0, False: 0}
    total = 0
    for seed in range(args.seeds):
        config = GWConfig(threshold=0.5, epsilon=0.01, epsilon_init=0.01, max_iter=5, seed=seed, barycenter_updates=20)
        started = time.perf_counter()
        pot = gw_kmeans(small, config, truth=truth[subset], solver="pot")
        pot_seconds = time.perf_counter() - started
        total += len(subset)
        for warm in (True, False):
            started = time.perf_counter()
            grid = gw_kmeans(small, replace(config, warm_start=warm), truth=truth[subset])
            seconds = time.perf_counter() - started
            same = int((grid.flagged == pot.flagged).sum())  # cluster numbers are arbitrary; the flagged group is not
            agree[warm] += same
            print(f"   seed {seed}, {'warm starts (default)' if warm else 'POT-style starts'}: identical flagged samples "
                  f"{same}/{len(subset)}; grid {seconds:.1f} s, POT loop {pot_seconds:.1f} s")
    print(f"4. k-means agreement with the POT loop ({len(subset)} clouds, t = 0.5, ε = 0.01, {args.seeds} seeds): "
          f"{100 * agree[False] / total:.1f} % of samples flagged identically with POT-style starts (--no-warm-start), "
          f"{100 * agree[True] / total:.1f} % with warm starts (the default)")
    fused_against_tensors(clouds)


def fused_against_tensors(clouds: GridClouds, pairs: int = 128, repeats: int = 20) -> None:
    """5. The fused float32 kernels (core.semidual) against the tensor operations they replace, on
    a chunk of real mirror-descent states: one transport (Newton steps and line search) and one
    linearised loss with its objective, as the solver calls them."""
    from core import semidual
    from core.gromov import _objective
    from core.gw_transport import LOG2E

    solver = GridGW(clouds, 5e-4, arithmetic="float32")
    cloud = torch.arange(pairs)
    bary = random_structure(10, seed=0).float().expand(pairs, -1, -1)
    q = torch.full((pairs, 10), 0.1)
    state = solver.solve(cloud, bary, max_outer=3)
    loss = solver.linearised_loss(state.products, solver.cloud_term[cloud], bary, q)
    p = solver.weights[cloud]
    scale = 2 * LOG2E / solver.epsilon
    bits = state.potentials * (LOG2E / solver.epsilon)
    transport = solver.transport

    def tensors_transport():
        transport.solve_with_tensors(loss * scale, p, q, state.potentials, 1, torch.ones(pairs))

    def fused_transport():
        semidual.transport(loss, scale, p, q, bits, torch.ones(pairs), 1, transport.marginal_tol, transport.ridge,
                           transport.slack, transport.max_newton, state.plans)

    def tensors_loss():
        _objective(solver.linearised_loss(state.products, solver.cloud_term[cloud], bary, q), state.plans)

    def fused_loss():
        semidual.loss_and_value(state.products, solver.cloud_term[cloud], bary, q, state.plans)

    def best(f):
        f()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            f()
            times.append(time.perf_counter() - started)
        return min(times)

    for name, reference, fused in (("transport (one mirror step)", tensors_transport, fused_transport),
                                   ("linearised loss and objective", tensors_loss, fused_loss)):
        a, b = best(reference), best(fused)
        print(f"5. [float32] {name}, {pairs} pairs: tensor operations {1000 * a:.2f} ms, fused kernel {1000 * b:.2f} ms; "
              f"ratio tensors / fused = {a / b:.1f}")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
