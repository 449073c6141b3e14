"""Every detection method on one class of an experiment, scored against the same truth.

The thesis's reference figures for the default experiment (s = 2, pp = 0.33, class 5) are
kept here so that the CLI and the page print them next to ours.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from .baselines import activation_clustering, penultimate_activations, raw_image_clustering, spectral_signatures
from .detection import DetectionScore, flag_smaller_cluster, score_detection
from .pointcloud import normalised_mass
from .progress import ProgressCallback, report
from .relevance import LRPConfig, check_class, experiment_heatmaps
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


def baseline_scores(experiment, class_id: int, data=None, seed: int = 0,
                    progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, object]]:
    """Activation clustering, spectral signatures and raw-image clustering on the class."""
    from .data import load_gtsrb
    from .experiment import poisoned_data, train_or_load

    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress)
    train = poisoned_data(data, experiment).train
    index = (train.labels == class_id).nonzero().flatten()
    truth = train.poison_mask[index].numpy()
    images = train.images[index]
    activations = penultimate_activations(trained.model, images)
    results = {}
    methods = (("activation clustering", lambda: activation_clustering(activations, seed)),
               ("spectral signatures", lambda: spectral_signatures(activations, seed)),
               ("raw images", lambda: raw_image_clustering(images, seed)))
    for step, (name, method) in enumerate(methods, start=1):
        started = time.perf_counter()
        flagged, score = method()
        results[name] = {**score_detection(truth, flagged, score).as_dict(), "seconds": round(time.perf_counter() - started, 3)}
        report(progress, "baselines", step, len(methods), name)
    return results


def spectral_summary(result: SpectralResult, score: DetectionScore, seconds: float) -> Dict[str, object]:
    return {
        "eigenvalues": [round(float(v), 6) for v in result.eigenvalues],
        "eigengap_clusters": result.eigengap_clusters,
        "cluster_sizes": np.bincount(result.assignments).tolist(),
        **score.as_dict(),
        "seconds": round(seconds, 3),
    }
