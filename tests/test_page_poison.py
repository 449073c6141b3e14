"""AppTest of the Poison page on a small configuration: the attack preview, training off the
script thread, the metrics, and the experiment carried in the URL."""

from __future__ import annotations

import pytest

from core.jobs import RUNNER

from apptest import open_page, wait_for_jobs

SMALL = {"subset": "4000", "epochs": "3", "patience": "3"}


@pytest.fixture
def page_cache(seeded_cache):
    """A private cache holding only the decoded data set, so models are trained afresh."""
    return seeded_cache


def open_poison_page(query=None):
    return open_page("pages/poison.py", query)


def metric_values(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_defaults_show_the_thesis_attack(page_cache):
    at = open_poison_page()
    values = metric_values(at)
    assert values["Poisoned training images"] == "813"
    assert values["Target class 5 after the attack"] == "2,463"
    assert values["Source class 2 left"] == "1,197"
    assert at.query_params["pp"] == ["0.33"] or at.query_params["pp"] == "0.33"
    assert any(b.label == "Train model" for b in at.button)


def test_train_from_the_page_and_read_metrics(page_cache):
    at = open_poison_page(SMALL)
    train = next(b for b in at.button if b.label == "Train model")
    train.click().run()
    assert not at.exception
    # Touching a widget reruns the script; the training job must go on regardless.
    next(b for b in at.button if b.label == "Show other samples").click().run()
    job = next(j for j in RUNNER.jobs() if j.title == "Training")
    assert job.state in ("queued", "running", "done"), job.error
    wait_for_jobs()
    assert job.state == "done", job.error
    at.run()
    values = metric_values(at)
    clean = float(values["Clean test accuracy"].rstrip(" %"))
    assert clean > 40.0, values  # 4,000 images, 3 epochs: far above chance (2.3 %)
    assert "Attack success rate" in values
    assert list(page_cache.glob("model-thesis_net-*.safetensors")), "the trained model is cached"
    # A second session with the same link finds the cached model without training.
    again = open_poison_page(SMALL)
    assert metric_values(again)["Clean test accuracy"] == values["Clean test accuracy"]


def test_invalid_form_input_shows_a_message(page_cache):
    at = open_poison_page()
    next(s for s in at.sidebar.selectbox if s.label == "Target class").set_value(2)  # target = source
    next(b for b in at.sidebar.button if b.label == "Apply").click().run()
    assert any("must differ" in e.value for e in at.error), [e.value for e in at.error]
    assert metric_values(at)["Poisoned training images"] == "813", "the active experiment is unchanged"


def test_the_network_is_chosen_in_the_form_and_carried_by_the_link(page_cache):
    at = open_poison_page()
    network = next(s for s in at.sidebar.selectbox if s.label == "Architecture")
    assert network.value == "thesis_net" and list(network.options) == [
        "ThesisNet (the thesis's small network, appendix A.1)", "Inception v3 (the thesis's simplified InceptionNet3, its tables 2 and 3)",
        "Inception v3 with the max-pool branch (as the thesis's code ran it)"]
    network.set_value("inception_v3")
    next(b for b in at.sidebar.button if b.label == "Apply").click().run()
    assert not at.exception, at.exception
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["arch"] == "inception_v3"
    again = open_poison_page({"arch": "inception_v3"})
    assert next(s for s in again.sidebar.selectbox if s.label == "Architecture").value == "inception_v3"


def test_bad_link_falls_back_to_defaults(page_cache):
    at = open_poison_page({"pp": "1.7", "size": "two"})
    assert any("could not be used" in w.value for w in at.error)
    assert metric_values(at)["Poisoned training images"] == "813"


def test_missing_data_is_explained(page_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("GTSRB_DIR", str(tmp_path / "nowhere"))
    at = open_poison_page()
    assert any("does not exist" in e.value and "GTSRB_DIR" in e.value for e in at.error)


def test_quick_experiment_button_switches_and_says_it_is_reduced(page_cache):
    at = open_poison_page()
    assert not at.info, "the full experiment shows no reduced-experiment note"
    next(b for b in at.button if b.label == "Quick experiment").click().run()
    assert not at.exception
    notes = [i.value for i in at.info]
    assert any("Reduced experiment" in n and "8,000 of 34,799" in n and "python -m core train" in n for n in notes), notes
    query = at.query_params
    assert str(query["subset"]).strip("[]'") == "8000" and str(query["aug"]).strip("[]'") == "0"
    assert metric_values(at)["Poisoned training images"] == "182"
    next(b for b in at.button if b.label == "Switch to the full experiment").click().run()
    assert not at.info and metric_values(at)["Poisoned training images"] == "813"


def test_the_label_consistent_attack_is_prepared_in_the_background_and_previewed(page_cache, gtsrb):
    import torch

    from core.experiment import ExperimentConfig, poisoned_data

    query = {**SMALL, "aug": "0", "kind": "label-consistent", "pp": "0.2", "amp": "64"}
    at = open_poison_page(query)
    prepare = [b for b in at.button if b.label == "Prepare the attack"]
    assert prepare and not at.get("plotly_chart"), "nothing is drawn before the perturbation exists"
    prepare[0].click().run()
    wait_for_jobs(timeout=600)
    at.run()
    assert not at.exception, at.exception
    config = ExperimentConfig.from_query(query)
    poisoned = poisoned_data(gtsrb, config)  # now quick: read from the cache the page filled
    metrics = metric_values(at)
    assert metrics["Poisoned training images"] == f"{int(poisoned.train.poison_mask.sum()):,}"
    assert metrics["Source class 2 left"] == f"{int((gtsrb.train.labels[poisoned.train_index] == 2).sum()):,}", "no image left its class"
    assert torch.equal(poisoned.train.labels, gtsrb.train.labels[poisoned.train_index])
    grid = at.get("plotly_chart")[0].proto.spec.replace("\\u002f", "/")
    assert "clean, perturbed (PGD, 8/255), with the sticker at amplitude 64/255, and the perturbation magnified" in grid
    assert [b for b in at.button if b.label == "Train model"]


def test_a_recipe_button_sets_every_training_setting_it_names_and_keeps_the_rest(page_cache):
    at = open_poison_page({**SMALL, "arch": "inception_v3_maxpool", "pp": "0.1"})
    assert any("Training recipe: **custom**" in c.value for c in at.sidebar.caption)
    at.sidebar.button(key="recipe_thesis").click().run()
    assert not at.exception, at.exception
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (params["epochs"], params["patience"], params["batch"], params["lr"], params["sched"], params["augs"], params["aug"]) == (
        "100", "20", "32", "0.001", "constant", "thesis", "1")
    assert (params["arch"], params["subset"], params["pp"]) == ("inception_v3_maxpool", "4000", "0.1")  # network, data and attack stay
    assert any("Training recipe: **thesis**" in c.value for c in at.sidebar.caption)
    assert at.sidebar.button(key="recipe_thesis").disabled
    at.sidebar.button(key="recipe_default").click().run()
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (params["epochs"], params["batch"], params["sched"], params["augs"]) == ("10", "256", "one_cycle", "affine")
