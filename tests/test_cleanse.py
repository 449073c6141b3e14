"""Cleanse and retrain: removing the ground truth's flags takes the backdoor out of a small real
model, a random removal of as many does not, and bad methods are refused in one line."""

from __future__ import annotations

import pytest

from core.cleanse import METHODS, check_methods, cleanse, cleansed_path, removal
from core.cli import main
from core.errors import ConfigError
from core.experiment import ExperimentConfig, poisoned_data

SMALL = {"subset": "4000", "epochs": "3", "patience": "3", "aug": "0"}


def test_methods_are_checked_in_one_line():
    assert check_methods(["truth", "gw", "truth"]) == ("truth", "gw")
    with pytest.raises(ConfigError, match="unknown cleansing method 'magic'; choose from truth, random, spectral"):
        check_methods(["truth", "magic"])
    with pytest.raises(ConfigError, match="at least one"):
        check_methods([])
    assert set(METHODS) >= {"truth", "random", "spectral", "gw", "activation", "signatures"}


def test_the_command_line_refuses_an_unknown_method_with_status_2(capsys):
    assert main(["cleanse", "--method", "truth", "oracle", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown cleansing method 'oracle'; choose from truth, random, spectral, gw, activation, signatures"


@pytest.mark.slow
def test_removing_the_poisoned_samples_drops_the_attack_success_rate(gtsrb, seeded_cache):
    config = ExperimentConfig.from_query(SMALL)
    train = poisoned_data(gtsrb, config).train
    in_class = train.labels == config.poison.target
    truth = removal(config, "truth", gtsrb)
    assert truth.equal(train.poison_mask) and not (truth & ~in_class).any()
    random = removal(config, "random", gtsrb)
    assert int(random.sum()) == int(truth.sum()) and not (random & ~in_class).any()
    assert random.equal(removal(config, "random", gtsrb)), "seeded"

    cleansed = cleanse(config, "truth", gtsrb)
    assert cleansed["removed"] == cleansed["removed_poisoned"] == int(train.poison_mask.sum()) > 50
    assert cleansed["removed_clean"] == 0 and cleansed["poisoned_left"] == 0
    assert cleansed["attack_success_rate_before"] > 0.5, "the small model learnt the backdoor"
    assert cleansed["attack_success_rate"] < 0.2, "without its poisoned samples it does not"
    assert cleansed["clean_accuracy"] > cleansed["clean_accuracy_before"] - 0.1
    assert cleansed_path(config, "truth", gtsrb).is_file()

    lower = cleanse(config, "random", gtsrb)
    assert lower["removed"] == cleansed["removed"] and lower["poisoned_left"] > 0
    assert lower["attack_success_rate"] > cleansed["attack_success_rate"]
    assert cleanse(config, "truth", gtsrb) == cleansed, "cached"
