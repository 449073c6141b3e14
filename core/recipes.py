"""Training recipes: the training settings that belong together, by name, on either network.

"thesis" is the recipe of the thesis's own code (`coding/main_file_lukasschulth.py` and
`coding/TrafficSignMain.py`): Adam at a constant 1e-3 (its StepLR steps only after 100 epochs),
batches of 32, up to 100 epochs with early stopping on the validation loss after 20 epochs
without improvement (so at least 21), keeping the best checkpoint, and its torchvision
augmentation (`core.train.thesis_augmentation`).

"default" is ours, made for two CPU cores: a one-cycle schedule up to 1e-2 on batches of 256 for
10 epochs, with a milder affine augmentation (the measurements are in `core/train.py`). Where
they differ and what it changes is in the README (Training recipes).

A recipe sets only the fields it names; the architecture, the subset and the seed stay as they
are. On the command line `--recipe NAME` sets the defaults of the training options (options
given as well win), in a link or a study `recipe=NAME` does the same for the keys not given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from .errors import ConfigError
from .params import SWITCH, params_of
from .train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    description: str
    settings: Mapping[str, Any]  # TrainConfig field -> value

    def apply(self, train: TrainConfig) -> TrainConfig:
        return dataclasses.replace(train, **self.settings)

    def matches(self, train: TrainConfig) -> bool:
        return all(getattr(train, name) == value for name, value in self.settings.items())

    def query(self) -> Dict[str, str]:
        """The recipe's link parameters."""
        return {param.key: param.kind.to_text(self.settings[name]) for name, param, _ in params_of(TrainConfig) if name in self.settings}

    def option_defaults(self) -> Dict[str, Any]:
        """Argparse defaults (by destination) of the training options; a switch's default is 'not given'."""
        out = {}
        for name, param, default in params_of(TrainConfig):
            if name in self.settings:
                value = self.settings[name]
                out[param.dest] = (value != default) if param.kind is SWITCH else value
        return out


_DEFAULT = TrainConfig()
RECIPE_FIELDS = ("max_epochs", "patience", "batch_size", "learning_rate", "weight_decay", "schedule", "augment", "augmentation")

RECIPES: Dict[str, Recipe] = {
    "default": Recipe("ours, for two CPU cores: Adam with a one-cycle schedule up to 1e-2, batch 256, 10 epochs, "
                      "early stopping after 5, light affine augmentation",
                      {name: getattr(_DEFAULT, name) for name in RECIPE_FIELDS}),
    "thesis": Recipe("the thesis's code: Adam at a constant 1e-3, batch 32, up to 100 epochs with early stopping after 20 "
                     "(the best checkpoint is kept), its torchvision augmentation",
                     {"max_epochs": 100, "patience": 20, "batch_size": 32, "learning_rate": 1e-3, "weight_decay": 0.0,
                      "schedule": "constant", "augment": True, "augmentation": "thesis"}),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def recipe_name(train: TrainConfig) -> Optional[str]:
    """The recipe whose settings `train` has, if any."""
    return next((name for name, r in RECIPES.items() if r.matches(train)), None)


def expand_recipe(query: Mapping[str, str]) -> Dict[str, str]:
    """A link's parameters with `recipe=NAME` replaced by the recipe's keys (keys given as well win)."""
    query = dict(query)
    name = query.pop("recipe", None)
    if name is None:
        return query
    return {**recipe(str(name)).query(), **query}
