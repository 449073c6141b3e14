"""Training recipes: the thesis's recipe is what its code ran (optimiser, constant rate, batch size,
early stopping, augmentation), it reaches the command line, links and studies by name, and models
trained before the recipe fields existed keep their names."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import core.train as train_module
from core.cli import experiment_from_args, parse_arguments
from core.data import Split
from core.errors import ConfigError
from core.experiment import ExperimentConfig
from core.recipes import RECIPES, expand_recipe, recipe_name
from core.study import study_from_dict
from core.train import Augmenter, TrainConfig, augment_batch, fit, thesis_augmentation

THESIS = RECIPES["thesis"].apply(TrainConfig())


class Recorder(nn.Module):
    """A tiny classifier that notes the size of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 43))
        self.batches = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(len(x))
        return self.layer(x)


def split(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                 torch.randint(0, 43, (n,), generator=generator))


def test_the_thesis_recipe_is_the_thesis_code_s_settings():
    assert (THESIS.max_epochs, THESIS.patience, THESIS.batch_size, THESIS.learning_rate, THESIS.weight_decay) == (100, 20, 32, 1e-3, 0.0)
    assert (THESIS.schedule, THESIS.augment, THESIS.augmentation) == ("constant", True, "thesis")
    assert recipe_name(THESIS) == "thesis" and recipe_name(TrainConfig()) == "default"
    assert recipe_name(TrainConfig(max_epochs=11)) is None
    assert RECIPES["thesis"].apply(TrainConfig(architecture="inception_v3_maxpool", seed=3)).architecture == "inception_v3_maxpool"


def test_the_thesis_recipe_trains_with_adam_at_a_constant_rate_on_batches_of_32(monkeypatch):
    model = Recorder()
    adams = []
    real_adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: adams.append(real_adam(*a, **k)) or adams[-1])
    config = dataclasses.replace(THESIS, max_epochs=3)
    result = fit(model, split(100, 0), split(40, 1), config)
    assert len(adams) == 1 and adams[0].defaults["lr"] == 1e-3 and adams[0].defaults["weight_decay"] == 0.0
    assert [h["lr"] for h in result.history] == [1e-3] * 3
    assert model.batches == [32, 32, 32, 4] * 3  # 100 images: three full batches and the rest, every epoch
    # the default recipe's one-cycle rate rises and falls
    default = fit(Recorder(), split(100, 0), split(40, 1), TrainConfig(max_epochs=3, batch_size=32))
    rates = [h["lr"] for h in default.history]
    assert len(set(rates)) == 3 and max(rates) < 1e-2


def test_early_stopping_waits_20_epochs_and_keeps_the_best_checkpoint(monkeypatch):
    """Validation losses fall until epoch 4, then rise: the thesis's patience of 20 stops at epoch 24
    and the model keeps epoch 4's weights, whichever schedule ran."""
    losses = iter([1.0, 0.9, 0.8, 0.7] + [0.75 + 0.01 * i for i in range(200)])
    weights = {}

    def scripted(model, images, labels, batch_size=256):
        epoch = len(weights) + 1
        weights[epoch] = model.layer[1].weight.detach().clone()
        return next(losses), 0.5

    monkeypatch.setattr(train_module, "_evaluate", scripted)
    model = Recorder()
    result = fit(model, split(64, 0), split(16, 1), THESIS)
    assert result.epochs == 24 and result.best_epoch == 4
    assert torch.equal(model.layer[1].weight, weights[4]) and not torch.equal(model.layer[1].weight, weights[24])


def test_a_constant_rate_that_runs_to_its_end_keeps_the_best_epoch_not_the_last(monkeypatch):
    losses = iter([1.0, 0.5, 0.7])
    monkeypatch.setattr(train_module, "_evaluate", lambda *a, **k: (next(losses), 0.5))
    result = fit(Recorder(), split(64, 0), split(16, 1), dataclasses.replace(THESIS, max_epochs=3))
    assert (result.epochs, result.best_epoch) == (3, 2)
    losses = iter([1.0, 0.5, 0.7])
    one_cycle = fit(Recorder(), split(64, 0), split(16, 1), TrainConfig(max_epochs=3))
    assert (one_cycle.epochs, one_cycle.best_epoch) == (3, 3)  # a finished one-cycle schedule keeps its annealed weights


def test_the_thesis_augmentation_has_the_thesis_s_transforms_and_ranges():
    """torchvision's RandomResizedCrop(32, scale=(0.6, 1)), RandomRotation(15), ColorJitter(0.1, 0.1, 0.1, 0.1),
    RandomAffine(15), RandomGrayscale() in that order, read from the parameters each step draws for 4,000 images."""
    import kornia.augmentation as K

    torch.manual_seed(0)
    steps = list(thesis_augmentation().children())
    assert [type(s) for s in steps] == [K.RandomResizedCrop, K.RandomRotation, K.ColorJitter, K.RandomAffine, K.RandomGrayscale]
    shape = torch.Size((4000, 3, 32, 32))
    crop, rotation, colour, affine, grey = (step.forward_parameters(shape) for step in steps)

    def spans(values, low, high, slack):
        return low - 1e-6 <= float(values.min()) <= low + slack and high - slack <= float(values.max()) <= high + 1e-6

    corners = crop["src"]
    width, height = corners[:, 1, 0] - corners[:, 0, 0] + 1, corners[:, 2, 1] - corners[:, 1, 1] + 1
    area, ratio = width * height / 32**2, width / height  # whole pixels, as torchvision rounds them
    assert 0.56 <= float(area.min()) <= 0.62 and float(area.max()) == 1.0
    assert 0.70 <= float(ratio.min()) <= 0.78 and 1.30 <= float(ratio.max()) <= 1.40
    assert (crop["output_size"] == 32).all()
    assert spans(rotation["degrees"], -15, 15, 0.1) and bool(rotation["batch_prob"].all())
    for name in ("brightness", "contrast", "saturation"):
        assert spans(colour[f"{name}_factor"], 0.9, 1.1, 0.005), name
    assert spans(colour["hue_factor"], -0.1, 0.1, 0.005) and bool(colour["batch_prob"].all())
    assert spans(affine["angle"], -15, 15, 0.1) and bool(affine["batch_prob"].all())
    assert float(affine["translations"].abs().max()) == 0 and float((affine["scale"] - 1).abs().max()) == 0
    assert float(affine["shear_x"].abs().max()) == 0 and float(affine["shear_y"].abs().max()) == 0
    assert 0.08 <= float(grey["batch_prob"].float().mean()) <= 0.12


def test_the_thesis_augmentation_is_reproducible_from_the_training_generator():
    images = split(400, 0).float_images()
    first = Augmenter("thesis", torch.Generator().manual_seed(5))(images.clone())
    again = Augmenter("thesis", torch.Generator().manual_seed(5))(images.clone())
    other = Augmenter("thesis", torch.Generator().manual_seed(6))(images.clone())
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    grey = (first[:, 0] == first[:, 1]).flatten(1).all(1) & (first[:, 1] == first[:, 2]).flatten(1).all(1)
    assert 0.04 <= float(grey.double().mean()) <= 0.18  # RandomGrayscale p = 0.1 of 400 images
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    Augmenter("thesis", torch.Generator().manual_seed(5))(images.clone())
    assert torch.equal(torch.random.get_rng_state(), state), "the global generator is left as it was"
    ours = Augmenter("affine", torch.Generator().manual_seed(5))(images.clone())
    assert torch.equal(ours, augment_batch(images.clone(), torch.Generator().manual_seed(5)))


def test_recipe_fields_at_their_defaults_leave_model_names_as_they_were():
    default = ExperimentConfig()
    assert "schedule" not in default.to_dict()["train"] and "augmentation" not in default.to_dict()["train"]
    thesis = ExperimentConfig(train=THESIS)
    assert thesis.to_dict()["train"]["schedule"] == "constant" and thesis.to_dict()["train"]["augmentation"] == "thesis"
    assert ExperimentConfig.from_dict(thesis.to_dict()) == thesis
    assert ExperimentConfig.from_query(thesis.to_query()) == thesis
    # the network that differs only in its pool branch has a name, and so a model, of its own
    assert ExperimentConfig(train=TrainConfig(architecture="inception_v3_maxpool")).to_dict() != \
        ExperimentConfig(train=TrainConfig(architecture="inception_v3")).to_dict()


def test_the_recipe_by_name_on_the_command_line_in_links_and_in_studies():
    args = parse_arguments(["train", "--recipe", "thesis", "--epochs", "30", "--architecture", "inception_v3_maxpool"])
    train = experiment_from_args(args).train
    assert train == dataclasses.replace(THESIS, architecture="inception_v3_maxpool", max_epochs=30)
    assert experiment_from_args(parse_arguments(["train", "--recipe", "thesis", "--no-augment"])).train.augment is False
    assert experiment_from_args(parse_arguments(["train", "--recipe", "default"])).train == TrainConfig()
    assert ExperimentConfig.from_query({"recipe": "thesis", "epochs": "50"}).train == dataclasses.replace(THESIS, max_epochs=50)
    assert expand_recipe({"pp": "0.1"}) == {"pp": "0.1"}
    with pytest.raises(ConfigError, match="unknown recipe 'fastest'; choose one of default, thesis"):
        ExperimentConfig.from_query({"recipe": "fastest"})
    study = study_from_dict({"name": "t", "base": {"recipe": "thesis"}, "grid": {"pp": [0.01, 0.33]}})
    assert [cell.train for cell in study.cells] == [THESIS, THESIS]
    assert [cell.poison.fraction for cell in study.cells] == [0.01, 0.33]


@pytest.mark.parametrize("value", ["fast", "", "THESIS"])
def test_an_unknown_recipe_on_the_command_line_is_one_line(value, capsys):
    from core.cli import main

    assert main(["train", "--recipe", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--recipe" in err and "thesis" in err
