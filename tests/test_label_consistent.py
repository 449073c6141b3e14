"""The label-consistent attack on real GTSRB: labels stay true, the perturbation stays within its
budget and makes the images hard for the clean model, the sticker sits where it is configured at
the configured amplitude, and the sticker attack's models keep their names."""

from __future__ import annotations

import pytest
import torch

from core.cli import main
from core.errors import ConfigError
from core.experiment import ExperimentConfig, attack_ready, clean_twin, perturbed_images, poisoned_data, train_or_load
from core.models import predict
from core.poison import PoisonConfig, poison_split, stick

SMALL = {"subset": "4000", "epochs": "3", "patience": "3", "aug": "0"}


@pytest.mark.parametrize("fields, message", [
    ({"kind": "clean-label"}, "attack kind must be one of sticker, label-consistent"),
    ({"amplitude": 0}, "sticker amplitude must be in 1 … 255"),
    ({"amplitude": 300}, "sticker amplitude must be in 1 … 255"),
    ({"perturbation": 40.0}, "perturbation budget must be in 0 … 32"),
    ({"perturbation": -1.0}, "perturbation budget must be in 0 … 32"),
])
def test_bad_attack_settings_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as refused:
        PoisonConfig(kind=fields.pop("kind", "label-consistent"), **fields)
    assert "\n" not in str(refused.value)


def test_the_command_line_refuses_an_unknown_attack_kind(capsys):
    assert main(["train", "--kind", "clean-label", "--quiet"]) == 2
    assert "argument --kind: invalid choice: 'clean-label' (choose from 'sticker', 'label-consistent')" in capsys.readouterr().err


def test_the_sticker_attacks_model_names_do_not_change():
    """The new fields stay out of the name where they change nothing, so cached models stay valid."""
    plain = ExperimentConfig().to_dict()["poison"]
    assert set(plain) == {"source", "target", "size", "color", "x_range", "y_range", "fraction", "seed"}
    sticker = ExperimentConfig.from_query({"lceps": "16"})  # a budget the sticker attack does not use
    assert sticker.to_dict() == ExperimentConfig().to_dict()
    lc = ExperimentConfig.from_query({"kind": "label-consistent", "amp": "64"})
    assert lc.to_dict()["poison"]["kind"] == "label-consistent" and lc.to_dict()["poison"]["amplitude"] == 64
    assert clean_twin(lc) == clean_twin(ExperimentConfig()), "every attack on the same classes shares the clean model"


def test_without_a_perturbation_labels_stay_and_the_sticker_is_blended_at_its_amplitude(gtsrb):
    config = PoisonConfig(kind="label-consistent", perturbation=0.0, amplitude=64, fraction=0.1, size=3)
    split = poison_split(gtsrb.train, config)
    assert torch.equal(split.labels, gtsrb.train.labels), "no label changes"
    target = gtsrb.train.labels == config.target
    assert int(split.poison_mask.sum()) == round(0.1 * int(target.sum())) and not (split.poison_mask & ~target).any()
    chosen = torch.nonzero(split.poison_mask).flatten()
    expected = stick(gtsrb.train.images[chosen], split.positions[chosen], config, 64)
    assert torch.equal(split.images[chosen], expected)
    x, y = split.positions[chosen[0]].tolist()
    assert config.x_range[0] <= x <= config.x_range[1] and config.y_range[0] <= y <= config.y_range[1]
    original = gtsrb.train.images[chosen[0], :, y, x].float()
    colour = torch.tensor(config.color, dtype=torch.float32)
    assert torch.equal(split.images[chosen[0], :, y, x], (original + 64 / 255 * (colour - original)).round().to(torch.uint8))
    untouched = ~split.poison_mask
    assert torch.equal(split.images[untouched], gtsrb.train.images[untouched])
    with pytest.raises(ConfigError, match="needs a model"):
        poison_split(gtsrb.train, PoisonConfig(kind="label-consistent", fraction=0.1))


@pytest.mark.slow
def test_the_perturbation_stays_within_budget_and_makes_target_images_hard(gtsrb, seeded_cache):
    config = ExperimentConfig.from_query({**SMALL, "kind": "label-consistent", "pp": "0.2", "lceps": "8"})
    assert not attack_ready(gtsrb, config), "the perturbation is not computed yet"
    poisoned = poisoned_data(gtsrb, config)
    train = poisoned.train
    original = gtsrb.train.images[poisoned.train_index]
    assert torch.equal(train.labels, gtsrb.train.labels[poisoned.train_index]), "every label is the true one"
    mask = train.poison_mask
    assert mask.any() and (train.labels[mask] == config.poison.target).all()
    window = torch.zeros(32, 32, dtype=torch.bool)  # every pixel a sticker may cover
    window[config.poison.y_range[0]:config.poison.y_range[1] + config.poison.size,
           config.poison.x_range[0]:config.poison.x_range[1] + config.poison.size] = True
    change = (train.images[mask].int() - original[mask].int()).abs()
    assert int(change[..., ~window].max()) <= 8, "outside the sticker, within 8/255"
    assert int(change[..., ~window].max()) >= 7, "the perturbation uses its budget"
    for i in torch.nonzero(mask).flatten()[:20].tolist():  # the sticker sits in its window, painted in full
        x, y = train.positions[i].tolist()
        assert config.poison.x_range[0] <= x <= config.poison.x_range[1]
        colour = torch.tensor(config.poison.color, dtype=torch.uint8)
        assert torch.equal(train.images[i, :, y, x], colour)

    clean = train_or_load(clean_twin(config), gtsrb)
    assert attack_ready(gtsrb, config)
    stored = perturbed_images(gtsrb, config)  # before the sticker, as cached for the training set above
    chosen, hard = stored["index"], stored["images"]
    assert torch.equal(chosen, torch.nonzero(poison_split(gtsrb.train, config.poison, "train", lambda x, s, i: x).poison_mask).flatten())
    right_before = float((predict(clean.model, gtsrb.train.images[chosen]) == config.poison.target).float().mean())
    right_after = float((predict(clean.model, hard) == config.poison.target).float().mean())
    assert right_before > 0.5 and right_after < right_before / 2, (right_before, right_after)

    trained = train_or_load(config, gtsrb)  # and the attack trains like any experiment
    assert trained.metrics["n_poisoned"] == int(mask.sum())
    assert 0 <= trained.metrics["attack_success_rate"] <= 1 and trained.metrics["clean_accuracy"] > 0.5
