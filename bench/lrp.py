"""Benchmark: LRP heatmaps of the default experiment's target class, our LRP and captum's on
the same rules, against gradient x input measured in the same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/lrp.py [--passes N] [--batch-size B] [--all]

Methods, each on the same batch of class-5 training images (2,463; targets: their labels):
gradient x input on the original model (one forward, one backward: the reference cost), our
`LRP` attributor per rule on the canonical (BatchNorm-folded) copy, and `captum_relevance`
per rule (captum's LRP with the same rules; it copies the model and attaches fresh rules on
every call, as captum requires). The methods run back to back on each batch in a shuffled
order and every pass covers all batches, so load from other processes hits all methods
alike; each method's time is divided by gradient x input's time of the same pass, and the
median over passes is reported. `--all` also times one pass over the whole training set
(34,799 images, all classes, per-sample labels as targets), again interleaved per batch.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.errors import PoisonLabError  # noqa: E402
from core.experiment import ExperimentConfig, load_trained, poisoned_data, train_or_load  # noqa: E402
from core.lrp import RULE_NAMES, LRP, LRPConfig, canonical_copy, gradient_times_input  # noqa: E402
from core.lrp_reference import captum_relevance  # noqa: E402

REFERENCE = "gradient x input"

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_methods(model: torch.nn.Module) -> Dict[str, Method]:
    """Name -> f(images in [0,1], targets) for every method; built once, outside the timings."""
    model.eval()
    canonical = canonical_copy(model)
    methods: Dict[str, Method] = {REFERENCE: lambda x, t: gradient_times_input(model, x, t)}
    for rule in RULE_NAMES:
        attributor = LRP(canonical, LRPConfig(rule).rules_for(canonical))
        methods[f"ours {rule}"] = lambda x, t, a=attributor: a(x, t)[0]
    for rule in RULE_NAMES:
        rules = LRPConfig(rule).rules_for(canonical)
        methods[f"captum {rule}"] = lambda x, t, r=rules: captum_relevance(canonical, r, x, t)
    return methods


def one_pass(methods: Dict[str, Method], images: torch.Tensor, targets: torch.Tensor, batch_size: int, rng: random.Random) -> Dict[str, float]:
    """Seconds per method for one pass over `images` (uint8), methods interleaved per batch."""
    seconds = {name: 0.0 for name in methods}
    names = list(methods)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float().div_(255.0)
        t = targets[start : start + batch_size]
        rng.shuffle(names)
        for name in names:
            began = time.perf_counter()
            methods[name](x, t)
            seconds[name] += time.perf_counter() - began
    return seconds


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=whole(1, 1000), default=5, help="timed passes over the class-5 images (default 5)")
    parser.add_argument("--batch-size", type=whole(1, 100_000), default=256, help="images per batch (default 256)")
    parser.add_argument("--all", action="store_true", help="also time one pass over the whole training set (34,799 images) per rule")
    parser.add_argument("--seed", type=whole(0, 2**32 - 1), default=0, help="seed of the method order per batch (default 0)")
    args = parser.parse_args(argv)
    if args.passes < 1 or args.batch_size < 1:
        print("error: --passes and --batch-size must be at least 1", file=sys.stderr)
        return 2
    print(describe_machine())
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")

    try:
        data = load_gtsrb()
        config = ExperimentConfig()
        trained = load_trained(data, config)
        if trained is None:
            print("the default experiment's model is not cached: training it now (about 3 minutes on two cores)", flush=True)
            trained = train_or_load(config, data)
    except PoisonLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train = poisoned_data(data, config).train
    target = config.poison.target
    index = torch.nonzero(train.labels == target).flatten()
    images, targets = train.images[index], train.labels[index]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"model {trained.path.name}; class {target}: {len(images):,} training images "
          f"({int(train.poison_mask[index].sum())} poisoned), batch {args.batch_size}, {args.passes} passes")
    print("rules: composite = z^B first layer, gamma 0.25 convolutions, epsilon 0.25 dense; "
          "epsilon = 0.25 everywhere; gamma = 0.25 everywhere; alpha1beta0 everywhere")

    methods = build_methods(trained.model)
    rng = random.Random(args.seed)
    one_pass(methods, images[: args.batch_size], targets[: args.batch_size], args.batch_size, rng)  # warm-up

    passes: List[Dict[str, float]] = [one_pass(methods, images, targets, args.batch_size, rng) for _ in range(args.passes)]

    print()
    print(f"{'method':<24}{'images/s':>10}{'s/pass':>9}   ratio to {REFERENCE} (median [min..max] over passes)")
    for name in methods:
        times = [p[name] for p in passes]
        ratios = [p[name] / p[REFERENCE] for p in passes]
        median_time = statistics.median(times)
        print(f"{name:<24}{len(images) / median_time:>10,.0f}{median_time:>9.3f}   "
              f"{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]")

    if args.all:
        print()
        print(f"whole training set: {len(train):,} images, all classes, targets = their labels, one pass, batch {args.batch_size}")
        seconds = one_pass(methods, train.images, train.labels, args.batch_size, rng)
        print(f"{'method':<24}{'seconds':>9}{'ratio':>8}")
        for name in methods:
            print(f"{name:<24}{seconds[name]:>9.1f}{seconds[name] / seconds[REFERENCE]:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
