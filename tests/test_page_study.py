"""AppTest of the Studies view: a preset's grid and its cost, a bad study refused in place, and a
study whose cells are cached drawn as its charts and table."""

from __future__ import annotations

from core.experiment import ExperimentConfig, train_or_load
from core.study import detect_cell, load_study, preset_studies

from apptest import open_page

TINY = """name = "two shares"
detectors = ["activation"]

[base]
subset = 3000
epochs = 1
patience = 1

[grid]
pp = [0.1, 0.33]
"""


def test_the_page_opens_on_a_preset_with_its_cells_and_a_run_button(gtsrb, seeded_cache):
    at = open_page("pages/study.py")
    first = next(iter(preset_studies()))
    assert at.selectbox(key="study_preset").value == first
    assert at.text_area(key="study_text").value == preset_studies()[first].read_text()
    metrics = {m.label: m.value for m in at.metric}
    study = load_study(preset_studies()[first])
    assert metrics["Cells"] == str(len(study.cells))
    assert metrics["Steps cached"] == f"0 of {len(study.cells) * (1 + len(study.detectors))}"
    assert metrics["Training left"] == "not measured"  # an empty cache has measured nothing
    assert [b.label for b in at.button] == ["Run the study", "Stop"]
    assert not at.button[0].disabled and at.button[1].disabled
    at.selectbox(key="study_preset").set_value("thesis table 3 (reduced)").run()
    assert "name = \"thesis table 3 (reduced)\"" in at.text_area(key="study_text").value
    assert {m.label: m.value for m in at.metric}["Steps cached"] == "0 of 10"


def test_a_bad_study_is_refused_in_one_line_and_cannot_run(gtsrb, seeded_cache):
    at = open_page("pages/study.py")
    at.text_area(key="study_text").set_value("[grid]\npp = [0.1, 'lots']\n").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("This study cannot run: cell pp = lots:")
    assert "\n" not in at.error[0].value
    assert not at.button


def test_a_cached_study_draws_its_charts_and_table(gtsrb, seeded_cache):
    for pp in ("0.1", "0.33"):  # the cells, computed as any view would: the study finds them in the cache
        config = ExperimentConfig.from_query({"subset": "3000", "epochs": "1", "patience": "1", "pp": pp})
        train_or_load(config, gtsrb)
        detect_cell(config, "activation", gtsrb)
    at = open_page("pages/study.py")
    at.text_area(key="study_text").set_value(TINY).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "2" and metrics["Steps cached"] == "4 of 4" and metrics["Training left"] == "–"
    assert at.button[0].disabled, "nothing is left to run"
    titles = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert any("Attack success rate" in spec for spec in titles) and any("Activation clustering" in spec for spec in titles)
    table = at.dataframe[-1].value
    assert list(table["pp"]) == ["0.1", "0.33"] and (table["cells"] == 1).all()
    assert table["attack_success_rate mean"].between(0, 1).all()


FAILING = """name = "too few source images"
detectors = ["activation"]

[base]
source = 0
subset = 3000

[grid]
pp = [0.33]
"""


def test_failed_steps_are_shown_with_their_errors(gtsrb, seeded_cache):
    import ray
    import tomllib

    from core.study import run_study, study_from_dict

    try:
        run = run_study(study_from_dict(tomllib.loads(FAILING)), gtsrb)
    finally:
        ray.shutdown()
    assert set(run.failed) == {"train [pp=0.33]", "activation [pp=0.33]"}
    at = open_page("pages/study.py")
    at.text_area(key="study_text").set_value(FAILING).run()
    assert not at.exception
    assert len(at.error) == 1
    shown = at.error[0].value
    assert shown.startswith("2 steps failed in the last run; the others went on.")
    assert "train [pp=0.33]: pp = 0.33 needs" in shown and "the source class has only" in shown
    assert "activation [pp=0.33]: not run: train [pp=0.33] failed" in shown
    cells = at.dataframe[0].value
    assert list(cells["train"]) == ["failed"] and list(cells["activation"]) == ["failed"]
