"""An experiment: one poisoning attack and one training run on GTSRB, and what they yield.

`ExperimentConfig` is the active experiment that the CLI, every page and the URL share.
`train_or_load` returns its trained model and metrics, from `cache/` when they exist: the
weights are a safetensors file named by a hash of the data, the attack and the training
configuration, with the metrics in its metadata.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from . import params
from .cache import cache_dir, cached, config_hash, load_cached
from .data import GTSRB, NUM_CLASSES, Split, load_gtsrb
from .durations import record
from .errors import ArtifactError, ConfigError
from .models import build_model, predict
from .poison import PoisonConfig, PoisonedSplit, attack_test_set, poison_split
from .progress import ProgressCallback
from .train import TrainConfig, fit

_ARTIFACT_VERSION = 2  # 2: a finished one-cycle schedule keeps its final weights


_LATER_POISON_FIELDS = {"kind": "sticker", "amplitude": 255, "perturbation": 8.0}
_LATER_TRAIN_FIELDS = {"schedule": "one_cycle", "augmentation": "affine"}
_PERTURBATION_VERSION = 1


@dataclass(frozen=True)
class ExperimentConfig:
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        """The configuration, which names its model: the attack-kind and recipe fields are left out where
        they change nothing (so the models from before them keep their names)."""
        poison = dataclasses.asdict(self.poison)
        for name, default in _LATER_POISON_FIELDS.items():
            if poison[name] == default or (name == "perturbation" and not self.poison.label_consistent):
                del poison[name]
        train = dataclasses.asdict(self.train)
        for name, default in _LATER_TRAIN_FIELDS.items():  # the recipe fields: models from before them keep their names
            if train[name] == default or (name == "augmentation" and not self.train.augment):
                del train[name]
        return {"poison": poison, "train": train}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "ExperimentConfig":
        if not isinstance(value, Mapping):
            raise ConfigError(f"an experiment configuration must be a mapping, got {type(value).__name__}")
        unknown = set(value) - {"poison", "train"}
        if unknown:
            raise ConfigError(f"unknown experiment sections: {', '.join(sorted(unknown))}")
        return cls(_build(PoisonConfig, value.get("poison", {})), _build(TrainConfig, value.get("train", {})))

    def to_query(self) -> Dict[str, str]:
        """Flat string parameters for a URL query string (see `from_query`)."""
        return params.to_query(self)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> "ExperimentConfig":
        """Parse `to_query` output; absent keys take defaults, malformed ones raise ConfigError;
        `recipe=NAME` stands for the recipe's training keys."""
        from .recipes import expand_recipe

        return params.from_query(cls, expand_recipe(query))


def _build(kind, values: Mapping[str, Any]):
    if not isinstance(values, Mapping):
        raise ConfigError(f"{kind.__name__} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} parameters: {', '.join(sorted(unknown))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"bad {kind.__name__} parameters: {exc}") from None


QUICK_TRAINING = {"subset": 8000, "max_epochs": 6, "batch_size": 128, "learning_rate": 6e-3, "augment": False}
"""The quick experiment's training: measured on the thesis's attack (2 cores), 18 s to 92.2 % clean
accuracy, 91.6 % on clean 50 km/h signs and 93.5 % attack success. Augmentation is off: in so few
epochs it slows the learning of the sticker; the full schedule's peak of 1e-2 learns it less
reliably in 6 epochs (81.7 % attack success)."""


def quick_experiment(base: Optional[ExperimentConfig] = None) -> ExperimentConfig:
    """`base`'s attack (the thesis's by default) trained on a random 8,000-image subset for 6 epochs:
    about a minute on an ordinary 2-core CPU, and still a working backdoor that the heatmaps and
    the detectors expose. The numbers are the reduced experiment's, not the thesis's."""
    base = base if base is not None else ExperimentConfig()
    return ExperimentConfig(base.poison, dataclasses.replace(base.train, **QUICK_TRAINING))


def full_experiment(base: ExperimentConfig) -> ExperimentConfig:
    """`base`'s attack trained as the defaults train: every training image, the default schedule."""
    default = TrainConfig()
    return ExperimentConfig(base.poison, dataclasses.replace(base.train, **{k: getattr(default, k) for k in QUICK_TRAINING}))


def clean_twin(config: ExperimentConfig) -> ExperimentConfig:
    """The same experiment without poisoned samples: the model the defense is measured against
    next to the poisoned one, and the one the label-consistent attack perturbs against. Every
    attack on the same classes shares it."""
    return dataclasses.replace(config, poison=dataclasses.replace(config.poison, fraction=0.0, **_LATER_POISON_FIELDS))


def is_reduced(config: ExperimentConfig) -> bool:
    """True when the model sees only a subset of the training images."""
    return config.train.subset > 0


@dataclass(frozen=True, eq=False)
class PoisonedData:
    """The data of an experiment: poisoned training and validation splits, the attack test set."""

    train: PoisonedSplit
    val: PoisonedSplit
    attack: PoisonedSplit
    """Every source-class test image with a sticker; labels are the true (source) class."""
    test: Split
    """The untouched test split, for clean accuracy."""
    train_index: torch.Tensor
    """Indices into the GTSRB training split of `train` (all of them unless `subset` is set)."""


def poisoned_data(data: GTSRB, config: ExperimentConfig, progress: Optional[ProgressCallback] = None) -> PoisonedData:
    """Poison the splits; with `train.subset` > 0, keep a seeded random subset of the training split.
    The label-consistent attack first trains (or loads) the clean model it perturbs against."""
    perturb = _perturbation(data, config, progress)
    train = poison_split(data.train, config.poison, "train", perturb)
    index = torch.arange(len(train))
    if config.train.subset and config.train.subset < len(train):
        generator = torch.Generator().manual_seed(config.train.seed)
        index = torch.randperm(len(train), generator=generator)[: config.train.subset].sort().values
        train = PoisonedSplit(train.images[index], train.labels[index], train.poison_mask[index], train.positions[index])
    val = poison_split(data.val, config.poison, "val", perturb)
    return PoisonedData(train, val, attack_test_set(data.test, config.poison), data.test, index)


def perturbation_path(data: GTSRB, config: ExperimentConfig, split_name: str) -> Path:
    """Where the label-consistent attack's perturbed images of one split are cached: named by the
    clean model they were computed against and what chooses and bounds them."""
    poison = config.poison
    clean = model_path(data, clean_twin(config)).name
    return cache_dir() / ("perturbed-" + config_hash(_PERTURBATION_VERSION, clean, split_name, poison.target, poison.fraction,
                                                     poison.seed, poison.perturbation) + ".safetensors")


def needs_perturbation(config: ExperimentConfig) -> bool:
    poison = config.poison
    return poison.label_consistent and poison.perturbation > 0 and poison.fraction > 0


def attack_ready(data: GTSRB, config: ExperimentConfig) -> bool:
    """Whether `poisoned_data` is quick: no perturbation to compute (and no clean model to train)."""
    return not needs_perturbation(config) or all(perturbation_path(data, config, s).is_file() for s in ("train", "val"))


def perturbed_images(data: GTSRB, config: ExperimentConfig, split_name: str = "train") -> Optional[Dict[str, torch.Tensor]]:
    """The cached perturbed images of a split before the sticker ("images") and their indices in
    it ("index"), or None."""
    if not needs_perturbation(config):
        return None
    return load_cached(perturbation_path(data, config, split_name), lambda tensors, meta: tensors)


def _perturbation(data: GTSRB, config: ExperimentConfig, progress: Optional[ProgressCallback]):
    """The label-consistent attack's perturbation: untargeted PGD L∞ (core.evasion) against the
    clean model, away from the images' own (target) class, within the budget; cached per split."""
    if not needs_perturbation(config):
        return None
    poison = config.poison
    clean: list = []

    def perturb(images: torch.Tensor, split_name: str, index: torch.Tensor) -> torch.Tensor:
        from .evasion import AttackConfig, attack

        def compute() -> Dict[str, torch.Tensor]:
            if not clean:
                clean.append(train_or_load(clean_twin(config), data, progress=progress))
            labels = torch.full((len(images),), poison.target, dtype=torch.int64)
            adversarial = attack(clean[0].model, images.float() / 255, labels,
                                 AttackConfig(name="pgd-linf", eps=poison.perturbation / 255, seed=poison.seed % 2**32), progress=progress)
            step = int(poison.perturbation)  # whole grey levels: rounding must not leave the budget
            moved = ((adversarial * 255).round().to(torch.int16) - images.to(torch.int16)).clamp(-step, step)
            return {"images": (images.to(torch.int16) + moved).clamp(0, 255).to(torch.uint8), "index": index.clone()}

        stored = cached(perturbation_path(data, config, split_name), compute,
                        lambda out: (out, {"split": split_name, "budget": poison.perturbation}), lambda tensors, meta: tensors,
                        progress=progress)
        if not torch.equal(stored["index"], index):
            raise ArtifactError(f"{perturbation_path(data, config, split_name).name} holds other images; delete it to recompute")
        return stored["images"]

    return perturb


@dataclass(frozen=True, eq=False)
class TrainedModel:
    model: nn.Module
    metrics: Dict[str, Any]
    path: Path
    from_cache: bool


def model_path(data: GTSRB, config: ExperimentConfig) -> Path:
    key = config_hash(_ARTIFACT_VERSION, data.content_id, config.to_dict())
    return cache_dir() / f"model-{config.train.architecture}-{key}.safetensors"


def evaluate(model: nn.Module, poisoned: PoisonedData, config: ExperimentConfig) -> Dict[str, Any]:
    """Clean accuracy, source-class accuracy, attack success rate and the source class's confusion."""
    source, target = config.poison.source, config.poison.target
    test_pred = predict(model, poisoned.test.images)
    attack_pred = predict(model, poisoned.attack.images)
    is_source = poisoned.test.labels == source
    return {
        "clean_accuracy": float((test_pred == poisoned.test.labels).float().mean()),
        "source_accuracy": float((test_pred[is_source] == source).float().mean()),
        "attack_success_rate": float((attack_pred == target).float().mean()),
        "n_poisoned": int(poisoned.train.poison_mask.sum()),
        "n_poisoned_val": int(poisoned.val.poison_mask.sum()),
        "n_train": len(poisoned.train),
        "n_attack_test": len(poisoned.attack),
        "source_predictions_clean": torch.bincount(test_pred[is_source], minlength=NUM_CLASSES).tolist(),
        "source_predictions_stickered": torch.bincount(attack_pred, minlength=NUM_CLASSES).tolist(),
    }


def _decoder(config: ExperimentConfig, path: Path):
    def decode(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> TrainedModel:
        model = build_model(config.train.architecture)
        model.load_state_dict(tensors)  # a RuntimeError for weights of another shape: the file is rebuilt
        model.eval()
        return TrainedModel(model, meta["metrics"], path, True)

    return decode


def load_trained(data: GTSRB, config: ExperimentConfig) -> Optional[TrainedModel]:
    """The cached model of `config`, or None when it is absent (a damaged file is removed)."""
    path = model_path(data, config)
    return load_cached(path, _decoder(config, path))


def train_or_load(
    config: ExperimentConfig,
    data: Optional[GTSRB] = None,
    progress: Optional[ProgressCallback] = None,
    use_cache: bool = True,
) -> TrainedModel:
    """The trained model of `config` with its metrics; trains and caches it when needed (another
    process training the same model is waited for, through the artifact's lock)."""
    data = data if data is not None else load_gtsrb(progress=progress)
    path = model_path(data, config)

    def encode(trained: TrainedModel):
        return trained.model.state_dict(), {"config": config.to_dict(), "data": data.content_id, "metrics": trained.metrics}

    return cached(path, lambda: _train(config, data, path, progress), encode, _decoder(config, path), use_cache, progress)


def train_without(config: ExperimentConfig, data: GTSRB, removed: torch.Tensor, path: Path,
                  progress: Optional[ProgressCallback] = None, use_cache: bool = True,
                  note: Optional[Dict[str, Any]] = None) -> TrainedModel:
    """`config` retrained, with the same seed, without the training samples `removed`, cached at
    `path` (which the caller names by what was removed), with `note` in its metadata."""
    removed = torch.as_tensor(removed, dtype=torch.bool)
    n_train = min(config.train.subset, len(data.train)) if config.train.subset else len(data.train)
    if removed.shape != (n_train,):
        raise ConfigError(f"the removal mask must cover the {n_train:,} training samples, got shape {tuple(removed.shape)}")

    def encode(trained: TrainedModel):
        return trained.model.state_dict(), {"config": config.to_dict(), "data": data.content_id, "metrics": trained.metrics,
                                            "removed": int(removed.sum()), "note": note or {}}

    return cached(path, lambda: _train(config, data, path, progress, removed), encode, _decoder(config, path), use_cache, progress)


def training_step(config: ExperimentConfig, threads: Optional[int] = None) -> str:
    """The name under which training's duration per image and epoch is measured (core.durations),
    per thread count (a study's one-thread workers train at another speed than the app) and per GPU."""
    from .device import compute_device, describe

    device = compute_device()
    where = describe(device) if device.type == "cuda" else f"{threads or torch.get_num_threads()} threads"
    return f"train {config.train.architecture} ({where})"


def training_estimate(config: ExperimentConfig, data: GTSRB, threads: Optional[int] = None) -> Optional[float]:
    """Seconds that training `config` takes at most on this CPU (all its epochs) with `threads`
    threads (this process's by default), if measured here."""
    from .durations import estimate

    images = min(config.train.subset, len(data.train)) if config.train.subset else len(data.train)
    return estimate(training_step(config, threads), images * config.train.max_epochs)


def _train(config: ExperimentConfig, data: GTSRB, path: Path, progress: Optional[ProgressCallback],
           removed: Optional[torch.Tensor] = None) -> TrainedModel:
    """Train `config`; without the training samples `removed` (bool over the experiment's training
    split) if given, which is how a cleansed model is retrained."""
    poisoned = poisoned_data(data, config, progress)
    train = poisoned.train
    if removed is not None:
        kept = ~removed
        train = PoisonedSplit(train.images[kept], train.labels[kept], train.poison_mask[kept], train.positions[kept])
        poisoned = dataclasses.replace(poisoned, train=train, train_index=poisoned.train_index[kept])
    torch.manual_seed(config.train.seed)
    model = build_model(config.train.architecture)
    started = time.perf_counter()
    result = fit(model, poisoned.train.as_split(), poisoned.val.as_split(), config.train, progress)
    metrics = evaluate(model, poisoned, config)
    metrics.update(
        epochs=result.epochs, best_epoch=result.best_epoch,
        train_seconds=round(time.perf_counter() - started, 2), history=result.history,
    )
    record(training_step(config), metrics["train_seconds"], len(poisoned.train) * result.epochs)
    return TrainedModel(model, metrics, path, False)
