"""Cleanse and retrain: a detection is worth what it does to the model.

A method flags training samples of the target class; they are removed and the model is trained
again from scratch with the same seed, schedule and validation split. Its clean accuracy and
attack success rate after, beside those of the poisoned model, say whether the detector removed
the backdoor. Two references bracket the detectors: the ground truth (every poisoned sample
removed, nothing else: the best any detector can do) and a random removal of as many samples of
the class (what removing that many costs without any detection).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .cache import cache_dir, config_hash
from .detectors import DETECTORS, detect, detector_settings
from .errors import ConfigError
from .experiment import ExperimentConfig, model_path, poisoned_data, train_or_load, train_without
from .progress import ProgressCallback, report

METHODS = {"truth": "ground truth: exactly the poisoned samples (the upper bound)",
           "random": "as many random samples of the class as are poisoned (the lower bound)",
           **DETECTORS}
DEFAULT_METHODS = ("truth", "random", "spectral", "gw", "activation")
_CLEANSE_VERSION = 1


def check_methods(methods: Sequence[str]) -> tuple:
    chosen = tuple(dict.fromkeys(methods))
    if not chosen:
        raise ConfigError("choose at least one cleansing method")
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown cleansing method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return chosen


def removal(experiment: ExperimentConfig, method: str, data, progress: Optional[ProgressCallback] = None,
            seed: int = 0) -> torch.Tensor:
    """Which training samples `method` removes: bool over the experiment's training split, True
    only inside the target class."""
    train = poisoned_data(data, experiment).train
    in_class = torch.nonzero(train.labels == experiment.poison.target).flatten()
    removed = torch.zeros(len(train), dtype=torch.bool)
    if method == "truth":
        removed[in_class] = train.poison_mask[in_class]
    elif method == "random":
        count = int(train.poison_mask[in_class].sum())
        chosen = np.random.default_rng(seed).choice(len(in_class), size=count, replace=False)
        removed[in_class[torch.from_numpy(np.sort(chosen))]] = True
    else:
        found = detect(experiment, method, experiment.poison.target, data, progress=progress)
        if len(found.flagged) != len(in_class):
            raise ConfigError(f"{method} scored {len(found.flagged):,} samples of the class, not all {len(in_class):,}")
        removed[in_class] = torch.as_tensor(np.asarray(found.flagged), dtype=torch.bool)
    return removed


def cleansed_path(experiment: ExperimentConfig, method: str, data):
    """The retrained model's file, named by the poisoned model and the method (with its defaults)."""
    return cache_dir() / (f"cleansed-{experiment.train.architecture}-"
                          f"{config_hash(_CLEANSE_VERSION, model_path(data, experiment).name, method, *detector_settings(method))}.safetensors")


def cleanse(experiment: ExperimentConfig, method: str, data=None, progress: Optional[ProgressCallback] = None,
            use_cache: bool = True) -> Dict[str, Any]:
    """Remove what `method` flags in the target class, retrain with the same seed, and measure."""
    from .data import load_gtsrb

    check_methods([method])
    data = data if data is not None else load_gtsrb(progress=progress)
    before = train_or_load(experiment, data, progress=progress, use_cache=use_cache).metrics
    path = cleansed_path(experiment, method, data)
    known = cached_cleanse(experiment, method, data) if use_cache else None
    if known is not None:
        return known
    removed = removal(experiment, method, data, progress)
    poison_mask = poisoned_data(data, experiment).train.poison_mask
    summary = {"method": method, "removed": int(removed.sum()), "removed_poisoned": int((removed & poison_mask).sum()),
               "removed_clean": int((removed & ~poison_mask).sum()), "poisoned_left": int((~removed & poison_mask).sum())}
    after = train_without(experiment, data, removed, path, progress, use_cache, note=summary).metrics
    return _row(summary, before, after)


def _row(summary: Dict[str, Any], before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    return {**summary, "clean_accuracy_before": before["clean_accuracy"], "attack_success_rate_before": before["attack_success_rate"],
            "clean_accuracy": after["clean_accuracy"], "attack_success_rate": after["attack_success_rate"], "epochs": after["epochs"]}


def cached_cleanse(experiment: ExperimentConfig, method: str, data) -> Optional[Dict[str, Any]]:
    """The row of a finished cleansing, from the two models' metadata alone, or None."""
    from .cache import artifact_meta
    from .errors import ArtifactError

    try:
        after = artifact_meta(cleansed_path(experiment, method, data))
        before = artifact_meta(model_path(data, experiment))
    except (FileNotFoundError, ArtifactError):
        return None
    if not after.get("note"):
        return None
    return _row(after["note"], before["metrics"], after["metrics"])


def cleanse_table(experiment: ExperimentConfig, methods: Sequence[str] = DEFAULT_METHODS, data=None,
                  progress: Optional[ProgressCallback] = None, use_cache: bool = True) -> List[Dict[str, Any]]:
    """`cleanse` for each method, in order."""
    from .data import load_gtsrb

    methods = check_methods(methods)
    data = data if data is not None else load_gtsrb(progress=progress)
    rows = []
    for step, method in enumerate(methods):
        report(progress, "cleanse", step, len(methods), f"{method}: {METHODS[method]}")
        rows.append(cleanse(experiment, method, data, progress, use_cache))
    report(progress, "cleanse", len(methods), len(methods), "done")
    return rows
