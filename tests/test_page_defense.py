"""AppTest of the Defense page's spatial-transformation tab on a small experiment: the table is
measured in the background, drawn beside its command, and bad text is refused in place."""

from __future__ import annotations

import pytest

from core.cli import parse_arguments, experiment_from_args
from core.experiment import ExperimentConfig, train_or_load
from core.robustness import spatial_defense
from core.spatial import parse_transforms
from apptest import open_page, wait_for_jobs

SMALL = {"subset": "3000", "epochs": "2", "patience": "2"}


def spatial_tab(at):
    return next(tab for tab in at.tabs if tab.label == "Spatial transformations")


def test_the_spatial_tab_measures_each_transformation_and_prints_its_command(seeded_cache, gtsrb):
    config = ExperimentConfig.from_query(SMALL)
    train_or_load(config, gtsrb)
    at = open_page("pages/defense.py", SMALL)
    tab = spatial_tab(at)
    tab.text_input(key="df_spatial").set_value("flip shift=4,4").run()
    tab = spatial_tab(at)
    next(b for b in tab.button if b.label == "Measure the transformations").click().run()
    wait_for_jobs()
    at.run()
    assert not at.exception, at.exception
    tab = spatial_tab(at)
    rows = tab.dataframe[0].value
    expected = spatial_defense(config, parse_transforms(["flip", "shift=4,4"]), gtsrb)  # from the cache the page filled
    assert list(rows["transformation"]) == [row["label"] for row in expected["rows"]]
    assert list(rows["attack success rate (%)"]) == pytest.approx([100 * row["attack_success_rate"] for row in expected["rows"]])
    assert "The sticker against test-time transformations" in tab.get("plotly_chart")[0].proto.spec
    command = tab.code[0].value
    assert command.startswith("python -m core spatial ") and command.endswith("--transforms flip shift=4,4")
    args = parse_arguments(command.split()[3:])
    assert experiment_from_args(args) == config and args.transforms == ["flip", "shift=4,4"]


def test_bad_transformations_are_refused_in_place(seeded_cache, gtsrb):
    config = ExperimentConfig.from_query(SMALL)
    train_or_load(config, gtsrb)
    at = open_page("pages/defense.py", SMALL)
    spatial_tab(at).text_input(key="df_spatial").set_value("flip scale=9").run()
    assert not at.exception
    errors = [e.value for e in spatial_tab(at).error]
    assert errors == ["These transformations cannot be measured: transformation 'scale=9': the scale factor must be in 0.5 … 2"]
