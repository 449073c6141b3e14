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


def test_the_thesis_preset_sets_the_network_the_relevance_and_the_protocol(seeded_cache):
    at = open_page("pages/detect.py", SMALL)
    at.button(key="gw_preset_thesis").click().run()
    assert not at.exception, at.exception
    state = {k: at.session_state[k] for k in ("gw_rule", "gw_layer", "gw_positive", "gw_threshold", "gw_eps", "gw_iter", "gw_seeding", "gw_bary")}
    assert state == {"gw_rule": "squared", "gw_layer": "inception", "gw_positive": False, "gw_threshold": 0.99, "gw_eps": 5e-4,
                     "gw_iter": 5, "gw_seeding": "squared", "gw_bary": "exact"}
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["arch"] == "inception_v3_maxpool" and params["subset"] == "3000"  # the rest is kept
    assert (params["epochs"], params["batch"], params["sched"], params["augs"]) == ("100", "32", "constant", "thesis")  # its recipe
    assert (params["gw_layer"], params["gw_bary"]) == ("inception", "exact")
    # the Inception model's heatmaps are not there yet: the page says which, read at the block
    assert any("not computed yet" in i.value and "read at inception" in i.value for i in at.info)
    at.button(key="gw_preset_best").click().run()
    assert (at.session_state["gw_rule"], at.session_state["gw_layer"], at.session_state["gw_positive"], at.session_state["gw_bary"]) == (
        "composite", "input", True, "entropic")
