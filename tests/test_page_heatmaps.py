"""AppTest of the Heatmaps page on a small experiment: compute LRP off the script thread,
then read the class summary, browse samples and move the point-cloud thresholds."""

from __future__ import annotations

import pytest

from core.experiment import ExperimentConfig, poisoned_data, train_or_load
from apptest import open_page, wait_for_jobs

SMALL = {"subset": "3000", "epochs": "2", "patience": "2"}


@pytest.fixture
def small_experiment(seeded_cache, gtsrb):
    config = ExperimentConfig.from_query(SMALL)
    train_or_load(config, gtsrb)
    return config


def test_compute_and_browse_heatmaps(small_experiment, gtsrb):
    at = open_page("pages/heatmaps.py", SMALL)
    compute = next(b for b in at.button if b.label == "Compute heatmaps")
    compute.click().run()
    wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    train = poisoned_data(gtsrb, small_experiment).train
    assert metrics["Images of the class"] == f"{int((train.labels == 5).sum()):,}"
    assert float(metrics["LRP time"].rstrip(" s")) > 0
    assert len(at.get("plotly_chart")) == 4  # mean heatmaps, one sample, point clouds, cloud size against t

    caption = [c.value for c in at.caption if c.value.startswith("Training image #")][0]
    at.radio(key="hm_filter").set_value("poisoned").run()
    poisoned_caption = [c.value for c in at.caption if c.value.startswith("Training image #")][0]
    assert "· poisoned ·" in poisoned_caption
    at.radio(key="hm_filter").set_value("clean").run()
    assert "· clean ·" in [c.value for c in at.caption if c.value.startswith("Training image #")][0]
    assert caption  # the first view named a sample too

    at.slider(key="hm_t1").set_value(0.3).run()
    assert not at.exception
    fig = at.get("plotly_chart")[2].proto.spec
    assert "t = 0.30" in fig and "t = 0.50" in fig
    # what GW can see, at the left threshold: the page's medians are those of the class's clouds
    import numpy as np

    from core.heatmaps import experiment_heatmaps
    from core.lrp import LRPConfig
    from core.pointcloud import normalised_mass, point_count, top_share

    heatmaps = experiment_heatmaps(small_experiment, 5, LRPConfig(), gtsrb)
    mass = normalised_mass(heatmaps.heatmaps)
    poisoned = heatmaps.poison_mask.numpy()
    table = at.dataframe[0].value
    assert list(table.index[:2]) == ["poisoned", "clean"] and table.index[2] == "this sample"
    assert table.loc["poisoned", "points (t = 0.30)"] == float(np.median(point_count(mass, 0.3).numpy()[poisoned]))
    assert table.loc["clean", "top-9 mass"] == pytest.approx(float(np.median(top_share(mass).numpy()[~poisoned])))
    from core.poison import sticker_window

    window_share = (mass * sticker_window(small_experiment.poison)).flatten(1).sum(1).numpy()
    assert table.loc["poisoned", "window mass"] == pytest.approx(float(np.median(window_share[poisoned])))


def test_other_rule_needs_its_own_heatmaps(small_experiment):
    at = open_page("pages/heatmaps.py", SMALL)
    at.selectbox(key="hm_rule").set_value("alpha1beta0").run()
    assert any(b.label == "Compute heatmaps" for b in at.button)
    assert any("LRP-alpha1beta0" in m.value for m in at.markdown)
