"""The detection steps: each detector on one class of an experiment, as every view runs it.

A step takes (experiment, class, parameters, data, progress), reads and writes the cache where
its detector is cached, and returns a `Detection`. The Spectral and GW detection pages, `python
-m core spectral|baselines|detect` and the export call the same step with the same parameters,
so they cannot disagree. The thesis's figures for the default experiment (s = 2, pp = 0.33,
class 5) sit beside the step they are compared with.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .baselines import activation_clustering, penultimate_activations, raw_image_clustering, spectral_signatures
from .cache import cache_dir, cached, config_hash, load_cached
from .data import load_gtsrb
from .detection import DetectionScore, flag_smaller_cluster, score_detection
from .errors import ConfigError
from .experiment import poisoned_data, train_or_load
from .grid_clouds import GridClouds
from .gw_kmeans import GWConfig, GWIteration, GWResult, gw_kmeans
from .heatmaps import ClassHeatmaps, check_class, experiment_heatmaps, experiment_heatmaps_path
from .lrp import LRPConfig
from .presets import GW_RELEVANCE
from .params import REAL, WHOLE, check_declared, parameter
from .pointcloud import check_threshold, normalised_mass
from .progress import ProgressCallback, report
from .spectral import SpectralConfig, analyse, embed_2d, euclidean_distances, fiedler_score
from .validation import one_of, whole_number


@dataclass(frozen=True, eq=False)
class Detection:
    """One detector's outcome on the samples it ran on, in the order of the class's training images."""

    heatmaps: Optional[ClassHeatmaps]  # of the scored samples; None for the baselines, which do not read heatmaps
    result: Any  # the method's own result (SpectralResult, GWResult); None for the baselines
    flagged: np.ndarray  # bool (N,): flagged as poisoned
    suspicion: np.ndarray  # (N,): higher = more suspicious; what ROC-AUC ranks
    truth: np.ndarray  # bool (N,): poisoned
    score: DetectionScore
    seconds: float

    def __iter__(self):
        """Unpacks as (heatmaps, result, flagged, score), what the heatmap views take."""
        return iter((self.heatmaps, self.result, self.flagged, self.score))


def _scored(heatmaps, result, flagged, suspicion, truth, started: float) -> Detection:
    return Detection(heatmaps, result, flagged, suspicion, truth, score_detection(truth, flagged, suspicion),
                     time.perf_counter() - started)


# ------------------------------------------------------------------ spectral clustering of heatmaps

THESIS_EUCLIDEAN_SPECTRAL = {"tn": 1650, "fp": 0, "fn": 386, "tp": 427}


def thesis_spectral(experiment, class_id: int) -> Optional[Dict[str, int]]:
    """The thesis's Euclidean spectral clustering counts, for the setting it measured them in."""
    return THESIS_EUCLIDEAN_SPECTRAL if _thesis_setting(experiment, class_id) else None


def _thesis_setting(experiment, class_id: int) -> bool:
    return experiment == type(experiment)() and class_id == experiment.poison.target


def heatmap_features(heatmaps: ClassHeatmaps) -> np.ndarray:
    """The heatmaps as the spectral analysis compares them: normalised mass, one row per sample."""
    return normalised_mass(heatmaps.heatmaps).reshape(len(heatmaps), -1).numpy()


def _spectral(heatmaps: ClassHeatmaps, distances, spectral: SpectralConfig, started: float) -> Detection:
    result = analyse(distances, spectral)
    flagged = flag_smaller_cluster(result.assignments)
    return _scored(heatmaps, result, flagged, fiedler_score(result, flagged), heatmaps.poison_mask.numpy(), started)


def heatmap_spectral(experiment, class_id: int, lrp: LRPConfig, spectral: SpectralConfig, data=None,
                     progress: Optional[ProgressCallback] = None) -> Detection:
    """Euclidean spectral clustering of the class's normalised heatmaps (SpRAy), every sample."""
    started = time.perf_counter()
    heatmaps = experiment_heatmaps(experiment, check_class(class_id), lrp, data, progress=progress)
    return _spectral(heatmaps, euclidean_distances(heatmap_features(heatmaps)), spectral, started)


def embedding_path(source: str, method: str, config: SpectralConfig) -> Path:
    """Where the 2-D embedding `method` of the class whose distances come from the artifact `source` is cached."""
    on_spectral = asdict(config) if method.endswith("-spectral") else None
    return cache_dir() / f"embedding-{method}-{config_hash(1, source, method, config.seed, on_spectral)}.safetensors"


def class_embedding(source: str, method: str, config: SpectralConfig, features: np.ndarray, result,
                    progress: Optional[ProgressCallback] = None, use_cache: bool = True) -> np.ndarray:
    """Coordinates of the class for the scatter plot: `method` is an embedding of core.spectral,
    of the features or, with "-spectral", of the spectral embedding. Cached per source artifact, so a
    t-SNE or UMAP is fitted once and any later view shows it at once."""
    base, _, on = method.partition("-")
    x = result.embedding[:, : max(config.n_clusters, 3)] if on == "spectral" else features

    def compute() -> np.ndarray:
        report(progress, "embedding", 0, 1, f"fitting {base.upper() if base != 'tsne' else 't-SNE'} to {len(x):,} samples")
        return np.asarray(embed_2d(x, base, config.seed, result), dtype=np.float32)

    def encode(coords: np.ndarray):
        return {"coords": torch.from_numpy(np.ascontiguousarray(coords))}, {"method": method, "source": source, "seed": config.seed}

    return cached(embedding_path(source, method, config), compute, encode, lambda tensors, meta: tensors["coords"].numpy(),
                  use_cache, progress, measure=(embedding_step(method), len(x)))


def embedding_step(method: str) -> str:
    """The name under which an embedding's duration per sample is measured (core.durations)."""
    return f"embedding {method.partition('-')[0]}"


@dataclass(frozen=True)
class GWDistanceConfig:
    """Pairwise GW distances for the spectral view: a random subset of the class (each pair
    costs a GW solve), heatmaps pooled to a coarser grid, ε where the inner problems are easy."""

    samples: int = parameter(200, WHOLE, "--gw-samples", label="samples", help="with --distance gw: samples in the subset",
                             low=3, high=2000)
    threshold: float = parameter(0.99, REAL, "--threshold", label="mass threshold t",
                                 help="with --distance gw: mass threshold of the clouds", low=0.0, high=1.0, open_low=True)
    epsilon: float = parameter(0.01, REAL, "--gw-eps", label="ε", help="with --distance gw: entropic regularisation",
                               low=0.0, high=10.0, open_low=True)
    pool: int = parameter(4, WHOLE, "--gw-pool", label="pooling",
                          help="with --distance gw: sum heatmaps over pool x pool blocks first (1, 2, 4 or 8; 4: 8x8 clouds)")
    seed: int = 0  # on the command line, --cluster-seed, shared with the spectral clustering

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_declared(self)
        one_of("pool", self.pool, (1, 2, 4, 8))
        whole_number("seed", self.seed, 0, 2**32 - 1)


def _heatmaps_file(experiment, class_id: int, lrp: LRPConfig, data) -> str:
    return experiment_heatmaps_path(experiment, check_class(class_id), lrp, data).name


def gw_distances_path(experiment, class_id: int, lrp: LRPConfig, config: GWDistanceConfig, data):
    return cache_dir() / f"gwdist-{config_hash(1, _heatmaps_file(experiment, class_id, lrp, data), config)}.safetensors"


PAIRWISE_GW_STEP = "pairwise gw"  # its duration per pair is measured per CPU (core.durations)


def _gw_distances(experiment, class_id: int, lrp: LRPConfig, config: GWDistanceConfig, data,
                  progress: Optional[ProgressCallback], use_cache: bool):
    """Pairwise GW distances between the heatmap clouds of a random subset of the class,
    cached per (heatmaps, config). Returns the heatmaps, the subset (positions in the class)
    and the distance matrix."""
    import torch

    from .gromov import pairwise_gw

    heatmaps = experiment_heatmaps(experiment, class_id, lrp, data, progress=progress)
    name = _heatmaps_file(experiment, class_id, lrp, data)

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

    count = min(config.samples, len(heatmaps))
    subset, distances = cached(gw_distances_path(experiment, class_id, lrp, config, data), compute, encode, decode, use_cache, progress,
                               measure=(PAIRWISE_GW_STEP, count * (count - 1) / 2))
    return heatmaps, subset, distances


def _members(heatmaps: ClassHeatmaps, positions: np.ndarray) -> ClassHeatmaps:
    import torch

    index = torch.from_numpy(positions)
    return dataclasses.replace(heatmaps, **{f.name: getattr(heatmaps, f.name)[index] for f in dataclasses.fields(heatmaps)
                                            if isinstance(getattr(heatmaps, f.name), torch.Tensor)})


def gw_spectral(experiment, class_id: int, lrp: LRPConfig, spectral: SpectralConfig, config: GWDistanceConfig, data=None,
                progress: Optional[ProgressCallback] = None, use_cache: bool = True) -> Detection:
    """Spectral clustering on Gromov–Wasserstein distances between the heatmap clouds of a
    random subset of the class; the outcome's heatmaps are the subset's."""
    started = time.perf_counter()
    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    heatmaps, subset, distances = _gw_distances(experiment, class_id, lrp, config, data, progress, use_cache)
    return _spectral(_members(heatmaps, subset), distances, spectral, started)


# ------------------------------------------------------------------ GW k-means

# thesis table 2, s = 2, pp = 0.33; it prints TPR 96.98, a misprint of its counts' 786 / 813 = 96.68 %
THESIS_GW_RATES = {"accuracy": 0.9817, "tpr": 0.9668, "tnr": 0.9891}
THESIS_GROMOV_WASSERSTEIN = {"tn": 1621, "fp": 29, "fn": 27, "tp": 786}


def thesis_gw(experiment, class_id: int, config: GWConfig) -> Optional[Dict[str, object]]:
    """The thesis's GW k-means rates (table 2) and its counts after iteration 3, for the setting
    it measured them in."""
    if not _thesis_setting(experiment, class_id) or config.threshold != 0.99:
        return None
    return {**THESIS_GW_RATES, "iteration_3": THESIS_GROMOV_WASSERSTEIN}


_GW_ARTIFACT_VERSION = 7  # 7: no subnormal floats in the transport (a term 40 bits below its column is 0); 6: float32 C T all separable, fused transport and loss; 5: seed plans as first starts


def detection_path(heatmaps_file: str, config: GWConfig) -> Path:
    return cache_dir() / f"gw-{config_hash(_GW_ARTIFACT_VERSION, heatmaps_file, asdict(config))}.safetensors"


def _encode_gw(result: GWResult):
    tensors = {"assignments": torch.from_numpy(np.stack([it.assignments for it in result.iterations]).astype(np.int8)),
               "distances": torch.from_numpy(result.distances), "barycenters": torch.from_numpy(result.barycenters)}
    meta = {"config": asdict(result.config), "seeds": result.seeds, "seconds": result.seconds, "converged": result.converged,
            "iterations": [{"counts": it.counts, "seconds": it.seconds, "barycenter_updates": it.barycenter_updates, "objective": it.objective}
                           for it in result.iterations]}
    return tensors, meta


def _gw_decoder(config: GWConfig):
    def decode(tensors, meta) -> GWResult:
        assignments = tensors["assignments"].long().numpy()
        iterations = [GWIteration(a, it["counts"], it["seconds"], it["barycenter_updates"], it.get("objective"))
                      for a, it in zip(assignments, meta["iterations"])]
        return GWResult(config, iterations, tensors["distances"].numpy(), tensors["barycenters"].numpy(), meta["seeds"],
                        meta["seconds"], meta["converged"])

    return decode


def cached_gw(experiment, class_id: int, lrp, config: GWConfig, data) -> Optional[GWResult]:
    """The class's GW k-means result if it is in the cache, else None (nothing is computed)."""
    return load_cached(detection_path(_heatmaps_file(experiment, class_id, lrp, data), config), _gw_decoder(config))


def experiment_gw(experiment, class_id: int, lrp, config: GWConfig, data=None, progress: Optional[ProgressCallback] = None,
                  use_cache: bool = True):
    """GW k-means on the heatmaps of `class_id` in `experiment`, cached per (heatmaps, config).

    Returns the class's heatmaps and the result; the truth is the heatmaps' poison mask.
    """
    if not isinstance(config, GWConfig):
        raise ConfigError("config must be a GWConfig")
    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    heatmaps = experiment_heatmaps(experiment, class_id, lrp, data, progress=progress, use_cache=use_cache)
    path = detection_path(_heatmaps_file(experiment, class_id, lrp, data), config)

    def compute() -> GWResult:
        clouds = GridClouds.from_heatmaps(heatmaps.heatmaps, config.threshold)
        return gw_kmeans(clouds, config, truth=heatmaps.poison_mask.numpy(), progress=progress)

    return heatmaps, cached(path, compute, _encode_gw, _gw_decoder(config), use_cache, progress,
                            measure=(gw_kmeans_step(config), len(heatmaps)))


def gw_kmeans_step(config: GWConfig) -> str:
    """The name under which GW k-means' duration per cloud is measured (core.durations)."""
    return f"gw k-means {config.barycenter} barycenters"


def gw_kmeans_path(experiment, class_id: int, lrp: LRPConfig, config: GWConfig, data):
    return detection_path(_heatmaps_file(experiment, class_id, lrp, data), config)


def gw_kmeans_detection(experiment, class_id: int, lrp: LRPConfig, config: GWConfig, data=None,
                        progress: Optional[ProgressCallback] = None, use_cache: bool = True,
                        only_cached: bool = False) -> Optional[Detection]:
    """GW k-means (thesis section 6.5) on the class's heatmap clouds, cached per (heatmaps,
    config). With `only_cached`, None unless its result is in the cache: nothing is computed."""
    started = time.perf_counter()
    data = data if data is not None else load_gtsrb(progress=progress)
    if only_cached and cached_gw(experiment, class_id, lrp, config, data) is None:
        return None
    heatmaps, result = experiment_gw(experiment, class_id, lrp, config, data, progress=progress, use_cache=use_cache)
    truth = heatmaps.poison_mask.numpy()
    return _scored(heatmaps, result, result.flagged, result.suspicion, truth, started)


# ------------------------------------------------------------------ baselines

BASELINES = ("activation clustering", "spectral signatures", "raw images")


def baseline_detections(experiment, class_id: int, data=None, seed: int = 0,
                        progress: Optional[ProgressCallback] = None) -> Dict[str, Detection]:
    """Activation clustering, spectral signatures and raw-image clustering on the class; each
    one's seconds are its own, without the activations they share."""
    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress)
    train = poisoned_data(data, experiment).train
    index = (train.labels == class_id).nonzero().flatten()
    images = train.images[index]
    truth = train.poison_mask[index].numpy()
    activations = penultimate_activations(trained.model, images)
    methods = {"activation clustering": lambda: activation_clustering(activations, seed),
               "spectral signatures": lambda: spectral_signatures(activations, seed),
               "raw images": lambda: raw_image_clustering(images, seed)}
    results = {}
    for step, name in enumerate(BASELINES, start=1):
        started = time.perf_counter()
        flagged, suspicion = methods[name]()
        seconds = round(time.perf_counter() - started, 3)
        results[name] = Detection(None, None, flagged, suspicion, truth, score_detection(truth, flagged, suspicion), seconds)
        report(progress, "baselines", step, len(methods), name)
    return results


def baseline_scores(experiment, class_id: int, data=None, seed: int = 0,
                    progress: Optional[ProgressCallback] = None) -> Dict[str, Dict[str, object]]:
    """The baselines' scores with their seconds: the rows the CLI prints and the pages show."""
    return {name: {**d.score.as_dict(), "seconds": d.seconds}
            for name, d in baseline_detections(experiment, class_id, data, seed, progress).items()}


# ------------------------------------------------------------------ any detector by name

DETECTORS = {"spectral": "Euclidean spectral clustering of the LRP heatmaps",
             "gw": "GW k-means of the LRP heatmap clouds",
             "activation": "activation clustering",
             "signatures": "spectral signatures"}


def detector_settings(detector: str) -> tuple:
    """What a detector's default run depends on beyond the model, for the names of the files made from
    its flags (cleansed models, study scores): GW k-means' relevance, settings and artifact version,
    so a result made before any of them changed is never read as today's. Empty for the others,
    whose files keep their names."""
    if detector == "gw":
        return (asdict(GW_RELEVANCE), asdict(GWConfig()), _GW_ARTIFACT_VERSION)
    return ()


def detect(experiment, detector: str, class_id: int, data=None, progress: Optional[ProgressCallback] = None) -> Detection:
    """The detector named `detector` (a key of DETECTORS) with its default settings, as a study
    scores it and cleansing removes what it flags."""
    if detector == "spectral":
        return heatmap_spectral(experiment, class_id, LRPConfig(), SpectralConfig(), data, progress=progress)
    if detector == "gw":
        return gw_kmeans_detection(experiment, class_id, GW_RELEVANCE, GWConfig(), data, progress=progress)
    if detector in ("activation", "signatures"):
        return baseline_detections(experiment, class_id, data, progress=progress)[DETECTORS[detector]]
    raise ConfigError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
