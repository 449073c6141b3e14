"""How a model fares against evasion attacks with and without the barycentric defense.

The paper's tables II–V on GTSRB: for each attack, the accuracy on attacked images (AA) and
on their barycenters (BA); the clean accuracy and the accuracy on clean barycenters for B6
and B4; and a row the paper does not have: the success rate of the poisoning sticker
(stickered source-class test images, a sample of at most as many as the other rows use,
classified as the target) with and without the barycenter. Adversarial examples are cached per
(model, attack, budget, image set); the adaptive attack's also per defense.

And the thesis's spatial defense (7.2): clean accuracy and the sticker's success rate on the
whole test split with each test-time transformation of `core.spatial`, beside none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .cache import meta_only
from .defense import DefenseConfig, purify
from .evasion import attack_step
from .models import architecture_name
from .errors import ConfigError
from .validation import whole_number
from .evasion import ATTACKS, AttackConfig, attack
from .progress import ProgressCallback, report
from .spatial import DEFAULT_TRANSFORMS, SpatialTransform, parse_transforms

_ARTIFACT_VERSION = 1


@dataclass(frozen=True)
class RobustnessConfig:
    """Test images (a seeded random sample), attacks with their budgets, the defense."""

    images: int = 1000
    attacks: Tuple[str, ...] = tuple(ATTACKS)
    eps_linf: float = 8 / 255
    eps_l2: float = 0.5
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        whole_number("images", self.images, 1, 20_000)
        attacks = tuple(self.attacks) if isinstance(self.attacks, (list, tuple)) else ()
        if not attacks or any(not isinstance(a, str) or a not in ATTACKS for a in attacks) or len(set(attacks)) != len(attacks):
            raise ConfigError(f"attacks must be distinct names among {', '.join(ATTACKS)}, got {self.attacks!r}")
        object.__setattr__(self, "attacks", attacks)
        for name in ("eps_linf", "eps_l2"):
            AttackConfig(eps=getattr(self, name))  # same validation as a single attack
        if not isinstance(self.defense, DefenseConfig):
            raise ConfigError("defense must be a DefenseConfig")
        whole_number("seed", self.seed, 0, 2**32 - 1)

    def attack_config(self, name: str) -> AttackConfig:
        norm = AttackConfig(name=name).norm
        return AttackConfig(name=name, eps=self.eps_linf if norm == "linf" else self.eps_l2, seed=self.seed)


def sample_test_images(count: int, total: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random sample of the test split."""
    if count > total:
        raise ConfigError(f"asked for {count} test images, the test split has {total}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:count].sort().values


def draw_test_images(test, count: int, seed: int, class_id: Optional[int] = None) -> torch.Tensor:
    """Sorted positions of at most `count` test images, drawn as `sample_test_images` draws
    (so the same seed gives the same images) from the whole split or from one class's images."""
    pool = torch.arange(len(test)) if class_id is None else torch.nonzero(test.labels == class_id).flatten()
    return pool[sample_test_images(min(count, len(pool)), len(pool), seed)]


def model_inputs(split, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The images at `index` as the models take them (float in [0, 1]), with their labels."""
    return split.images[index].float() / 255, split.labels[index]


def adversarial_examples(model, model_name: str, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                         config: AttackConfig, progress: Optional[ProgressCallback] = None, use_cache: bool = True,
                         batch: int = 64, defense: Optional[DefenseConfig] = None) -> torch.Tensor:
    """Attacked versions of `images` (test images `index`), cached per model, attack and image
    set (and, for the adaptive attack, the defense it attacks)."""
    from .cache import cache_dir, cached, config_hash

    attacked = asdict(defense) if config.name == "bpda" and defense is not None else None
    parts_of_key = (_ARTIFACT_VERSION, model_name, asdict(config), index.tolist())
    key = config_hash(*parts_of_key, attacked) if attacked is not None else config_hash(*parts_of_key)

    def compute() -> torch.Tensor:
        parts = []
        for start in range(0, len(images), batch):
            report(progress, ATTACKS[config.name], start, len(images), f"{start} of {len(images)} images")
            parts.append(attack(model, images[start:start + batch], labels[start:start + batch],
                                replace(config, seed=config.seed + start), defense=defense))
        return torch.cat(parts)

    return cached(cache_dir() / f"adv-{config.name}-{key}.safetensors", compute,
                  lambda adversarial: ({"images": adversarial.contiguous()}, {"attack": asdict(config), "model": model_name}),
                  lambda tensors, meta: tensors["images"], use_cache, progress, measure=(attack_step(architecture_name(model), config), len(images)))


def _purified(images: torch.Tensor, defense: DefenseConfig, progress: Optional[ProgressCallback], task: str,
              batch: int = 256) -> torch.Tensor:
    parts = []
    for start in range(0, len(images), batch):
        report(progress, task, start, len(images), f"barycenters {start} of {len(images)}")
        parts.append(purify(images[start:start + batch], defense))
    return torch.cat(parts) if parts else images


def table_path(model_name: str, config: RobustnessConfig):
    from .cache import cache_dir, config_hash

    return cache_dir() / f"robustness-{config_hash(_ARTIFACT_VERSION, model_name, asdict(config))}.safetensors"


def cached_table(model_name: str, config: RobustnessConfig) -> Optional[Dict[str, object]]:
    """The table of a finished run with these settings, or None."""
    from .cache import load_cached

    return load_cached(table_path(model_name, config), meta_only)


def robustness_table(experiment, config: RobustnessConfig = RobustnessConfig(), data=None,
                     progress: Optional[ProgressCallback] = None, use_cache: bool = True) -> Dict[str, object]:
    """AA and BA per attack, clean and clean-barycenter accuracy (B6 and B4), and the
    sticker's success rate with and without the barycenter, for the model of `experiment`."""
    from .cache import cached
    from .data import load_gtsrb
    from .experiment import train_or_load

    if not isinstance(config, RobustnessConfig):
        raise ConfigError("config must be a RobustnessConfig")
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress, use_cache=use_cache)
    return cached(table_path(trained.path.name, config), lambda: _measure(experiment, config, data, trained, progress, use_cache),
                  lambda out: ({}, out), meta_only, use_cache, progress)


def _measure(experiment, config: RobustnessConfig, data, trained, progress: Optional[ProgressCallback],
             use_cache: bool) -> Dict[str, object]:
    from .experiment import poisoned_data
    from .models import predict

    model = trained.model.eval()
    index = sample_test_images(config.images, len(data.test), config.seed)
    images, labels = model_inputs(data.test, index)

    def accuracy(x: torch.Tensor) -> float:
        return round(float((predict(model, x) == labels).float().mean()), 4)

    out: Dict[str, object] = {"model": trained.path.name, "images": len(index), "defense": asdict(config.defense),
                              "clean_accuracy": accuracy(images), "clean_barycenter_accuracy": {}}
    for marginals in ("B6", "B4"):
        defense = replace(config.defense, marginals=marginals)
        out["clean_barycenter_accuracy"][marginals] = accuracy(_purified(images, defense, progress, f"clean barycenters {marginals}"))
    rows = []
    for name in config.attacks:
        attack_config = config.attack_config(name)
        adversarial = adversarial_examples(model, trained.path.name, images, labels, index, attack_config, progress, use_cache,
                                           defense=config.defense)
        rows.append({"attack": name, "label": ATTACKS[name], "norm": attack_config.norm, "eps": round(attack_config.budget, 6),
                     "aa": accuracy(adversarial),
                     "ba": accuracy(_purified(adversarial, config.defense, progress, f"{ATTACKS[name]}: barycenters"))})
    out["attacks"] = rows
    stickered = poisoned_data(data, experiment).attack
    chosen = sample_test_images(min(config.images, len(stickered)), len(stickered), config.seed)
    sticker_images = stickered.images[chosen].float() / 255
    target = experiment.poison.target
    on_target = predict(model, sticker_images) == target
    on_target_bary = predict(model, _purified(sticker_images, config.defense, progress, "stickered barycenters")) == target
    out["trigger"] = {"images": len(chosen), "source": experiment.poison.source, "target": target,
                      "success_rate": round(float(on_target.float().mean()), 4),
                      "success_rate_barycenter": round(float(on_target_bary.float().mean()), 4)}
    report(progress, "robustness", 1, 1, "done")
    return out


# ------------------------------------------------------------------ spatial transformations (thesis 7.2)

_SPATIAL_VERSION = 1


def spatial_path(model_name: str, transforms: Sequence[SpatialTransform]):
    from .cache import cache_dir, config_hash

    return cache_dir() / f"spatial-{config_hash(_SPATIAL_VERSION, model_name, [t.text for t in transforms])}.safetensors"


def spatial_defense(experiment, transforms: Sequence[SpatialTransform] = (), data=None,
                    progress: Optional[ProgressCallback] = None, use_cache: bool = True) -> Dict[str, Any]:
    """Clean accuracy and attack success rate of the experiment's model without and with each
    transformation, on the whole test split and every stickered source-class test image; cached."""
    from .cache import cached
    from .data import load_gtsrb
    from .experiment import poisoned_data, train_or_load

    transforms = tuple(transforms) or parse_transforms(DEFAULT_TRANSFORMS)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress, use_cache=use_cache)

    def compute() -> Dict[str, Any]:
        from .models import predict

        model = trained.model.eval()
        test = data.test
        stickered = poisoned_data(data, experiment).attack
        source, target = experiment.poison.source, experiment.poison.target
        is_source = test.labels == source
        rows: List[Dict[str, Any]] = []
        for step, transform in enumerate((None, *transforms)):
            report(progress, "spatial defense", step, len(transforms) + 1, "no transformation" if transform is None else transform.label)
            prepare = (lambda x: x) if transform is None else transform
            clean = _predict_in_batches(model, test.images, prepare, predict)
            attacked = _predict_in_batches(model, stickered.images, prepare, predict)
            rows.append({"transform": "none" if transform is None else transform.text,
                         "label": "no transformation" if transform is None else transform.label,
                         "clean_accuracy": round(float((clean == test.labels).float().mean()), 4),
                         "source_accuracy": round(float((clean[is_source] == source).float().mean()), 4),
                         "attack_success_rate": round(float((attacked == target).float().mean()), 4)})
        report(progress, "spatial defense", len(transforms) + 1, len(transforms) + 1, "done")
        return {"model": trained.path.name, "source": source, "target": target, "test_images": len(test),
                "stickered_images": len(stickered), "rows": rows}

    return cached(spatial_path(trained.path.name, transforms), compute, lambda out: ({}, out), meta_only, use_cache, progress)


def cached_spatial(model_name: str, transforms: Sequence[SpatialTransform]) -> Optional[Dict[str, Any]]:
    """The table if it is in the cache, without computing anything."""
    from .cache import load_cached

    return load_cached(spatial_path(model_name, transforms), meta_only)


def _predict_in_batches(model, images: torch.Tensor, prepare, predict, batch: int = 1024) -> torch.Tensor:
    """Predictions for uint8 `images`, transformed a batch at a time (a float copy of the whole
    test split would hold 150 MB)."""
    out = [predict(model, prepare(images[i:i + batch].float().div_(255.0))) for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
