"""The AA/BA evaluation on a small real model: structure, ranges, the cache of adversarial
examples, and the CLI's handling of bad input."""

from __future__ import annotations

import pytest
import torch

import core.robustness as robustness
from core.cli import main
from core.defense import DefenseConfig
from core.errors import ConfigError
from core.data import Split
from core.experiment import ExperimentConfig, clean_twin
from core.robustness import RobustnessConfig, draw_test_images, robustness_table, sample_test_images
from core.train import TrainConfig

SMALL = ExperimentConfig(train=TrainConfig(subset=6000, max_epochs=4, batch_size=128, augment=False))
QUICK_EVAL = RobustnessConfig(images=24, attacks=("fgsm", "pgd-l2", "bpda"), defense=DefenseConfig(iterations=50))


def test_table_on_a_small_model_and_its_cached_adversarial_examples(gtsrb, tmp_cache, monkeypatch):
    table = robustness_table(SMALL, QUICK_EVAL, gtsrb)
    assert table["images"] == 24 and [row["attack"] for row in table["attacks"]] == ["fgsm", "pgd-l2", "bpda"]
    assert 0.5 <= table["clean_accuracy"] <= 1
    for marginals in ("B6", "B4"):
        assert 0 <= table["clean_barycenter_accuracy"][marginals] <= 1
    for row in table["attacks"]:
        assert 0 <= row["aa"] < table["clean_accuracy"] and 0 <= row["ba"] <= 1, row
    assert table["attacks"][0]["eps"] == round(8 / 255, 6) and table["attacks"][1]["eps"] == 0.5
    fgsm, _, adaptive = table["attacks"]
    assert adaptive["ba"] <= fgsm["ba"], "the attack that goes through the defense should beat it at least as well as FGSM"
    trigger = table["trigger"]
    assert trigger["images"] == 24 < int((gtsrb.test.labels == SMALL.poison.source).sum())
    assert 0 <= trigger["success_rate"] <= 1 and 0 <= trigger["success_rate_barycenter"] <= 1
    assert len(list(tmp_cache.glob("adv-*.safetensors"))) == 3

    def no_attacks(*args, **kwargs):
        raise AssertionError("the adversarial examples should come from the cache")

    monkeypatch.setattr(robustness, "attack", no_attacks)
    (table_file,) = tmp_cache.glob("robustness-*.safetensors")
    table_file.unlink()
    assert robustness_table(SMALL, QUICK_EVAL, gtsrb) == table  # recomputed from cached adversarial examples
    monkeypatch.setattr(robustness, "purify", no_attacks)
    assert robustness_table(SMALL, QUICK_EVAL, gtsrb) == table  # the finished table, read back
    other_defense = RobustnessConfig(images=24, attacks=("bpda",), defense=DefenseConfig(iterations=60))
    with pytest.raises(AssertionError, match="cache"):
        robustness_table(SMALL, other_defense, gtsrb)  # the adaptive attack depends on the defense it attacks


def test_image_sample_is_seeded_and_bounded():
    first, again = sample_test_images(100, 12630, 0), sample_test_images(100, 12630, 0)
    assert torch.equal(first, again) and len(first.unique()) == 100 and not torch.equal(first, sample_test_images(100, 12630, 1))
    with pytest.raises(ConfigError):
        sample_test_images(20000, 12630, 0)


def test_the_defense_pages_draw_is_the_tables_sample_of_the_split_or_of_one_class():
    labels = torch.arange(12630) % 43
    test = Split(torch.zeros(len(labels), 3, 1, 1, dtype=torch.uint8), labels)
    assert torch.equal(draw_test_images(test, 100, 3), sample_test_images(100, 12630, 3))
    five = draw_test_images(test, 8, 3, class_id=5)
    assert len(five) == 8 and bool((labels[five] == 5).all()) and torch.equal(five, five.sort().values)
    assert torch.equal(five, draw_test_images(test, 8, 3, class_id=5)) and not torch.equal(five, draw_test_images(test, 8, 4, class_id=5))
    assert len(draw_test_images(test, 1000, 0, class_id=5)) == int((labels == 5).sum()), "at most the class's images"


def test_the_clean_twin_is_the_same_experiment_without_poisoned_samples():
    config = ExperimentConfig.from_query({"pp": "0.2", "subset": "3000", "seed": "4", "size": "3"})
    twin = clean_twin(config)
    assert twin.poison.fraction == 0.0 and twin.train == config.train
    assert ExperimentConfig.from_query({**twin.to_query(), "pp": "0.2"}) == config


@pytest.mark.parametrize("kwargs", [{"images": 0}, {"attacks": ()}, {"attacks": ("fgsm", "fgsm")}, {"attacks": ("nope",)},
                                    {"eps_linf": -1.0}, {"defense": "B6"}, {"seed": -2}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        RobustnessConfig(**kwargs)


@pytest.mark.parametrize("argv", [["--images", "0"], ["--iterations", "0"], ["--eps-l2", "nan"], ["--images", "20001"]])
def test_cli_refuses_bad_input_with_a_message(argv, capsys):
    assert main(["defend", "--quiet", *argv]) == 2
    assert capsys.readouterr().err.startswith("error: ")
