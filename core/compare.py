"""Every detection method on one class of an experiment, scored against the same truth.

The thesis's reference figures for the default experiment (s = 2, pp = 0.33, class 5) are
kept here so that the CLI and the page print them next to ours.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .baselines import activation_clustering, penultimate_activations, raw_image_clustering, spectral_signatures
from .detection import DetectionScore, flag_smaller_cluster, score_detection
from .errors import ConfigError
from .pointcloud import normalised_mass
from .progress import ProgressCallback, report
from .heatmaps import check_class, experiment_heatmaps
from .lrp import LRPConfig
from .spectral import SpectralConfig, SpectralResult, analyse, euclidean_distances, fiedler_score

THESIS_EUCLIDEAN_SPECTRAL = {"tn": 1650, "fp": 0, "fn": 386, "tp": 427}
THESIS_GROMOV_WASSERSTEIN = {"tn": 1621, "fp": 29, "fn": 27, "tp": 786}


def heatmap_spectral(experiment, class_id: int, lrp: LRPConfig, spectral: SpectralConfig, data=None,
                     progress: Optional[ProgressCallback] = None):
    """Euclidean spectral clustering of the class's normalised heatmaps, with its score."""
    heatmaps = experiment_heatmaps(experiment, check_class(class_id), lrp, data, progress=progress)
    features = normalised_mass(heatmaps.heatmaps).reshape(len(heatmaps), -1).numpy()
    result = analyse(euclidean_distances(features), spectral)
    flagged = flag_smaller_cluster(result.assignments)
    score = score_detection(heatmaps.poison_mask.numpy(), flagged, fiedler_score(result, flagged))
    return heatmaps, result, flagged, score


@dataclass(frozen=True)
class GWDistanceConfig:
    """Pairwise GW distances for the spectral view: a random subset of the class (each pair
    costs a GW solve), heatmaps pooled to a coarser grid, ε where the inner problems are easy."""

    samples: int = 200
    threshold: float = 0.99
    epsilon: float = 0.01
    pool: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        from .pointcloud import check_threshold

        check_threshold(self.threshold)
        for name, low, high in (("samples", 3, 2000), ("seed", 0, 2**32 - 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
                raise ConfigError(f"{name} must be a whole number in {low} … {high}, got {value!r}")
        if self.pool not in (1, 2, 4, 8):
            raise ConfigError(f"pool must be 1, 2, 4 or 8, got {self.pool!r}")
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, numbers.Real) or not math.isfinite(self.epsilon) or not 0 < self.epsilon <= 10:
            raise ConfigError(f"epsilon must be a number in (0, 10], got {self.epsilon!r}")


def gw_distances_path(experiment, class_id: int, lrp: LRPConfig, config: GWDistanceConfig, data):
    from .cache import cache_dir, config_hash
    from .experiment import model_path
    from .heatmaps import heatmaps_path

    name = heatmaps_path(model_path(data, experiment).name, check_class(class_id), lrp).name
    return cache_dir() / f"gwdist-{config_hash(1, name, config)}.safetensors"


def gw_distances(experiment, class_id: int, lrp: LRPConfig, config: GWDistanceConfig, data=None,
                 progress: Optional[ProgressCallback] = None, use_cache: bool = True):
    """Pairwise GW distances between the heatmap clouds of a random subset of the class,
    cached per (heatmaps, config). Returns the heatmaps, the subset (positions in the class)
    and the distance matrix."""
    import torch

    from .cache import cached
    from .data import load_gtsrb
    from .experiment import model_path
    from .gromov import pairwise_gw
    from .heatmaps import heatmaps_path

    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    heatmaps = experiment_heatmaps(experiment, class_id, lrp, data, progress=progress)
    name = heatmaps_path(model_path(data, experiment).name, class_id, lrp).name

    def compute():
        count = min(config.samples, len(heatmaps))
        subset = np.sort(np.random.default_rng(config.seed).choice(len(heatmaps), count, replace=False))
        distances = pairwise_gw(heatmaps.heatmaps[torch.from_numpy(subset)], config.threshold, config.epsilon, config.pool,
                                progress=progress)
        return subset, distances.numpy()

    def encode(result):
        subset, distances = result
        return {"subset": torch.from_numpy(subset), "distances": torch.from_numpy(distances)}, {"config": config.__dict__, "heatmaps": name}

    def decode(tensors, meta):
        return tensors["subset"].numpy(), tensors["distances"].numpy()

    subset, distances = cached(gw_distances_path(experiment, class_id, lrp, config, data), compute, encode, decode, use_cache, progress)
    return heatmaps, subset, distances


BASELINES = ("activation clustering", "spectral signatures", "raw images")


def baseline_detections(experiment, class_id: int, data=None, seed: int = 0,
                        progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, object]]:
    """Per-sample flags and suspicion scores of activation clustering, spectral signatures and
    raw-image clustering on the class, in the order of the class's training images."""
    from .data import load_gtsrb
    from .experiment import poisoned_data, train_or_load

    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress)
    train = poisoned_data(data, experiment).train
    index = (train.labels == class_id).nonzero().flatten()
    images = train.images[index]
    activations = penultimate_activations(trained.model, images)
    methods = {"activation clustering": lambda: activation_clustering(activations, seed),
               "spectral signatures": lambda: spectral_signatures(activations, seed),
               "raw images": lambda: raw_image_clustering(images, seed)}
    results = {}
    for step, name in enumerate(BASELINES, start=1):
        started = time.perf_counter()
        flagged, score = methods[name]()
        results[name] = {"flagged": flagged, "score": score, "truth": train.poison_mask[index].numpy(),
                         "seconds": round(time.perf_counter() - started, 3)}
        report(progress, "baselines", step, len(methods), name)
    return results


def baseline_scores(experiment, class_id: int, data=None, seed: int = 0,
                    progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, object]]:
    """Activation clustering, spectral signatures and raw-image clustering on the class, scored."""
    detections = baseline_detections(experiment, class_id, data, seed, progress)
    return {name: {**score_detection(d["truth"], d["flagged"], d["score"]).as_dict(), "seconds": d["seconds"]}
            for name, d in detections.items()}


def spectral_summary(result: SpectralResult, score: DetectionScore, seconds: float) -> Dict[str, object]:
    return {
        "eigenvalues": [round(float(v), 6) for v in result.eigenvalues],
        "eigengap_clusters": result.eigengap_clusters,
        "cluster_sizes": np.bincount(result.assignments).tolist(),
        **score.as_dict(),
        "seconds": round(seconds, 3),
    }
