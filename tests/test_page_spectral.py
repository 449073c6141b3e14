"""AppTest of the Spectral page on a small experiment whose class-5 heatmaps are cached."""

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


def test_spectral_view_scores_the_clustering(small_heatmaps, gtsrb):
    config, heatmaps = small_heatmaps
    at = open_page("pages/spectral.py", SMALL)
    metrics = {m.label: m.value for m in at.metric}
    suggested = int(metrics["Eigengap suggests"].split()[0])
    assert metrics["Eigengap suggests"] == (f"{suggested} clusters" if suggested != 1 else "1 cluster")
    hint = [c.value for c in at.caption if c.value.startswith("The eigengap hints at")]
    assert bool(hint) == (suggested != 2)  # a suggestion other than the clustering's 2 is explained
    use = [b for b in at.button if b.key == "sp_use_suggested"]
    if 2 < suggested <= 8:
        use[0].click().run()
        assert at.session_state["sp_clusters"] == suggested and not [c for c in at.caption if c.value.startswith("The eigengap")]
        at.slider(key="sp_clusters").set_value(2).run()
    else:
        assert not use  # nothing to offer: 1 cluster is below the smallest cut, more than 8 above the slider
    assert 0 <= float(metrics["Accuracy"].rstrip(" %")) <= 100
    table = at.dataframe[0].value
    row = table.iloc[0]
    assert int(row["tn"] + row["fp"] + row["fn"] + row["tp"]) == len(heatmaps)
    assert int(row["fn"] + row["tp"]) == int(heatmaps.poison_mask.sum())

    at.slider(key="sp_k").set_value(15).run()
    assert not at.exception
    def scatter_title(app) -> str:
        return [c.proto.spec for c in app.get("plotly_chart") if "The class's samples" in c.proto.spec][0]

    for choice, label in (("tsne", "t-SNE of the heatmaps"), ("tsne-spectral", "t-SNE of the spectral embedding")):
        at.radio(key="sp_embedding").set_value(choice).run()
        assert not at.exception, choice
        assert "Spectral (eigenvectors 2 and 3)" in scatter_title(at)  # fitted in a job; the spectral embedding stands in
        assert any(label in bar.proto.text for bar in at.get("progress"))
        wait_for_jobs(timeout=120)
        at.run()
        assert label in scatter_title(at), choice
    again = open_page("pages/spectral.py", {**SMALL, "sp_k": "15", "sp_embedding": "tsne-spectral"})  # another session: from disk
    assert "t-SNE of the spectral embedding" in scatter_title(again) and not again.get("progress")
    at.radio(key="sp_colour").set_value("ground truth").run()
    assert not at.exception

    at.toggle(key="sp_baselines").set_value(True).run()
    assert not at.exception
    methods = list(at.dataframe[0].value.index)
    assert methods[1:] == ["activation clustering", "spectral signatures", "raw images"]


def test_missing_heatmaps_point_to_the_heatmaps_page(seeded_cache):
    at = open_page("pages/spectral.py", SMALL)
    assert any("not computed yet" in i.value for i in at.info)


def test_gw_distances_are_computed_in_the_background_and_analysed(small_heatmaps):
    config, heatmaps = small_heatmaps
    at = open_page("pages/spectral.py", SMALL)
    at.radio(key="sp_distance").set_value("gw").run()
    assert any("not computed yet" in m.value for m in at.markdown)
    at.button[0].click().run()
    wait_for_jobs(timeout=300)
    at.run()
    assert not at.exception, at.exception
    row = at.dataframe[0].value.iloc[0]
    assert at.dataframe[0].value.index[0].startswith("LRP heatmaps, GW spectral")
    assert int(row["tn"] + row["fp"] + row["fn"] + row["tp"]) == min(200, len(heatmaps))
    at.radio(key="sp_embedding").set_value("tsne").run()
    assert not at.exception


def test_the_target_class_offers_cleansing_and_shows_what_is_cached(small_heatmaps, gtsrb):
    from core.cleanse import cleanse
    from core.cli import experiment_from_args, parse_arguments

    config, _ = small_heatmaps
    truth = cleanse(config, "truth", gtsrb)  # retrained as the command line would: the page finds it
    at = open_page("pages/spectral.py", {**SMALL, "sp_class": "5"})
    assert not at.exception
    cleansing = next(df.value for df in at.dataframe if "ASR after (%)" in df.value)
    assert list(cleansing["method"]) == ["ground truth (upper bound)"]
    assert cleansing["removed"][0] == truth["removed"] and cleansing["poisoned left"][0] == 0
    assert cleansing["ASR after (%)"][0] == pytest.approx(100 * truth["attack_success_rate"])
    assert any(b.label == "Retrain without the flagged samples (3 models)" for b in at.button)
    command = next(c.value for c in at.code if c.value.startswith("python -m core cleanse"))
    args = parse_arguments(command.split()[3:])
    assert experiment_from_args(args) == config and args.method == ["truth", "random", "spectral", "activation"]
    at = open_page("pages/spectral.py", {**SMALL, "sp_class": "2"})
    assert not any("ASR after (%)" in df.value for df in at.dataframe), "cleansing acts on the target class only"
