"""Exports on a small real experiment: the per-sample detection CSV, the experiment JSON, and a
ViRelAy project that ViRelAy itself opens and serves."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from core.detectors import baseline_scores, heatmap_spectral
from core.errors import ConfigError
from core.experiment import ExperimentConfig, train_or_load
from core.export import detection_frame, detection_scores, experiment_json, experiment_record, export_virelay
from core.heatmaps import experiment_heatmaps
from core.lrp import LRPConfig
from core.spectral import SpectralConfig

SMALL = ExperimentConfig.from_query({"subset": "4000", "epochs": "3", "patience": "3"})
TARGET = SMALL.poison.target


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, gtsrb_cache_file, gtsrb):
    """A module-wide private cache with the small experiment's model and heatmaps."""
    import os

    from conftest import link_or_copy

    path = tmp_path_factory.mktemp("export-cache")
    link_or_copy(gtsrb_cache_file, path)
    previous = os.environ.get("POISONLAB_CACHE")
    os.environ["POISONLAB_CACHE"] = str(path)
    try:
        train_or_load(SMALL, gtsrb)
        yield path
    finally:
        if previous is None:
            os.environ.pop("POISONLAB_CACHE")
        else:
            os.environ["POISONLAB_CACHE"] = previous


def test_detection_csv_has_one_row_per_sample_and_each_methods_flag_and_score(small_cache, gtsrb):
    frame = detection_frame(SMALL, TARGET, data=gtsrb)
    heatmaps = experiment_heatmaps(SMALL, TARGET, LRPConfig(), gtsrb)
    assert len(frame) == len(heatmaps) > 100
    assert frame["train_index"].tolist() == heatmaps.indices.tolist()
    assert frame["poisoned"].tolist() == heatmaps.poison_mask.int().tolist()
    methods = ["lrp_spectral", "activation_clustering", "spectral_signatures", "raw_images"]  # GW k-means: only when cached
    assert [c for c in frame.columns if c.endswith("_flag")] == [f"{m}_flag" for m in methods]
    # The same scores as the views that show them (the Spectral view and its baselines).
    scores = detection_scores(frame)
    _, _, _, spectral = heatmap_spectral(SMALL, TARGET, LRPConfig(), SpectralConfig(), gtsrb)
    assert scores["lrp_spectral"] == spectral.as_dict()
    baselines = baseline_scores(SMALL, TARGET, gtsrb)
    for name, column in (("activation clustering", "activation_clustering"), ("spectral signatures", "spectral_signatures")):
        assert {k: v for k, v in baselines[name].items() if k != "seconds"} == scores[column]
    text = frame.to_csv(index=False)
    again = pd.read_csv(io.StringIO(text))
    assert again.shape == frame.shape and (again["lrp_spectral_flag"] == frame["lrp_spectral_flag"]).all()
    assert set(again["poisoned"].unique()) == {0, 1}


def test_the_export_carries_gw_k_means_as_the_gw_view_and_detect_compute_it_by_default(small_cache, gtsrb):
    """GW k-means reads its own default heatmaps (the positive part); the export's default run finds
    that result, not one on the signed heatmaps it reads for the other methods."""
    from core.detectors import gw_kmeans_detection
    from core.gw_kmeans import GWConfig
    from core.presets import GW_RELEVANCE

    quick = GWConfig(threshold=0.5, epsilon=0.05, epsilon_init=0.05, max_iter=1)
    assert "gw_kmeans_flag" not in detection_frame(SMALL, TARGET, gw=quick, data=gtsrb)
    found = gw_kmeans_detection(SMALL, TARGET, GW_RELEVANCE, quick, gtsrb)
    frame = detection_frame(SMALL, TARGET, gw=quick, data=gtsrb)
    assert frame["gw_kmeans_flag"].tolist() == np.asarray(found.flagged).astype(int).tolist()
    record = experiment_record(SMALL, gtsrb, frame, TARGET)
    assert record["detection"]["gw_kmeans_heatmaps"]["positive"] and not record["detection"]["heatmaps"]["positive"]


def test_experiment_json_has_the_config_the_metrics_and_the_detection(small_cache, gtsrb):
    frame = detection_frame(SMALL, TARGET, data=gtsrb)
    record = json.loads(experiment_json(experiment_record(SMALL, gtsrb, frame, TARGET)))
    assert ExperimentConfig.from_dict(record["experiment"]) == SMALL
    assert ExperimentConfig.from_query(record["query"]) == SMALL
    metrics = train_or_load(SMALL, gtsrb).metrics
    assert record["model"]["trained"] and record["model"]["metrics"]["clean_accuracy"] == metrics["clean_accuracy"]
    assert record["detection"]["samples"] == len(frame)
    assert record["detection"]["methods"]["lrp_spectral"]["tp"] == detection_scores(frame)["lrp_spectral"]["tp"]
    untrained = experiment_record(ExperimentConfig.from_query({"subset": "4000", "epochs": "1"}), gtsrb)
    assert untrained["model"] == {"artifact": untrained["model"]["artifact"], "trained": False, "metrics": None}


def test_virelay_export_is_opened_and_served_by_virelay(small_cache, gtsrb, tmp_path, virelay_python):
    project = export_virelay(SMALL, [TARGET, SMALL.poison.source], tmp_path / "virelay", data=gtsrb)
    heatmaps = {c: experiment_heatmaps(SMALL, c, LRPConfig(), gtsrb) for c in (SMALL.poison.source, TARGET)}
    total = sum(len(h) for h in heatmaps.values())
    with h5py.File(project.parent / "dataset.h5") as f:
        assert f["data"].shape == (total, 3, 32, 32) and f["data"].dtype == np.uint8
        assert f["label"][:].tolist() == [SMALL.poison.source] * len(heatmaps[2]) + [TARGET] * len(heatmaps[5])
        assert int(f["poisoned"][:].sum()) == int(heatmaps[TARGET].poison_mask.sum())
    with h5py.File(project.parent / "attributions.h5") as f:
        relevance = torch.from_numpy(f["attribution"][:]).sum(dim=1)
        expected = torch.cat([heatmaps[2].heatmaps, heatmaps[5].heatmaps])
        assert torch.allclose(relevance, expected, atol=1e-6)
        assert f["prediction"].shape == (total, 43)
    with h5py.File(project.parent / "analysis.h5") as f:
        assert sorted(f) == ["00000002", "00000005"]
        assert f["00000005/index"][:].tolist() == list(range(len(heatmaps[2]), total))
        assert sorted(f["00000005/cluster"]) == ["poison-truth", "spectral-02"]
        assert f["00000005/cluster/poison-truth"][:].sum() == int(heatmaps[TARGET].poison_mask.sum())
    checked = subprocess.run([str(virelay_python), str(Path(__file__).parent / "virelay_check.py"), str(project)],
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    seen = json.loads(checked.stdout.strip().splitlines()[-1])
    assert seen["samples"] == total and not seen["failures"]
    method = seen["methods"]["spectral_analysis"]
    assert method["categories"] == {"00000002": "Speed limit (50km/h)", "00000005": "Speed limit (80km/h)"}
    assert method["points"] == {"00000002": len(heatmaps[2]), "00000005": len(heatmaps[5])}
    assert set(method["embeddings"]) == {"spectral", "tsne"} and set(method["clusterings"]) == {"poison-truth", "spectral-02"}
    assert seen["first_label"] == ["Speed limit (50km/h)"]
    assert seen["first_attribution_sum"] == pytest.approx(float(heatmaps[2].heatmaps[0].sum()), rel=1e-4, abs=1e-4)
    with pytest.raises(ConfigError, match="not empty"):
        export_virelay(SMALL, [TARGET], project.parent, data=gtsrb)
    with pytest.raises(ConfigError):
        export_virelay(SMALL, [43], tmp_path / "other", data=gtsrb)
