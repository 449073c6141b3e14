"""A few images through attack and defense, for looking at them one by one.

For each image: the clean image, its attacked version and the barycenter of the attacked
image (and of the clean one), what the model predicts for each with its softmax confidence,
and LRP heatmaps of the predicted class. The sensitivity grid (the paper's figure 1) is the
barycenter of one image as γ, θ, τ, the iteration count and the cost's unit vary one at a
time around the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .defense import DefenseConfig, check_images, purify
from .errors import ConfigError
from .durations import measured
from .evasion import AttackConfig, attack, attack_step
from .lrp import LRPConfig, explain
from .models import architecture_name
from .progress import ProgressCallback, report

VERSIONS = ("clean", "attacked", "barycenter", "clean_barycenter")

# The paper's figure 1 rows (its defaults first), plus the two choices it leaves open.
SENSITIVITY_ROWS: Tuple[Tuple[str, Tuple[float, ...]], ...] = (
    ("gamma", (0.02, 0.01, 1.0, 5.0)),
    ("theta", (1e5, 1e3, 1e4, 1e6, 1e7)),
    ("tau", (0.2, 0.005, 0.05, 1.0, 5.0)),
    ("iterations", (300, 50, 100, 1000, 2000)),
    ("cost_unit", (1 / 32, 1.0)),
)


@dataclass
class Inspection:
    """Images (4, B, 3, 32, 32) in VERSIONS order, with probabilities (4, B, 43) and
    heatmaps (4, B, 32, 32) of each version's predicted class."""

    images: torch.Tensor
    probabilities: torch.Tensor
    heatmaps: torch.Tensor
    labels: torch.Tensor
    attack: AttackConfig
    defense: DefenseConfig

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=-1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(dim=-1).values

    def summary(self) -> List[Dict[str, object]]:
        """Per image: label, and per version the predicted class, its confidence and the
        largest pixel change from the clean image."""
        rows = []
        for i in range(self.images.shape[1]):
            row: Dict[str, object] = {"label": int(self.labels[i])}
            for v, name in enumerate(VERSIONS):
                row[name] = {"predicted": int(self.predicted[v, i]), "confidence": round(float(self.confidence[v, i]), 4),
                             "linf_from_clean": round(float((self.images[v, i] - self.images[0, i]).abs().max()), 4)}
            rows.append(row)
        return rows


def upload_input(content: bytes) -> torch.Tensor:
    """A user's PNG or JPEG file as a batch of one model input (1, 3, 32, 32) in [0, 1]."""
    from .data import decode_upload

    return torch.from_numpy(decode_upload(content)).permute(2, 0, 1)[None].float() / 255


def inspect(model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor], attack_config: AttackConfig,
            defense: DefenseConfig = DefenseConfig(), lrp: LRPConfig = LRPConfig(target="prediction"),
            progress: Optional[ProgressCallback] = None) -> Inspection:
    """Attack float images in [0, 1] (B, 3, 32, 32) and purify them. Without labels (an
    uploaded image) the attack moves the image away from the model's clean prediction."""
    images = check_images(images).float()
    if images.shape[1:] != (3, 32, 32):
        raise ConfigError(f"images must be (B, 3, 32, 32), got {tuple(images.shape)}")
    model = model.eval()
    if labels is None:
        with torch.no_grad():
            labels = model(images).argmax(dim=1)
    report(progress, "inspect", 0, 4, f"attacking with {attack_config.name}")
    with measured(attack_step(architecture_name(model), attack_config), len(images)):
        attacked = attack(model, images, labels, attack_config, defense=defense, progress=progress)
    report(progress, "inspect", 1, 4, "barycenters")
    versions = torch.stack([images, attacked, purify(attacked, defense), purify(images, defense)])
    flat = versions.flatten(0, 1)
    with torch.no_grad():
        probabilities = model(flat).softmax(dim=-1)
    report(progress, "inspect", 2, 4, "LRP heatmaps")
    heatmaps, _ = explain(model, flat, probabilities.argmax(dim=-1), lrp)
    report(progress, "inspect", 4, 4, "done")
    shape = versions.shape[:2]
    return Inspection(images=versions, probabilities=probabilities.reshape(*shape, -1), heatmaps=heatmaps.reshape(*shape, 32, 32),
                      labels=labels.clone(), attack=attack_config, defense=defense)


@dataclass
class SensitivityCell:
    parameter: str
    value: float
    config: DefenseConfig
    barycenter: torch.Tensor  # (3, 32, 32)
    predicted: int
    confidence: float

    @property
    def is_default(self) -> bool:
        return self.config == DefenseConfig(marginals=self.config.marginals)


def sensitivity_grid(model: nn.Module, image: torch.Tensor, base: DefenseConfig = DefenseConfig(),
                     rows: Sequence[Tuple[str, Sequence[float]]] = SENSITIVITY_ROWS,
                     progress: Optional[ProgressCallback] = None) -> List[List[SensitivityCell]]:
    """Barycenters of one image (3, 32, 32) with one parameter of `base` changed at a time,
    and the model's prediction for each."""
    image = check_images(image[None].float())
    total = sum(len(values) for _, values in rows)
    grid, done = [], 0
    for parameter, values in rows:
        if parameter not in {"gamma", "theta", "tau", "iterations", "cost_unit"}:
            raise ConfigError(f"the sensitivity grid varies gamma, theta, tau, iterations or cost_unit, not {parameter!r}")
        cells = []
        for value in values:
            config = replace(base, **{parameter: int(value) if parameter == "iterations" else float(value)})
            report(progress, "sensitivity", done, total, f"{parameter} = {value:g}")
            barycenter = torch.nan_to_num(purify(image, config), nan=0.0)
            with torch.no_grad():
                probabilities = model.eval()(barycenter).softmax(dim=-1)[0]
            cells.append(SensitivityCell(parameter, float(value), config, barycenter[0], int(probabilities.argmax()),
                                         round(float(probabilities.max()), 4)))
            done += 1
        grid.append(cells)
    report(progress, "sensitivity", total, total, "done")
    return grid
