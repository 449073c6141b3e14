"""Command line: `python -m core <command>`; each command ends with one JSON line on stdout.

Progress bars go to stderr, so stdout stays machine-readable. Every number the app shows
comes from the same core calls with the same parameters, so it can be reproduced here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional

from . import params
from .data import NUM_CLASSES
from .defense import DefenseConfig
from .errors import ConfigError, DataError, PoisonLabError
from .evasion import ATTACKS
from .gw_kmeans import GWConfig
from .lrp import LRPConfig
from .options import DESTINATION, FOLDER, NEW_FOLDER, READ, WRITE, OneLineParser, PathOption, real, whole
from .poison import PoisonConfig
from .progress import Estimator, Progress, time_left_text
from .cleanse import DEFAULT_METHODS, METHODS
from .spatial import DEFAULT_TRANSFORMS
from .spectral import SpectralConfig


class _Bar:
    """A tqdm bar per task, fed by Progress reports.

    The time left is the core Estimator's, the one the pages show, in the postfix; tqdm's
    own remaining time (from the average rate) is left out of the bar so the two never disagree.
    """

    KNOWN_TOTAL = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars = {}
        self.estimator = Estimator()

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        total = event.total if event.total > 0 else None
        bar = self.bars.get(event.task)
        if bar is None:
            bar = self.bars[event.task] = tqdm(total=total, desc=event.task, file=sys.stderr, unit="", dynamic_ncols=True,
                                               bar_format=self.KNOWN_TOTAL if total else None)
        elif bar.total != total or event.done < bar.n:  # the task started again: so do its rate and elapsed time
            bar.total = total
            bar.reset(total=total)
        bar.bar_format = self.KNOWN_TOTAL if total else None
        bar.n = event.done
        left = time_left_text(self.estimator.update(event))
        figures = [f"{k}={v:.4f}" for k, v in event.info.items() if k in ("loss", "val_accuracy")]
        bar.set_postfix_str(", ".join([left, *figures] if left else figures), refresh=False)
        bar.set_description(event.message or event.task, refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


ATTACK_NAMES = tuple(ATTACKS)
CLASS = whole(0, NUM_CLASSES - 1)
SEED = whole(0, 2**32 - 1)
BUDGET = real(0.0, 32.0, open_low=True)
THRESHOLD = real(0.0, 1.0, open_low=True)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gtsrb-dir", type=PathOption(FOLDER), help="GTSRB folder (default: $GTSRB_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_experiment_options(parser: argparse.ArgumentParser) -> None:
    from .experiment import QUICK_TRAINING, ExperimentConfig

    params.add_experiment_options(parser, ExperimentConfig, {"poison": "attack (defaults: the thesis's)", "train": "training"})
    from .recipes import RECIPES

    run = parser.add_argument_group("run")
    run.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                     help="start the training options from a named recipe; training options given as well win: "
                          + "; ".join(f"{name}: {r.description}" for name, r in RECIPES.items()).replace("%", "%%"))
    run.add_argument("--no-cache", action="store_true", help="train even if the model is cached, and do not store it")
    _add_device_option(run)
    run.add_argument("--quick", action="store_true",
                     help="the quick experiment, a reduced one that trains in about a minute: sets --subset {subset}, --epochs {max_epochs}, "
                          "--batch-size {batch_size}, --lr {learning_rate} and --no-augment".format(**QUICK_TRAINING))


def _add_device_option(group) -> None:
    from .device import DeviceConfig

    params.add_options(group, DeviceConfig)


def experiment_from_args(args: argparse.Namespace):
    from .experiment import ExperimentConfig, quick_experiment

    config = params.experiment_from_args(ExperimentConfig, args)
    return quick_experiment(config) if getattr(args, "quick", False) else config


def _cmd_train(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .experiment import train_or_load

    config = experiment_from_args(args)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    trained = train_or_load(config, data, progress=bar, use_cache=not args.no_cache)
    m = trained.metrics
    keys = ("clean_accuracy", "source_accuracy", "attack_success_rate", "epochs", "best_epoch", "train_seconds", "n_poisoned", "n_train")
    return {**{k: m[k] for k in keys}, "from_cache": trained.from_cache, "model": str(trained.path), "config": config.to_dict()}


def _cmd_heatmaps(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .heatmaps import check_class, experiment_heatmaps
    from .poison import sticker_window

    from .pointcloud import check_threshold

    config = experiment_from_args(args)
    lrp = _lrp_from_args(args)
    check_threshold(args.threshold)
    check_class(args.class_id)  # before loading the data, which takes seconds
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    heatmaps = experiment_heatmaps(config, args.class_id, lrp, data, progress=bar, use_cache=not args.no_cache)
    summary = heatmaps.summary(sticker_window(config.poison), args.threshold)
    return {"class": args.class_id, "rule": lrp.describe(), **summary, "lrp": lrp.__dict__}


def _lrp_from_args(args: argparse.Namespace):
    from .lrp import check_layer_of

    lrp = params.config_from_args(LRPConfig, args)
    if hasattr(args, "architecture"):
        check_layer_of(args.architecture, lrp.layer)
    return lrp


def _cmd_spectral(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .detection import spectral_summary
    from .detectors import GWDistanceConfig, gw_spectral, heatmap_spectral, thesis_spectral
    from .heatmaps import check_class
    from .spectral import SpectralConfig

    config = experiment_from_args(args)
    lrp = _lrp_from_args(args)
    spectral = SpectralConfig(k_neighbors=args.k, n_eigenvalues=args.eigenvalues, n_clusters=args.clusters, seed=args.cluster_seed)
    check_class(args.class_id)
    # validated even with Euclidean distances: a wrong option is reported, not silently ignored
    gw = params.config_from_args(GWDistanceConfig, args, seed=args.cluster_seed)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    if args.distance == "gw":
        detection = gw_spectral(config, args.class_id, lrp, spectral, gw, data, progress=bar, use_cache=not args.no_cache)
        about = {"distance": "gw", "gw": gw.__dict__}
    else:
        detection = heatmap_spectral(config, args.class_id, lrp, spectral, data, progress=bar)
        about = {"distance": "euclidean"}
    out = {"class": args.class_id, "rule": lrp.describe(), **about, "samples": len(detection.truth), "poisoned": int(detection.truth.sum()),
           **spectral_summary(detection.result, detection.score, detection.seconds), "spectral": spectral.__dict__}
    thesis = thesis_spectral(config, args.class_id) if args.distance == "euclidean" else None
    if thesis is not None:
        out["thesis_euclidean_spectral"] = thesis
    return out


def _cmd_baselines(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .detectors import baseline_scores, heatmap_spectral
    from .heatmaps import check_class
    from .spectral import SpectralConfig

    config = experiment_from_args(args)
    lrp = _lrp_from_args(args)
    spectral = SpectralConfig(seed=args.cluster_seed)  # validates the seed before any training
    check_class(args.class_id)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    methods = baseline_scores(config, args.class_id, data, seed=args.cluster_seed, progress=bar)
    score = heatmap_spectral(config, args.class_id, lrp, spectral, data, progress=bar).score
    methods = {f"LRP heatmaps, Euclidean spectral ({lrp.rule})": score.as_dict(), **methods}
    return {"class": args.class_id, "methods": methods}


def _cmd_detect(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .detection import over_seeds
    from .detectors import gw_kmeans_detection, thesis_gw
    from .gw_kmeans import result_summary
    from .heatmaps import check_class

    config = experiment_from_args(args)
    lrp = _lrp_from_args(args)
    gw = params.config_from_args(GWConfig, args, epsilon_init=args.eps_init if args.eps_init is not None else args.eps)
    seeds = args.cluster_seeds or [gw.seed]
    runs = [dataclasses.replace(gw, seed=seed) for seed in seeds]  # every seed validated before any work
    check_class(args.class_id)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    summaries, scores = {}, {}
    for run in runs:
        detection = gw_kmeans_detection(config, args.class_id, lrp, run, data, progress=bar, use_cache=not args.no_cache)
        summaries[run.seed] = result_summary(detection.result, detection.truth)
        scores[run.seed] = detection.score
    truth = detection.truth
    out = {"method": "gw", "class": args.class_id, "rule": lrp.describe(), "samples": len(truth), "poisoned": int(truth.sum())}
    if len(runs) == 1:
        out.update(summaries[runs[0].seed])
    else:
        out["over_seeds"] = {**over_seeds(scores), "seconds": [summaries[s]["seconds"] for s in summaries]}
        out["runs"] = summaries
    thesis = thesis_gw(config, args.class_id, gw)
    if thesis is not None:
        out["thesis"] = thesis
    return out


def _models(args: argparse.Namespace) -> dict:
    """The experiment's poisoned model and its clean twin (the same experiment with fraction 0)."""
    from .experiment import clean_twin

    config = experiment_from_args(args)
    return {"poisoned": config, "clean": clean_twin(config)}


def defense_from_args(args: argparse.Namespace) -> DefenseConfig:
    return params.config_from_args(DefenseConfig, args)


def _cmd_defend(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .robustness import RobustnessConfig, robustness_table, sample_test_images

    models = _models(args)
    robustness = RobustnessConfig(images=args.images, attacks=tuple(args.attacks), eps_linf=args.eps_linf, eps_l2=args.eps_l2,
                                  defense=defense_from_args(args), seed=args.sample_seed)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    sample_test_images(robustness.images, len(data.test), robustness.seed)  # refused before any model is trained
    chosen = ("poisoned", "clean") if args.models == "both" else (args.models,)
    return {name: robustness_table(models[name], robustness, data, progress=bar, use_cache=not args.no_cache) for name in chosen}


def _cmd_spatial(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import load_gtsrb
    from .robustness import spatial_defense
    from .spatial import parse_transforms

    transforms = parse_transforms(args.transforms)
    config = experiment_from_args(args)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    return spatial_defense(config, transforms, data, progress=bar, use_cache=not args.no_cache)


def _cmd_cleanse(args: argparse.Namespace, bar: _Bar) -> dict:
    from .cleanse import check_methods, cleanse_table
    from .data import load_gtsrb

    methods = check_methods(args.method)
    config = experiment_from_args(args)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    return {"target": config.poison.target, "rows": cleanse_table(config, methods, data, progress=bar, use_cache=not args.no_cache)}


def _cmd_inspect(args: argparse.Namespace, bar: _Bar) -> dict:
    import torch

    from .data import CLASS_NAMES, load_gtsrb
    from .evasion import AttackConfig
    from .experiment import train_or_load
    from .inspection import inspect, sensitivity_grid, upload_input
    from .robustness import model_inputs

    if (args.test_index is None) == (args.image is None):
        raise ConfigError("give either --test-index or --image")
    attack_config = AttackConfig(name=args.attack, eps=args.eps, seed=args.attack_seed)
    defense = defense_from_args(args)
    models = _models(args)
    if args.image is not None:  # decoded before the data is loaded: a bad file is refused at once
        try:
            content = open(args.image, "rb").read()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.image}: {exc.strerror}") from exc
        try:
            images, labels = upload_input(content), None
        except DataError as exc:
            raise DataError(f"{args.image}: {exc}") from None
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    if args.image is None:
        if any(not 0 <= i < len(data.test) for i in args.test_index):
            raise ConfigError(f"test indices must be in 0 … {len(data.test) - 1}, got {args.test_index}")
        images, labels = model_inputs(data.test, torch.tensor(args.test_index))
    trained = train_or_load(models[args.model], data, progress=bar, use_cache=not args.no_cache)
    result = inspect(trained.model, images, labels, attack_config, defense, progress=bar)
    out = {"model": trained.path.name, "attack": attack_config.name, "eps": round(attack_config.budget, 6), "images": result.summary()}
    for row in out["images"]:
        row["label_name"] = CLASS_NAMES[row["label"]]
    if args.sensitivity:
        grid = sensitivity_grid(trained.model, result.images[1, 0] if args.sensitivity == "attacked" else images[0], defense, progress=bar)
        out["sensitivity"] = {"image": args.sensitivity, "rows": [
            [{"parameter": c.parameter, "value": c.value, "predicted": c.predicted, "confidence": c.confidence} for c in row] for row in grid]}
    return out


def _add_defense_options(group) -> None:
    params.add_options(group, DefenseConfig)


def _add_lrp_options(parser: argparse.ArgumentParser) -> None:
    lrp = parser.add_argument_group("LRP")
    lrp.add_argument("--class", dest="class_id", type=CLASS, default=PoisonConfig().target, help="class to explain (default 5: the attack's target)")
    params.add_options(lrp, LRPConfig)


def _cmd_data(args: argparse.Namespace, bar: _Bar) -> dict:
    from .data import SPLITS, load_gtsrb

    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    sizes = {s: len(data.split(s)) for s in SPLITS}
    return {"root": data.root, "layout": data.layout, "content_id": data.content_id, "sizes": sizes, "train_class_counts": data.train.class_counts()}


def _cmd_download(args: argparse.Namespace, bar: _Bar) -> dict:
    from .download import download_official

    root = download_official(args.dest, progress=bar)
    return {"gtsrb_dir": str(root), "hint": f"export GTSRB_DIR={root}"}


def _cmd_export(args: argparse.Namespace, bar: _Bar) -> dict:
    from pathlib import Path

    from .cache import atomic_write_bytes
    from .data import load_gtsrb
    from .export import detection_frame, experiment_json, experiment_record, export_virelay
    from .heatmaps import check_class
    from .spectral import SpectralConfig

    if not (args.csv or args.json or args.virelay):
        raise ConfigError("name at least one of --csv FILE, --json FILE or --virelay FOLDER")
    config = experiment_from_args(args)
    lrp = _lrp_from_args(args)
    check_class(args.class_id)
    spectral = SpectralConfig(seed=args.cluster_seed)
    for class_id in args.virelay_classes or []:
        check_class(class_id)
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    out = {"class": args.class_id}
    frame = None
    if args.csv or args.json:
        frame = detection_frame(config, args.class_id, lrp, spectral, data=data, seed=args.cluster_seed, progress=bar)
    if args.csv:
        atomic_write_bytes(Path(args.csv), frame.to_csv(index=False).encode())
        out["csv"] = {"path": args.csv, "rows": len(frame), "columns": list(frame.columns)}
    if args.json:
        record = experiment_record(config, data, frame, args.class_id, lrp)
        atomic_write_bytes(Path(args.json), experiment_json(record).encode())
        out["json"] = {"path": args.json, "detection": record["detection"]["methods"]}
    if args.virelay:
        classes = args.virelay_classes or [args.class_id]
        project = export_virelay(config, classes, args.virelay, lrp, spectral, data=data, progress=bar)
        out["virelay"] = {"project": str(project), "classes": sorted(set(classes)), "open_with": f"virelay {project}"}
    return out


def _cmd_cache(args: argparse.Namespace, bar: _Bar) -> dict:
    from .cache import cache_dir, delete_artifacts, list_artifacts

    if args.action == "list" and args.names:
        raise ConfigError(f"cache list takes no names (got {' '.join(args.names)}); to delete files: cache delete NAME …")
    if args.action == "delete":
        if not args.names:
            raise ConfigError("name the files to delete (see python -m core cache list)")
        return {"deleted": delete_artifacts(args.names)}
    rows = [dataclasses.asdict(row) for row in list_artifacts()]
    return {"directory": str(cache_dir()), "bytes": sum(row["size"] for row in rows), "artifacts": rows}


def _study_from_args(args: argparse.Namespace):
    from .study import load_study, study_from_dict

    if args.file and (args.grid or args.base or args.detectors):
        raise ConfigError("give a study file or --grid/--base/--detectors, not both")
    if args.file:
        return load_study(args.file)
    if not args.grid:
        raise ConfigError("give a study file (see README, Studies) or --grid KEY=V1,V2 …")

    def pairs(items, option):
        out = {}
        for item in items or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"{option} {item!r}: write KEY=VALUE")
            out[key] = value.split(",") if option == "--grid" else value
        return out

    return study_from_dict({"name": "study" if args.name is None else args.name, "base": pairs(args.base, "--base"), "grid": pairs(args.grid, "--grid"),
                            "detectors": args.detectors or []})


def _cmd_study(args: argparse.Namespace, bar: _Bar):
    from .data import load_gtsrb
    from .study import check_cluster_address, run_study, study_status, study_table, table_csv

    study = _study_from_args(args)
    if args.action == "run" and args.address is not None:
        check_cluster_address(args.address)  # before the data is read
    if args.gtsrb_dir:
        os.environ["GTSRB_DIR"] = args.gtsrb_dir  # the Ray workers read the same folder
    data = load_gtsrb(args.gtsrb_dir, progress=bar)
    if args.action == "run":
        run = run_study(study, data, address=args.address, progress=bar, device=args.device)
        return {"study": study.name, "cells": len(study.cells), **run.as_dict()}
    if args.action == "status":
        rows = study_status(study, data)
        steps = study.steps
        counts = {state: sum(row[s] == state for row in rows for s in steps) for state in ("cached", "running", "failed", "waiting")}
        return {"study": study.name, "cells": len(rows), "steps": counts, "rows": rows}
    table = study_table(study, data)
    return table_csv(table) if args.format == "csv" else {"study": study.name, "rows": table}


def build_parser() -> argparse.ArgumentParser:
    from .detectors import GWDistanceConfig

    parser = OneLineParser(prog="python -m core", description="Poison Lab: poison GTSRB, train, and measure the attack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="poison GTSRB and train (or load) the model; prints its metrics as JSON",
                                description="Poison GTSRB with the sticker attack, train the network (or load it from cache/) and print "
                                "clean test accuracy, source-class accuracy, attack success rate, epochs and wall time as one JSON line.")
    _add_experiment_options(train)
    _add_data_options(train)
    heatmaps = commands.add_parser(
        "heatmaps", help="LRP heatmaps of one class of the experiment's training set; prints a JSON summary",
        description="Compute (or load) LRP heatmaps for every training image of one class, then print: count, time, "
        "conservation gap, mean number of points at the mass threshold, and the share of relevance inside the sticker "
        "window for poisoned versus clean samples.")
    _add_lrp_options(heatmaps)
    heatmaps.add_argument("--threshold", type=THRESHOLD, default=0.99, help="mass threshold t of the point clouds, 0 < t <= 1 (default 0.99)")
    _add_experiment_options(heatmaps)
    _add_data_options(heatmaps)
    spectral = commands.add_parser("spectral", help="spectral analysis of one class's heatmaps; prints eigenvalues and detection metrics as JSON",
                                   description="kNN graph over the class's normalised LRP heatmaps, the smallest eigenvalues of its "
                                   "normalised Laplacian, the eigengap, spectral clustering, and the smaller cluster scored as poisoned.")
    _add_lrp_options(spectral)
    group = spectral.add_argument_group("spectral analysis")
    params.add_options(group, SpectralConfig)
    group.add_argument("--distance", default="euclidean", choices=("euclidean", "gw"),
                       help="distances between heatmaps: Euclidean (all samples) or Gromov-Wasserstein between point clouds (a random subset)")
    params.add_options(group, GWDistanceConfig)
    _add_experiment_options(spectral)
    _add_data_options(spectral)
    baselines = commands.add_parser("baselines", help="activation clustering, spectral signatures and raw-image clustering on one class, next to LRP spectral clustering",
                                    description="Score the standard detectors and the heatmap spectral clustering on the same model and class.")
    _add_lrp_options(baselines)
    baselines.add_argument("--cluster-seed", type=SEED, default=0, help="seed of ICA and k-means (default 0)")
    _add_experiment_options(baselines)
    _add_data_options(baselines)
    detect = commands.add_parser("detect", help="Gromov-Wasserstein k-means on one class's heatmap point clouds; prints per-iteration counts and metrics as JSON",
                                 description="k-means (k = 2) of the class's heatmap point clouds with entropic Gromov-Wasserstein distances "
                                 "and barycenters (thesis section 6.5); the smaller cluster is flagged as poisoned. Cached in cache/.")
    detect.add_argument("--method", default="gw", choices=("gw",), help="detection method (default gw)")
    _add_lrp_options(detect)
    from .presets import GW_RELEVANCE

    detect.set_defaults(rule=GW_RELEVANCE.rule, relevance_layer=GW_RELEVANCE.layer, positive=GW_RELEVANCE.positive)
    detect.add_argument("--signed", dest="positive", action="store_false",
                        help="read the signed heatmaps, negative relevance included (default for GW: their positive part, "
                             "the best setting measured on the default network; --positive is then implied)")
    group = detect.add_argument_group("Gromov-Wasserstein k-means (defaults: the thesis's)")
    params.add_options(group, GWConfig)
    group.add_argument("--eps-init", type=real(0.0, 10.0, open_low=True), default=None, help="entropic regularisation for k-means++ seeding (default: --eps)")
    group.add_argument("--cluster-seeds", type=SEED, nargs="+", default=None, metavar="SEED",
                       help="run once per seed and report each rate's median, minimum and maximum (instead of --cluster-seed)")
    _add_experiment_options(detect)
    _add_data_options(detect)
    defend = commands.add_parser("defend", help="evasion attacks against the poisoned and the clean model, with and without the barycentric defense; prints AA/BA as JSON",
                                 description="For each attack, the accuracy on attacked test images (AA) and on their barycenters (BA); clean and "
                                 "clean-barycenter accuracy (B6, B4); the sticker's success rate with and without the barycenter. The clean model "
                                 "is the same experiment with --fraction 0. Adversarial examples are cached in cache/.")
    group = defend.add_argument_group("attacks and defense (defaults: the paper's CIFAR-10 settings)")
    group.add_argument("--images", type=whole(1, 20_000), default=1000, help="seeded random sample of test images (default 1000)")
    group.add_argument("--attacks", nargs="+", default=list(ATTACK_NAMES), choices=ATTACK_NAMES, help="attacks (default: all)")
    group.add_argument("--eps-linf", type=BUDGET, default=8 / 255, help="L-infinity budget (default 8/255)")
    group.add_argument("--eps-l2", type=BUDGET, default=0.5, help="L2 budget (default 0.5)")
    _add_defense_options(group)
    group.add_argument("--sample-seed", type=SEED, default=0, help="seed of the image sample and the attacks' random starts (default 0)")
    group.add_argument("--models", default="both", choices=("both", "poisoned", "clean"), help="models to attack (default both)")
    _add_experiment_options(defend)
    _add_data_options(defend)
    spatial = commands.add_parser("spatial", help="test-time spatial transformations as a defense against the sticker; prints clean accuracy and ASR per transformation as JSON",
                                  description="Clean accuracy (whole test split) and attack success rate (every stickered source-class test "
                                  "image) of the experiment's model without and with each transformation (thesis 7.2). Cached in cache/.")
    spatial.add_argument("--transforms", nargs="+", default=list(DEFAULT_TRANSFORMS), metavar="T",
                         help="flip, scale=F (0.5 … 2), rotate=DEGREES, shift=DX,DY (pixels right, down); "
                              f"default: {' '.join(DEFAULT_TRANSFORMS)}")
    _add_experiment_options(spatial)
    _add_data_options(spatial)
    cleanse = commands.add_parser("cleanse", help="remove what a detector flags in the target class, retrain, and print clean accuracy and ASR before and after as JSON",
                                  description="For each method: the target-class training samples it flags are removed and the model is "
                                  "retrained with the same seed; truth (the poisoned samples) and random (as many random samples of the "
                                  "class) bracket the detectors. Retrained models are cached in cache/.")
    cleanse.add_argument("--method", nargs="+", default=list(DEFAULT_METHODS), metavar="M",
                         help=f"{', '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)})")
    _add_experiment_options(cleanse)
    _add_data_options(cleanse)
    inspect = commands.add_parser("inspect", help="attack a few images and purify them; prints predictions and confidences as JSON",
                                  description="For test images (or one PNG/JPEG file): the model's prediction and confidence on the clean image, "
                                  "the attacked image, the barycenter of the attacked image and the barycenter of the clean image. Without a "
                                  "label (--image), the attack moves the image away from the clean prediction. The numbers of the Defense page.")
    source = inspect.add_mutually_exclusive_group()
    source.add_argument("--test-index", type=whole(0), nargs="+", help="positions in the test split")
    source.add_argument("--image", type=PathOption(READ), help="a PNG or JPEG file of any size (resized to 32x32)")
    group = inspect.add_argument_group("attack and defense")
    group.add_argument("--model", default="poisoned", choices=("poisoned", "clean"), help="the experiment's model or its clean twin (default poisoned)")
    group.add_argument("--attack", default="pgd-linf", choices=ATTACK_NAMES, help="attack (default pgd-linf)")
    group.add_argument("--eps", type=BUDGET, default=None, help="budget (default 8/255 for L-infinity attacks, 0.5 for L2)")
    group.add_argument("--attack-seed", type=SEED, default=0, help="seed of the attack's random start (default 0)")
    group.add_argument("--sensitivity", choices=("clean", "attacked"), default=None,
                       help="also the sensitivity grid (gamma, theta, tau, iterations, cost unit) of the first image, clean or attacked")
    _add_defense_options(group)
    _add_experiment_options(inspect)
    _add_data_options(inspect)
    data = commands.add_parser("data", help="load GTSRB (building its cache) and print split sizes as JSON",
                               description="Read GTSRB from --gtsrb-dir or $GTSRB_DIR (class folders or the official release), decode "
                               "it once into cache/, and print its folder, layout, content id, split sizes and training images per class.")
    _add_data_options(data)
    download = commands.add_parser("download", help="download the official GTSRB release (online only) and verify its checksums",
                                   description="Download the official GTSRB archives into --dest, check each archive's checksum, unpack "
                                   "them, and print the folder to use as GTSRB_DIR. Needs a connection to the archives' server.")
    download.add_argument("--dest", required=True, type=PathOption(DESTINATION), help="folder to download and unpack into")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    export = commands.add_parser("export", help="per-sample detection results (CSV), the experiment and its metrics (JSON), a ViRelAy project (HDF5)",
                                 description="CSV: one row per training image of the class with its poison truth and every detection method's "
                                 "flag and score (GW k-means when cached). JSON: configuration, model metrics, detection scores. "
                                 "ViRelAy: project.yaml with data set, LRP attribution and spectral-analysis HDF5 files; open it with `virelay project.yaml`.")
    export.add_argument("--csv", type=PathOption(WRITE), help="write the per-sample detection table here")
    export.add_argument("--json", type=PathOption(WRITE), help="write the experiment, its metrics and the detection scores here")
    export.add_argument("--virelay", type=PathOption(NEW_FOLDER), help="write a ViRelAy project into this new folder")
    export.add_argument("--virelay-classes", type=CLASS, nargs="+", help="classes in the ViRelAy project (default: --class)")
    export.add_argument("--cluster-seed", type=SEED, default=0, help="seed of the clusterings (default 0)")
    _add_lrp_options(export)
    _add_experiment_options(export)
    _add_data_options(export)
    cache = commands.add_parser("cache", help="list the cached artifacts (kind, size, age, parameters) or delete some by name",
                                description="The files in cache/ (or $POISONLAB_CACHE), read from their headers only; "
                                "'delete' removes the named files, which are recomputed when next needed.")
    cache.add_argument("action", choices=("list", "delete"), help="list: every file with its kind, size, age and parameters; delete: the named files")
    cache.add_argument("names", nargs="*", help="with delete: file names as listed")
    study = commands.add_parser("study", help="a grid of experiments on Ray: run it, show each cell's state, or print its table",
                                description="A study sweeps attack and training parameters over a grid (a TOML file, or --grid/--base); "
                                "every cell is an ordinary cached experiment. 'run' computes what is missing on Ray (a local runtime, "
                                "or --address of a cluster whose nodes share the cache folder); 'status' lists each cell's steps; "
                                "'table' prints the results with mean and standard deviation over training seeds.")
    study.add_argument("action", choices=("run", "status", "table"),
                       help="run: compute what is missing; status: each cell's steps; table: the results")
    study.add_argument("file", nargs="?", type=PathOption(READ), help="the study's TOML file")
    study.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="without a file: the grid's axes, e.g. pp=0.01,0.33 seed=0,1")
    study.add_argument("--base", nargs="+", metavar="KEY=VALUE", help="without a file: parameters every cell shares, e.g. epochs=6")
    study.add_argument("--detectors", nargs="+", choices=("spectral", "gw", "activation", "signatures"), help="without a file: detectors to score")
    study.add_argument("--name", help="without a file: the study's name")
    study.add_argument("--address", help="with run: the Ray cluster to use (default: a local runtime sized to this machine)")
    study.add_argument("--format", choices=("csv", "json"), default="json", help="with table: CSV or JSON (default)")
    _add_device_option(study)
    _add_data_options(study)
    from .presets import PRESETS

    parser.command_parsers = commands.choices
    parser.preset_parsers = {"heatmaps": heatmaps, "spectral": spectral, "detect": detect}
    for sub in parser.preset_parsers.values():
        sub.add_argument("--preset", choices=tuple(PRESETS), default=None,
                         help="start from a named setting (network, relevance, clouds, k-means protocol); options given as well win: "
                              + "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items()).replace("%", "%%"))
    return parser


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, with a --preset's and a --recipe's settings as the defaults of the options not given."""
    from .presets import preset
    from .recipes import recipe

    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = {}
    if getattr(args, "preset", None):
        defaults.update(preset(args.preset).option_defaults())
    if getattr(args, "recipe", None):
        defaults.update(recipe(args.recipe).option_defaults())
    if defaults:
        sub = parser.command_parsers[args.command]
        known = {action.dest for action in sub._actions}
        sub.set_defaults(**{k: v for k, v in defaults.items() if k in known})
        args = parser.parse_args(argv)
    return args


def _fail(bar: _Bar, code: int, error) -> int:
    bar.close()
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_arguments(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    bar = _Bar(enabled=not getattr(args, "quiet", False) and os.environ.get("POISONLAB_NO_PROGRESS") != "1")
    handler = {"train": _cmd_train, "heatmaps": _cmd_heatmaps, "spectral": _cmd_spectral, "baselines": _cmd_baselines, "detect": _cmd_detect,
               "defend": _cmd_defend, "spatial": _cmd_spatial, "cleanse": _cmd_cleanse, "inspect": _cmd_inspect, "data": _cmd_data, "download": _cmd_download,
               "cache": _cmd_cache, "export": _cmd_export, "study": _cmd_study}[args.command]
    try:
        if getattr(args, "device", None) is not None:
            from .device import DeviceConfig, use_device

            device = DeviceConfig(args.device).device
            if args.command != "study":
                use_device(device)  # a GPU this machine lacks fails here, before any work
            elif ":" in device:  # a study's steps compute on the cluster's nodes, on the GPU Ray gives each
                raise ConfigError(f"a study's steps run on whichever GPU Ray gives them: --device must be auto, cpu or cuda, got {args.device!r}")
        result = handler(args, bar)
    except (ConfigError, DataError) as exc:  # the input: a parameter, a file or the data folder
        return _fail(bar, 2, exc)
    except PoisonLabError as exc:  # the run: a damaged artifact, a cluster that cannot be joined
        return _fail(bar, 1, exc)
    except OSError as exc:  # the run: a file that could not be written, a full disk
        return _fail(bar, 1, f"{exc.filename or 'a file'}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return _fail(bar, 130, "interrupted; what was finished is cached, the rest is computed on the next run")
    except Exception as exc:  # a defect: still one line, with what to report
        if os.environ.get("POISONLAB_TRACEBACK") == "1":
            raise
        return _fail(bar, 1, f"unexpected {type(exc).__name__}: {exc} (a defect of Poison Lab; "
                             "run again with POISONLAB_TRACEBACK=1 for the traceback)")
    bar.close()
    print(result if isinstance(result, str) else json.dumps(result))
    failed = result.get("failed") if isinstance(result, dict) else None
    for step, error in (failed or {}).items():  # a study's failed steps: the others went on
        print(f"error: {step}: {error}", file=sys.stderr)
    return 1 if failed else 0
