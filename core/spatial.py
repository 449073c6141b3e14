"""Spatial transformations as a test-time defense (thesis 7.2): the sticker's effect depends on
where it sits, so flipping, scaling, rotating or shifting every input may disarm it.

Each transformation is measured on the experiment's model twice, on the clean test split (clean
accuracy: what the defense costs) and on the stickered source-class test images (attack success
rate: what it buys), beside the same two numbers without it. It says nothing about whether an
attack is present; it only lowers the success of one that is.

This module holds the transformations; the measurement is a step, `core.robustness.spatial_defense`.
A transformation is written as its command-line text: `flip` (left-right), `scale=0.8` (zoom
by a factor about the centre; below 1 shrinks), `rotate=15` (degrees, clockwise as displayed)
and `shift=3,-2` (pixels right and down). Pixels that enter from outside repeat the border.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from .errors import ConfigError

KINDS = {"flip": "mirror left-right",
         "scale": "zoom about the centre by a factor (0.5 … 2; below 1 shrinks)",
         "rotate": "rotate about the centre by degrees (−180 … 180, clockwise as displayed)",
         "shift": "move by DX,DY pixels (right and down; −16 … 16 each)"}
DEFAULT_TRANSFORMS = ("flip", "scale=0.8", "scale=1.2", "rotate=10", "rotate=-10", "shift=3,3")


def affine(images: torch.Tensor, degrees: float = 0.0, scale: float = 1.0, shift: Tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Rotation (clockwise as displayed), zoom and shift (pixels right and down) about the image centre,
    bilinear, border repeated; differentiable, so attacks can go through it."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    height, width = images.shape[-2:]
    theta = torch.tensor([[cos, sin, -2.0 * shift[0] / width], [-sin, cos, -2.0 * shift[1] / height]], dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class SpatialTransform:
    """One test-time transformation, as `parse` reads it from text."""

    kind: str
    amount: Tuple[float, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "SpatialTransform":
        text = str(text).strip().lower().replace(" ", "")
        kind, _, value = text.partition("=")
        if kind not in KINDS:
            raise ConfigError(f"transformation {text!r}: choose flip, scale=F, rotate=DEGREES or shift=DX,DY")
        if kind == "flip":
            if value:
                raise ConfigError(f"transformation {text!r}: flip takes no value")
            return cls("flip")
        parts = value.split(",") if value else []
        wanted = 2 if kind == "shift" else 1
        if len(parts) != wanted or not all(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", p) for p in parts):
            example = {"scale": "scale=0.8", "rotate": "rotate=15", "shift": "shift=3,-2"}[kind]
            raise ConfigError(f"transformation {text!r}: {kind} needs {'two numbers' if wanted == 2 else 'a number'}, e.g. {example}")
        amount = tuple(float(p) for p in parts)
        if kind == "scale" and not 0.5 <= amount[0] <= 2:
            raise ConfigError(f"transformation {text!r}: the scale factor must be in 0.5 … 2")
        if kind == "rotate" and not -180 <= amount[0] <= 180:
            raise ConfigError(f"transformation {text!r}: the angle must be in −180 … 180 degrees")
        if kind == "shift" and not all(-16 <= a <= 16 for a in amount):
            raise ConfigError(f"transformation {text!r}: each shift must be in −16 … 16 pixels")
        return cls(kind, amount)

    @property
    def text(self) -> str:
        """The form `parse` reads back."""
        return self.kind if not self.amount else f"{self.kind}={','.join(f'{a:g}' for a in self.amount)}"

    @property
    def label(self) -> str:
        if self.kind == "flip":
            return "flip left-right"
        if self.kind == "scale":
            return f"scale × {self.amount[0]:g}"
        if self.kind == "rotate":
            return f"rotate {self.amount[0]:+g}°"
        return f"shift {self.amount[0]:+g}, {self.amount[1]:+g} px"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The transformed float images (N, C, H, W) in [0, 1]."""
        if self.kind == "flip":
            return torch.flip(images, dims=[-1])
        if self.kind == "scale":
            return affine(images, scale=self.amount[0])
        if self.kind == "rotate":
            return affine(images, degrees=self.amount[0])
        return affine(images, shift=(self.amount[0], self.amount[1]))


def parse_transforms(texts: Sequence[str]) -> Tuple[SpatialTransform, ...]:
    """The transformations, in order and without repeats; at least one."""
    chosen = tuple(dict.fromkeys(SpatialTransform.parse(t) for t in texts))
    if not chosen:
        raise ConfigError("choose at least one transformation")
    return chosen
