"""The detection steps: the CLI, the export and the pages take every number from the same step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.cli import main
from core.detectors import (THESIS_EUCLIDEAN_SPECTRAL, THESIS_GW_RATES, GWDistanceConfig, baseline_detections, gw_spectral, heatmap_features,
                            heatmap_spectral, thesis_gw, thesis_spectral)
from core.experiment import ExperimentConfig, quick_experiment
from core.export import detection_frame
from core.gw_kmeans import GWConfig
from core.heatmaps import experiment_heatmaps
from core.lrp import LRPConfig
from core.spectral import SpectralConfig

SMALL = ExperimentConfig.from_query({"subset": "2000", "epochs": "2"})
SMALL_ARGS = ["--subset", "2000", "--epochs", "2", "--quiet"]


def test_the_thesis_figures_belong_to_its_setting_only():
    default = ExperimentConfig()
    assert thesis_spectral(default, 5) == THESIS_EUCLIDEAN_SPECTRAL
    assert thesis_spectral(default, 2) is None and thesis_spectral(quick_experiment(), 5) is None
    figures = thesis_gw(default, 5, GWConfig())
    assert {k: figures[k] for k in THESIS_GW_RATES} == THESIS_GW_RATES
    assert sum(figures["iteration_3"].values()) == sum(THESIS_EUCLIDEAN_SPECTRAL.values()), "the same class"
    assert thesis_gw(default, 5, GWConfig(threshold=0.9)) is None and thesis_gw(default, 4, GWConfig()) is None


def run_cli(capsys, *args: str) -> dict:
    assert main([*args, *SMALL_ARGS]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.training
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_cli_and_the_export_print_what_the_steps_return(seeded_cache, gtsrb, capsys):
    lrp, spectral = LRPConfig(), SpectralConfig()
    euclidean = heatmap_spectral(SMALL, 5, lrp, spectral, gtsrb)
    heatmaps = experiment_heatmaps(SMALL, 5, lrp, gtsrb)
    assert np.array_equal(euclidean.truth, heatmaps.poison_mask.numpy()) and euclidean.heatmaps.indices.tolist() == heatmaps.indices.tolist()
    assert heatmap_features(euclidean.heatmaps).shape == (len(heatmaps), 32 * 32)
    report = run_cli(capsys, "spectral")
    assert {k: report[k] for k in ("tn", "fp", "fn", "tp")} == {k: getattr(euclidean.score, k) for k in ("tn", "fp", "fn", "tp")}
    assert report["samples"] == len(euclidean.truth) and report["auc"] == pytest.approx(euclidean.score.auc, abs=1e-12)

    # GW distances on a subset: the outcome holds the subset's heatmaps, in class order.
    config = GWDistanceConfig(samples=24, pool=8)
    on_gw = gw_spectral(SMALL, 5, lrp, SpectralConfig(k_neighbors=5), config, gtsrb)
    assert len(on_gw.truth) == 24 and np.all(np.diff(on_gw.heatmaps.indices.numpy()) > 0)
    positions = np.searchsorted(heatmaps.indices.numpy(), on_gw.heatmaps.indices.numpy())
    assert np.array_equal(on_gw.truth, heatmaps.poison_mask.numpy()[positions])
    assert np.array_equal(on_gw.heatmaps.heatmaps.numpy(), heatmaps.heatmaps.numpy()[positions])
    report = run_cli(capsys, "spectral", "--distance", "gw", "--gw-samples", "24", "--gw-pool", "8", "--k", "5")
    assert report["samples"] == 24 and report["poisoned"] == int(on_gw.truth.sum())
    assert {k: report[k] for k in ("tn", "fp", "fn", "tp")} == {k: getattr(on_gw.score, k) for k in ("tn", "fp", "fn", "tp")}
    assert report["eigenvalues"] == [round(float(v), 6) for v in on_gw.result.eigenvalues]

    # The export's columns are the steps' flags and suspicion scores.
    frame = detection_frame(SMALL, 5, lrp, spectral, data=gtsrb)
    assert np.array_equal(frame["lrp_spectral_flag"].to_numpy(), euclidean.flagged.astype(int))
    assert np.array_equal(frame["lrp_spectral_score"].to_numpy(), euclidean.suspicion)
    for name, detection in baseline_detections(SMALL, 5, gtsrb).items():
        column = name.replace(" ", "_")
        assert np.array_equal(frame[f"{column}_flag"].to_numpy(), detection.flagged.astype(int)), name
        assert np.array_equal(frame[f"{column}_score"].to_numpy(), detection.suspicion), name
        assert np.array_equal(detection.truth, euclidean.truth), name
