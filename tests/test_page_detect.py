"""AppTest of the GW detection page on a small experiment whose class-5 heatmaps are cached."""

from __future__ import annotations

import pytest

from core.experiment import ExperimentConfig
from core.heatmaps import experiment_heatmaps
from core.lrp import LRPConfig

from apptest import open_page, wait_for_jobs

SMALL = {"subset": "3000", "epochs": "2", "patience": "2"}


@pytest.fixture
def small_heatmaps(seeded_cache, gtsrb):
    config = ExperimentConfig.from_query(SMALL)
    return config, experiment_heatmaps(config, 5, LRPConfig(), gtsrb)


def test_running_gw_kmeans_from_the_page_shows_its_iterations_and_scores(small_heatmaps):
    config, heatmaps = small_heatmaps
    at = open_page("pages/detect.py", SMALL)
    assert any("has not run yet" in m.value for m in at.markdown)
    # A quick setting: a loose threshold, a large ε and one iteration.
    at.select_slider(key="gw_threshold").set_value(0.5)
    at.select_slider(key="gw_eps").set_value(0.05)
    at.slider(key="gw_iter").set_value(1).run()
    at.button[0].click().run()
    wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert 0 <= float(metrics["Accuracy"].rstrip(" %")) <= 100
    iterations = at.dataframe[0].value
    assert list(iterations.index) == [0, 1]
    counts = iterations.loc[1, ["tn", "fp", "fn", "tp"]]
    assert int(counts.sum()) == len(heatmaps)
    assert int(counts["fn"] + counts["tp"]) == int(heatmaps.poison_mask.sum())
    methods = list(at.dataframe[1].value.index)
    assert methods[0] == "Gromov–Wasserstein k-means" and methods[1].startswith("Euclidean spectral")
    assert any("python -m core detect --method gw --class 5" in c.value and "--eps 0.05" in c.value for c in at.code)


def test_missing_heatmaps_point_to_the_heatmaps_page(seeded_cache):
    at = open_page("pages/detect.py", SMALL)
    assert any("not computed yet" in i.value for i in at.info)
