"""Scoring a poison detector against the ground truth, the same way for every method.

A clustering method flags its smaller cluster as poisoned (the thesis's convention: the
attacker poisons a minority of the class). Confusion counts follow the thesis's order
(tn, fp, fn, tp) with "positive" = poisoned. ROC-AUC needs a continuous score (higher =
more suspicious); it is never computed from hard labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
from sklearn.metrics import roc_auc_score

from .errors import ConfigError


@dataclass(frozen=True)
class DetectionScore:
    tn: int
    fp: int
    fn: int
    tp: int
    accuracy: float
    tpr: float
    tnr: float
    f1: float
    auc: Optional[float]

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def _as_bool(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ConfigError(f"{name} must hold only true/false (or 0/1) values")
        array = array.astype(bool)
    return array


def flag_smaller_cluster(assignments) -> np.ndarray:
    """True for the members of the smallest cluster (ties: the lower cluster id)."""
    labels = np.asarray(assignments)
    if labels.ndim != 1 or labels.size == 0:
        raise ConfigError("cluster assignments must be a non-empty one-dimensional array")
    ids, counts = np.unique(labels, return_counts=True)
    return labels == ids[np.argmin(counts)]


def score_detection(truth, flagged, score=None) -> DetectionScore:
    """Confusion counts and rates of `flagged` against `truth` (both bool, True = poisoned);
    ROC-AUC of the continuous `score` if given and both classes are present."""
    truth = _as_bool(truth, "poison truth")
    flagged = _as_bool(flagged, "flags")
    if truth.shape != flagged.shape:
        raise ConfigError(f"truth and flags differ in length ({truth.size} vs {flagged.size})")
    if truth.size == 0:
        raise ConfigError("nothing to score: no samples")
    tp = int(np.sum(truth & flagged))
    tn = int(np.sum(~truth & ~flagged))
    fp = int(np.sum(~truth & flagged))
    fn = int(np.sum(truth & ~flagged))
    positives, negatives = tp + fn, tn + fp
    tpr = tp / positives if positives else float("nan")
    tnr = tn / negatives if negatives else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    auc = None
    if score is not None:
        values = np.asarray(score, dtype=float)
        if values.shape != truth.shape:
            raise ConfigError(f"score and truth differ in length ({values.size} vs {truth.size})")
        if not np.isfinite(values).all():
            raise ConfigError("detection scores contain NaN or infinite values")
        if positives and negatives:
            auc = float(roc_auc_score(truth, values))
    return DetectionScore(tn, fp, fn, tp, (tp + tn) / truth.size, tpr, tnr, f1, auc)


def spectral_summary(result, score: DetectionScore, seconds: float) -> Dict[str, object]:
    """A spectral clustering's spectrum, clusters and score: the JSON the CLI prints."""
    return {
        "eigenvalues": [round(float(v), 6) for v in result.eigenvalues],
        "eigengap_clusters": result.eigengap_clusters,
        "cluster_sizes": np.bincount(result.assignments).tolist(),
        **score.as_dict(),
        "seconds": round(seconds, 3),
    }


RATES = ("accuracy", "tpr", "tnr", "f1")


def over_seeds(scores: Dict[int, DetectionScore]) -> Dict[str, object]:
    """Median, minimum and maximum of each rate over the runs of several cluster seeds, with every
    seed's counts: one seed's figure can sit anywhere in a wide spread."""
    if not scores:
        raise ConfigError("no runs to summarise")
    out: Dict[str, object] = {"seeds": len(scores)}
    for rate in RATES:
        values = np.array([getattr(score, rate) for score in scores.values()], dtype=float)
        out[rate] = {"median": round(float(np.median(values)), 6), "min": round(float(values.min()), 6), "max": round(float(values.max()), 6)}
    out["per_seed"] = [{"seed": seed, "tn": s.tn, "fp": s.fp, "fn": s.fn, "tp": s.tp, "accuracy": s.accuracy, "tpr": s.tpr, "tnr": s.tnr}
                       for seed, s in scores.items()]
    return out
