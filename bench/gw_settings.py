"""Measure GW k-means and Euclidean spectral clustering on one class over the settings that decide
what a point cloud holds: the LRP rule (composite, its positive part, the thesis's squared rule), the
layer the relevance is read at, the mass threshold t and ε, each over cluster seeds (median, min, max),
with the clouds' size and the share of their 9 heaviest pixels, poisoned against clean.

    GTSRB_DIR=../shared/data/gtsrb python bench/gw_settings.py [--architecture thesis_net] [--class 5]
        [--rules composite positive squared] [--layers input relu1 relu2] [--thresholds 0.99 0.5]
        [--eps 5e-4] [--seeds 0 1 2 3 4] [--bound] [--out rows.jsonl]

With `--bound`, each row also gives the accuracy of assigning every cloud to the nearer of the two
barycenters of the *true* groups (`core.gw_kmeans.truth_centres`): what any 2-centre GW k-means can
reach on those clouds, and whether its objective prefers the true split (objective with the truth's
assignment against the nearer-centre one).

Each row prints the `python -m core detect` command that reproduces its GW figures (the spectral
figures: the same options with `python -m core spectral --cluster-seed S`). Every result is cached,
so a rerun prints the table at once. Rows go to `--out` as JSON lines as they finish.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.arithmetic import describe_machine  # noqa: E402
from core.options import OneLineParser, real, run_script, whole  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.detection import over_seeds  # noqa: E402
from core.detectors import gw_kmeans_detection, heatmap_spectral  # noqa: E402
from core.experiment import ExperimentConfig  # noqa: E402
from core.grid_clouds import GridClouds  # noqa: E402
from core.gw_kmeans import GWConfig, truth_centres  # noqa: E402
from core.heatmaps import experiment_heatmaps  # noqa: E402
from core.lrp import LRPConfig  # noqa: E402
from core.models import ARCHITECTURES  # noqa: E402
from core.pointcloud import normalised_mass, point_count, top_share  # noqa: E402
from core.spectral import SpectralConfig  # noqa: E402

RULES = {"composite": LRPConfig("composite"), "positive": LRPConfig("composite", positive=True), "squared": LRPConfig("squared")}


def command(architecture: str, class_id: int, rule: str, layer: str, threshold: float, eps: float, seeds, max_iter: int) -> str:
    words = ["python -m core detect --method gw", f"--class {class_id}"]
    words += [] if architecture == "thesis_net" else [f"--architecture {architecture}"]
    words += {"composite": ["--signed"], "positive": [], "squared": ["--rule squared", "--signed"]}[rule]  # detect reads the positive part unless --signed
    words += [] if layer == "input" else [f"--relevance-layer {layer}"]
    words += [] if threshold == 0.99 else [f"--threshold {threshold:g}"]
    words += [] if eps == 5e-4 else [f"--eps {eps:g}"]
    words += [] if max_iter == GWConfig().max_iter else [f"--max-iter {max_iter}"]
    return " ".join(words + ["--cluster-seeds", *map(str, seeds)])


def spread(summary: dict) -> str:
    a = summary["accuracy"]
    return f"{100 * a['median']:.2f} ({100 * a['min']:.2f}–{100 * a['max']:.2f})"


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default="thesis_net")
    parser.add_argument("--class", dest="class_id", type=whole(0, 42), default=5)
    parser.add_argument("--rules", nargs="+", choices=tuple(RULES), default=list(RULES))
    parser.add_argument("--layers", nargs="+", choices=sorted({n for a in ARCHITECTURES.values() for n in a.readout_layers}), default=None,
                        help="default: the network's readout layers")
    parser.add_argument("--thresholds", nargs="+", type=real(0.0, 1.0, open_low=True), default=[0.99, 0.5])
    parser.add_argument("--eps", nargs="+", type=real(0.0, 10.0, open_low=True), default=[5e-4])
    parser.add_argument("--seeds", nargs="+", type=whole(0, 2**32 - 1), default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-iter", type=whole(1, 100), default=GWConfig().max_iter)
    parser.add_argument("--bound", action="store_true", help="also the truth-centre bound of each row (about a minute a row)")
    parser.add_argument("--out", type=Path, default=None, help="append each row to this file as a JSON line")
    args = parser.parse_args(argv)
    layers = args.layers or list(ARCHITECTURES[args.architecture].readout_layers)
    unknown = [layer for layer in layers if layer not in ARCHITECTURES[args.architecture].readout_layers]
    if unknown:
        parser.error(f"--layers: {args.architecture} has no layer {unknown[0]!r}; "
                     f"choose from {', '.join(ARCHITECTURES[args.architecture].readout_layers)}")
    data = load_gtsrb()  # run_script makes a missing data folder one line
    print(describe_machine())
    experiment = dataclasses.replace(ExperimentConfig(), train=dataclasses.replace(ExperimentConfig().train, architecture=args.architecture))
    bound_head = (" truth-centre bound % (objective: truth / nearer) |", "---|") if args.bound else ("", "")
    print("| rule | layer | t | ε | GW k-means accuracy % | Euclidean spectral % | cloud size poisoned / clean | top-9 share poisoned / clean |"
          f" s a seed | converged |{bound_head[0]} command |")
    print(f"|---|---|---|---|---|---|---|---|---|---|{bound_head[1]}---|")
    for rule in args.rules:
        for layer in layers:
            lrp = dataclasses.replace(RULES[rule], layer=layer)
            heatmaps = experiment_heatmaps(experiment, args.class_id, lrp, data)
            poisoned = heatmaps.poison_mask
            mass = normalised_mass(heatmaps.heatmaps)
            top = top_share(mass)
            spectral = over_seeds({s: heatmap_spectral(experiment, args.class_id, lrp, SpectralConfig(seed=s), data).score
                                   for s in args.seeds})
            for threshold in args.thresholds:
                size = point_count(mass, threshold).double()
                for eps in args.eps:
                    scores, seconds, converged = {}, [], []
                    for seed in args.seeds:
                        config = GWConfig(threshold=threshold, epsilon=eps, epsilon_init=eps, seed=seed, max_iter=args.max_iter)
                        detection = gw_kmeans_detection(experiment, args.class_id, lrp, config, data)
                        scores[seed] = detection.score
                        seconds.append(detection.result.seconds)  # as computed, also when it is read from the cache
                        converged.append(bool(detection.result.converged))
                    gw = over_seeds(scores)
                    bound, bound_text = None, ""
                    if args.bound:
                        clouds = GridClouds.from_heatmaps(heatmaps.heatmaps, threshold)
                        found = truth_centres(clouds, GWConfig(threshold=threshold, epsilon=eps, epsilon_init=eps), poisoned.numpy())
                        bound = {"accuracy": found.score.accuracy, "objective_truth": found.objective_truth,
                                 "objective_nearest": found.objective_nearest}
                        bound_text = (f" {100 * found.score.accuracy:.2f} ({found.objective_truth:.5f} / "
                                      f"{found.objective_nearest:.5f}) |")
                    row = {"architecture": args.architecture, "class": args.class_id, "rule": rule, "layer": layer, "threshold": threshold,
                           "eps": eps, "gw": gw, "spectral": spectral,
                           "cloud_size": [float(size[poisoned].median()), float(size[~poisoned].median())],
                           "top9_share": [float(top[poisoned].median()), float(top[~poisoned].median())],
                           "seconds_per_seed": float(np.median(seconds)), "converged": sum(converged), "bound": bound,
                           "command": command(args.architecture, args.class_id, rule, layer, threshold, eps, args.seeds, args.max_iter)}
                    print(f"| {rule} | {layer} | {threshold:g} | {eps:g} | {spread(gw)} | {spread(spectral)} | "
                          f"{row['cloud_size'][0]:.0f} / {row['cloud_size'][1]:.0f} | "
                          f"{100 * row['top9_share'][0]:.1f} % / {100 * row['top9_share'][1]:.1f} % | {row['seconds_per_seed']:.0f} | "
                          f"{row['converged']} of {len(args.seeds)} |{bound_text} `{row['command']}` |", flush=True)
                    if args.out is not None:
                        with args.out.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
