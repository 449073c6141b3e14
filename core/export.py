"""Results to take away: per-sample detections (CSV), the experiment with its metrics (JSON),
and heatmaps with embeddings in the HDF5 layout of the ViRelAy viewer.

ViRelAy (Anders et al., PyPI `virelay`) reads a project YAML naming a label map, a data
set file (`data`, `label`), attribution files (`attribution`, `prediction`, `label`) and
analysis files (one group per class, named by the label map's `word_net_id`, holding
`index`, `embedding/<name>` and `cluster/<name>`). Its version 0.6.1 reads this layout;
the older documentation's `root` sub-groups are not read, so they are not written.
"""

from __future__ import annotations

import dataclasses

import io
import json
import math
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .cache import artifact_meta, atomic_write_bytes
from .data import CLASS_NAMES, NUM_CLASSES, load_gtsrb
from .detection import score_detection
from .detectors import baseline_detections, gw_kmeans_detection, heatmap_features, heatmap_spectral
from .errors import ArtifactError, ConfigError
from .experiment import ExperimentConfig, model_path, poisoned_data, train_or_load
from .gw_kmeans import GWConfig
from .progress import ProgressCallback, report
from .heatmaps import check_class
from .lrp import LRPConfig
from .presets import gw_relevance
from .spectral import SpectralConfig, embed_2d

ANALYSIS_METHOD = "spectral_analysis"  # ViRelAy maps "_" to "-" in URLs and back, so the name must not hold a "-"


def _column(name: str) -> str:
    return name.replace(" ", "_")


def detection_frame(experiment: ExperimentConfig, class_id: int, lrp: LRPConfig = LRPConfig(),
                    spectral: SpectralConfig = SpectralConfig(), gw: Optional[GWConfig] = GWConfig(), data=None,
                    seed: int = 0, progress: Optional[ProgressCallback] = None) -> pd.DataFrame:
    """One row per training image of the class: its index in the training split, whether it is
    poisoned, and each method's flag (1 = flagged as poisoned) and suspicion score (higher =
    more suspicious). GW k-means is included when its result for `gw` is cached, on the heatmaps it
    reads beside `lrp` (`core.presets.gw_relevance`)."""
    class_id = check_class(class_id)
    data = data if data is not None else load_gtsrb(progress=progress)
    spectral_detection = heatmap_spectral(experiment, class_id, lrp, spectral, data, progress=progress)
    heatmaps = spectral_detection.heatmaps
    frame = pd.DataFrame({"train_index": heatmaps.indices.numpy(), "poisoned": heatmaps.poison_mask.numpy().astype(int)})
    detections = {"lrp_spectral": spectral_detection,
                  "gw_kmeans": gw_kmeans_detection(experiment, class_id, gw_relevance(lrp), gw, data, only_cached=True) if gw is not None else None}
    detections.update({_column(name): d for name, d in baseline_detections(experiment, class_id, data, seed, progress).items()})
    for method, detection in detections.items():
        if detection is not None:
            frame[f"{method}_flag"] = np.asarray(detection.flagged).astype(int)
            frame[f"{method}_score"] = np.asarray(detection.suspicion, dtype=float)
    return frame


def detection_methods(frame: pd.DataFrame) -> List[str]:
    return [column[: -len("_flag")] for column in frame.columns if column.endswith("_flag")]


def detection_scores(frame: pd.DataFrame) -> Dict[str, Dict[str, object]]:
    """Each method's confusion counts, rates and ROC-AUC, from the per-sample table."""
    truth = frame["poisoned"].to_numpy().astype(bool)
    return {method: score_detection(truth, frame[f"{method}_flag"].to_numpy().astype(bool),
                                    frame[f"{method}_score"].to_numpy()).as_dict() for method in detection_methods(frame)}


def _finite(value):
    """JSON has no NaN: rates of an empty group become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def experiment_record(experiment: ExperimentConfig, data, frame: Optional[pd.DataFrame] = None,
                      class_id: Optional[int] = None, lrp: Optional[LRPConfig] = None) -> Dict[str, object]:
    """The experiment's configuration, data set, model metrics and (optionally) detection scores."""
    path = model_path(data, experiment)
    try:
        metrics = artifact_meta(path)["metrics"]
    except (FileNotFoundError, ArtifactError, KeyError, TypeError):
        metrics = None
    record = {
        "poison_lab_export": 1,
        "experiment": experiment.to_dict(),
        "query": experiment.to_query(),
        "data": {"root": str(data.root), "layout": data.layout, "content_id": data.content_id},
        "model": {"artifact": path.name, "trained": metrics is not None, "metrics": metrics},
    }
    if frame is not None:
        record["detection"] = {"class_id": class_id, "class_name": CLASS_NAMES[class_id], "samples": len(frame),
                               "heatmaps": dataclasses.asdict(lrp or LRPConfig()),
                               "gw_kmeans_heatmaps": dataclasses.asdict(gw_relevance(lrp or LRPConfig())),
                               "poisoned": int(frame["poisoned"].sum()), "methods": detection_scores(frame)}
    return _finite(record)


def experiment_json(record: Dict[str, object]) -> str:
    return json.dumps(record, indent=2, sort_keys=True, allow_nan=False)


def label_map() -> List[Dict[str, object]]:
    return [{"index": i, "word_net_id": f"{i:08d}", "name": CLASS_NAMES[i]} for i in range(NUM_CLASSES)]


def _yaml_text(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, quotes and all


def export_virelay(experiment: ExperimentConfig, class_ids: Sequence[int], directory, lrp: LRPConfig = LRPConfig(),
                   spectral: SpectralConfig = SpectralConfig(), gw: Optional[GWConfig] = GWConfig(), data=None,
                   embeddings: Iterable[str] = ("spectral", "tsne"), progress: Optional[ProgressCallback] = None) -> Path:
    """Write a ViRelAy project for the training images of `class_ids`; returns its YAML file.

    The data set holds the images as the model saw them (poisoned ones with their sticker),
    uint8 channels-first; attributions are our LRP heatmaps, spread evenly over the three
    colour channels so their channel sum is the heatmap; predictions are the model's logits.
    Each class's analysis has the spectral embedding (eigenvalues attached), t-SNE, the
    spectral clustering, the poison truth and, if cached for every exported class, the GW
    k-means clusters.
    """
    import h5py

    class_ids = sorted({check_class(c) for c in class_ids})
    if not class_ids:
        raise ConfigError("choose at least one class to export")
    embeddings = tuple(embeddings)
    if not embeddings or any(e not in ("spectral", "tsne", "umap") for e in embeddings):
        raise ConfigError("embeddings must be some of spectral, tsne, umap")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; export into a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress)
    train = poisoned_data(data, experiment).train
    started = time.perf_counter()

    per_class = []
    for step, class_id in enumerate(class_ids):
        report(progress, "export", step, len(class_ids), f"class {class_id}: heatmaps and spectral analysis")
        heatmaps, result, _, _ = heatmap_spectral(experiment, class_id, lrp, spectral, data, progress=progress)
        features = heatmap_features(heatmaps)
        coordinates = {name: embed_2d(features, name, spectral.seed, result) if name != "spectral" else result.embedding
                       for name in embeddings}
        clusters = {f"spectral-{spectral.n_clusters:02d}": result.assignments, "poison-truth": heatmaps.poison_mask.numpy()}
        gw_detection = gw_kmeans_detection(experiment, class_id, gw_relevance(lrp), gw, data, only_cached=True) if gw is not None else None
        if gw_detection is not None:
            clusters["gw-kmeans"] = gw_detection.result.assignments
        per_class.append((class_id, heatmaps, result, coordinates, clusters))
    # ViRelAy offers the clusterings of the first class for all: keep only those every class has
    shared = set.intersection(*(set(clusters) for *_, clusters in per_class))
    per_class = [(c, h, r, e, {name: v for name, v in clusters.items() if name in shared}) for c, h, r, e, clusters in per_class]

    indices = torch.cat([heatmaps.indices for _, heatmaps, *_ in per_class])
    images = train.images[indices]
    labels = train.labels[indices]
    with torch.inference_mode():
        logits = torch.cat([trained.model(images[i : i + 1024].float() / 255) for i in range(0, len(images), 1024)])
    relevance = torch.cat([heatmaps.heatmaps for _, heatmaps, *_ in per_class])

    (directory / "label-map.json").write_text(json.dumps(label_map(), indent=1))
    with h5py.File(directory / "dataset.h5", "w") as f:
        f.create_dataset("data", data=images.numpy(), compression="gzip")
        f.create_dataset("label", data=labels.numpy().astype(np.uint16))
        f.create_dataset("train_index", data=indices.numpy())  # not read by ViRelAy: the link back to Poison Lab
        f.create_dataset("poisoned", data=train.poison_mask[indices].numpy())
    with h5py.File(directory / "attributions.h5", "w") as f:
        f.create_dataset("attribution", data=(relevance[:, None] / 3).expand(-1, 3, -1, -1).numpy().astype(np.float32),
                         compression="gzip")
        f.create_dataset("prediction", data=logits.numpy().astype(np.float32))
        f.create_dataset("label", data=labels.numpy().astype(np.uint16))
    with h5py.File(directory / "analysis.h5", "w") as f:
        offset = 0
        for class_id, heatmaps, result, coordinates, clusters in per_class:
            group = f.create_group(f"{class_id:08d}")
            group.create_dataset("index", data=np.arange(offset, offset + len(heatmaps), dtype=np.uint32))
            for name, values in coordinates.items():
                dataset = group.create_dataset(f"embedding/{name}", data=np.asarray(values, dtype=np.float32))
                if name == "spectral":
                    dataset.attrs["eigenvalue"] = np.asarray(result.eigenvalues[: dataset.shape[1]], dtype=np.float32)
            for name, values in clusters.items():
                group.create_dataset(f"cluster/{name}", data=np.asarray(values).astype(np.int32))
            offset += len(heatmaps)
    p = experiment.poison
    project = "\n".join([
        "project:",
        f"  name: {_yaml_text(f'Poison Lab: {p.describe()}')}",
        f"  model: {_yaml_text(f'{experiment.train.architecture} ({model_path(data, experiment).name})')}",
        "  label_map: label-map.json",
        "  dataset:",
        f"    name: {_yaml_text('GTSRB training images of class ' + ', '.join(str(c) for c in class_ids) + ' (poisoned as trained)')}",
        "    type: hdf5",
        "    path: dataset.h5",
        "    input_width: 32",
        "    input_height: 32",
        "    up_sampling_method: none",
        "    down_sampling_method: none",
        "  attributions:",
        f"    attribution_method: {_yaml_text(f'LRP {lrp.describe()}')}",
        f"    attribution_strategy: {'true_label' if lrp.target == 'label' else 'predicted_label'}",
        "    sources:",
        "    - attributions.h5",
        "  analyses:",
        f"  - analysis_method: {ANALYSIS_METHOD}",
        "    sources:",
        "    - analysis.h5",
        "",
    ])
    yaml_path = directory / "project.yaml"
    atomic_write_bytes(yaml_path, project.encode())
    report(progress, "export", len(class_ids), len(class_ids), f"done in {time.perf_counter() - started:.1f} s")
    return yaml_path


def virelay_zip(experiment: ExperimentConfig, class_ids: Sequence[int], lrp: LRPConfig = LRPConfig(),
                spectral: SpectralConfig = SpectralConfig(), data=None, progress: Optional[ProgressCallback] = None) -> bytes:
    """The ViRelAy project as one zip archive (for a browser download): unpack, then `virelay project.yaml`."""
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(prefix="poisonlab-virelay-") as folder:
        project = export_virelay(experiment, class_ids, Path(folder) / "virelay", lrp, spectral, data=data, progress=progress)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # the HDF5 files are gzip-compressed already
            for path in sorted(project.parent.iterdir()):
                archive.write(path, f"poisonlab-virelay/{path.name}")
        return buffer.getvalue()
