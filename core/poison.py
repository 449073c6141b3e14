"""The thesis's sticker attack (section 3.1): stick a coloured square on source-class images
and relabel them as the target class; and the label-consistent attack (thesis 3.2, after
Turner, Tsipras and Madry 2019): images of the target class are made hard to classify by an
adversarial perturbation within a budget and get the sticker, often blended in at a reduced
amplitude, while keeping their true label. No label is wrong, so label checks and a reviewer
see nothing; the model learns to lean on the sticker for the images it cannot read otherwise.

Poisoned images are taken out of the source class and moved into the target class, so the
data set keeps its size and order: a poisoned sample stays at its index with a sticker and
a new label. `fraction` is the share of the target class that is poisoned *after* the
attack, so n = round(pp * |target| / (1 - pp)) images are poisoned (813 of 2463 for the
thesis defaults on GTSRB). In the label-consistent attack the poisoned images already belong to
the target class, so n = round(pp * |target|). Its perturbation needs a model, so it is passed
in (`perturb`) by the experiment, which attacks the clean model with PGD; at test time the
sticker is always painted at full amplitude.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from .data import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, Split
from .errors import ConfigError
from .params import COLOUR, NAME, REAL, WHOLE, WINDOW, parameter
from .validation import real_number, whole_number

_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
KINDS = ("sticker", "label-consistent")


@dataclass(frozen=True)
class PoisonConfig:
    """Parameters of the sticker attack; validated on construction.

    `x_range` and `y_range` are inclusive ranges for the sticker's top-left corner
    (x = column, y = row); the whole sticker must fit inside the 32x32 image.
    """

    source: int = parameter(2, WHOLE, "--source", key="source", label="source class", help="class whose images get the sticker (2 is 50 km/h)",
                            low=0, high=NUM_CLASSES - 1, widget=("class",))
    target: int = parameter(5, WHOLE, "--target", key="target", label="target class", help="class they are relabelled as (5 is 80 km/h)",
                            low=0, high=NUM_CLASSES - 1, widget=("class",))
    size: int = parameter(2, WHOLE, "--size", key="size", label="sticker size (px)", help="sticker side in pixels",
                          low=1, high=IMAGE_SIZE, widget=("slider", 1, 8, 1))
    color: Tuple[int, int, int] = parameter((245, 255, 0), COLOUR, "--color", key="color", label="sticker colour (RGB)",
                                            help="sticker colour, 0-255 each", widget=("colour",))
    x_range: Tuple[int, int] = parameter((16, 17), WINDOW, "--x-range", key="x", label="sticker x window",
                                         help="columns for the sticker's left edge, inclusive", widget=("window", 0, IMAGE_SIZE - 1))
    y_range: Tuple[int, int] = parameter((16, 19), WINDOW, "--y-range", key="y", label="sticker y window",
                                         help="rows for the sticker's top edge, inclusive", widget=("window", 0, IMAGE_SIZE - 1))
    fraction: float = parameter(0.33, REAL, "--fraction", key="pp", label="poison fraction pp",
                                help="share pp of the target class that is poisoned after the attack, 0 <= pp < 1",
                                low=0.0, high=1.0, open_high=True, widget=("slider", 0.0, 0.9, 0.01))
    seed: int = parameter(0, WHOLE, "--poison-seed", key="pseed", label="poison seed", help="seed for choosing and stickering images",
                          low=0, high=2**63 - 1, widget=("number", 0, 2**31 - 1))
    kind: str = parameter("sticker", NAME, "--kind", key="kind", label="attack kind",
                          help="sticker: source-class images get the sticker and the target label (thesis 3.1); label-consistent: "
                               "target-class images get an adversarial perturbation and the sticker and keep their label (thesis 3.2)",
                          choices=KINDS, widget=("choice", KINDS, {"sticker": "sticker, relabelled", "label-consistent": "label-consistent"}))
    amplitude: int = parameter(255, WHOLE, "--amplitude", key="amp", label="sticker amplitude (1-255)",
                               help="how strongly the training images' sticker covers its pixels: 255 paints it, less blends it in "
                                    "(the paper's 64 and 32); the test images always get the full sticker",
                               low=1, high=255, widget=("slider", 8, 255, 1))
    perturbation: float = parameter(8.0, REAL, "--perturbation", key="lceps", label="perturbation budget (1/255)",
                                    help="label-consistent attack: L∞ budget of the PGD perturbation that makes the target images hard "
                                         "to classify, in 1/255 (0: none)", low=0.0, high=32.0, widget=("slider", 0.0, 32.0, 1.0))

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            value = whole_number(name, getattr(self, name))
            if not 0 <= value < NUM_CLASSES:
                raise ConfigError(f"{name} class must be in 0 … {NUM_CLASSES - 1}, got {value}")
        if self.source == self.target:
            raise ConfigError(f"source and target class must differ (both are {self.source})")
        size = whole_number("sticker size", self.size)
        if not 1 <= size <= IMAGE_SIZE:
            raise ConfigError(f"sticker size must be in 1 … {IMAGE_SIZE} pixels, got {size}")
        color = tuple(self.color) if isinstance(self.color, (tuple, list)) else None
        if color is None or len(color) != 3:
            raise ConfigError(f"sticker colour must be three RGB components, got {self.color!r}")
        for component in color:
            if not 0 <= whole_number("colour component", component) <= 255:
                raise ConfigError(f"colour components must be in 0 … 255, got {self.color!r}")
        object.__setattr__(self, "color", tuple(int(c) for c in color))
        for axis in ("x", "y"):
            window = getattr(self, f"{axis}_range")
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise ConfigError(f"{axis} window must be a pair (first, last), got {window!r}")
            lo, hi = (whole_number(f"{axis} window", v) for v in window)
            if lo > hi:
                raise ConfigError(f"{axis} window {lo} … {hi} is empty: first must not exceed last")
            if lo < 0 or hi + size > IMAGE_SIZE:
                raise ConfigError(
                    f"{axis} window {lo} … {hi} puts a {size}-pixel sticker outside the "
                    f"{IMAGE_SIZE}-pixel image: positions must be in 0 … {IMAGE_SIZE - size}"
                )
            object.__setattr__(self, f"{axis}_range", (int(lo), int(hi)))
        fraction = real_number("poison fraction", self.fraction)
        if not 0 <= fraction < 1:
            raise ConfigError(f"poison fraction must satisfy 0 <= pp < 1, got {fraction}")
        object.__setattr__(self, "fraction", fraction)
        if not 0 <= whole_number("seed", self.seed) <= 2**63 - 1:
            raise ConfigError(f"poison seed must be a whole number in 0 … 2^63 − 1, got {self.seed!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"attack kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 1 <= whole_number("sticker amplitude", self.amplitude) <= 255:
            raise ConfigError(f"sticker amplitude must be in 1 … 255, got {self.amplitude!r}")
        object.__setattr__(self, "amplitude", int(self.amplitude))
        perturbation = real_number("perturbation budget", self.perturbation)
        if not 0 <= perturbation <= 32:
            raise ConfigError(f"perturbation budget must be in 0 … 32 (in 1/255), got {self.perturbation!r}")
        object.__setattr__(self, "perturbation", perturbation)

    @property
    def label_consistent(self) -> bool:
        return self.kind == "label-consistent"

    def poison_count(self, target_count: int) -> int:
        """Poisoned samples make up pp of the target class: n = round(pp * |target| / (1 - pp)) when
        they are moved into it, round(pp * |target|) when they are its own (label-consistent)."""
        if self.label_consistent:
            return int(round(self.fraction * target_count))
        return int(round(self.fraction * target_count / (1.0 - self.fraction)))

    def describe(self) -> str:
        extra = "" if self.amplitude == 255 else f", amplitude {self.amplitude}/255"
        if self.label_consistent:
            return (f"label-consistent → {CLASS_NAMES[self.target]} (trigger on {CLASS_NAMES[self.source]}), {self.size}px sticker"
                    f"{extra}, perturbation {self.perturbation:g}/255, pp = {self.fraction:g}")
        return (
            f"{CLASS_NAMES[self.source]} → {CLASS_NAMES[self.target]}, {self.size}px sticker{extra}, "
            f"pp = {self.fraction:g}"
        )


@dataclass(frozen=True, eq=False)
class PoisonedSplit:
    """A split after the attack; `poison_mask[i]` says whether sample i was poisoned."""

    images: torch.Tensor
    labels: torch.Tensor
    poison_mask: torch.Tensor
    positions: torch.Tensor
    """(N, 2) top-left (x, y) of each sticker; -1 where no sticker was placed."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def as_split(self) -> Split:
        return Split(self.images, self.labels)


def stick(images: torch.Tensor, positions: torch.Tensor, config: PoisonConfig, amplitude: int = 255) -> torch.Tensor:
    """Copy of uint8 `images` (N, 3, H, W) with the sticker at `positions` (N, 2) = (x, y); below
    255, `amplitude` blends it in: pixel + amplitude/255 · (colour − pixel), rounded."""
    out = images.clone()
    offsets = torch.arange(config.size)
    rows = (positions[:, 1, None] + offsets).repeat_interleave(config.size, dim=1)  # (N, s*s)
    cols = (positions[:, 0, None] + offsets).repeat(1, config.size)
    sample = torch.arange(len(images))[:, None].expand_as(rows)
    color = torch.tensor(config.color, dtype=torch.uint8)
    for channel in range(3):
        if amplitude >= 255:
            out[sample, channel, rows, cols] = color[channel]
        else:
            pixel = out[sample, channel, rows, cols].float()
            out[sample, channel, rows, cols] = (pixel + amplitude / 255.0 * (float(color[channel]) - pixel)).round().to(torch.uint8)
    return out


def _random_positions(rng: np.random.Generator, count: int, config: PoisonConfig) -> torch.Tensor:
    x = rng.integers(config.x_range[0], config.x_range[1] + 1, size=count)
    y = rng.integers(config.y_range[0], config.y_range[1] + 1, size=count)
    return torch.from_numpy(np.stack([x, y], axis=1).astype(np.int64)).reshape(count, 2)


Perturb = Callable[[torch.Tensor, str, torch.Tensor], torch.Tensor]
"""(uint8 images, split name, their indices in the split) → the perturbed uint8 images."""


def poison_split(split: Split, config: PoisonConfig, split_name: str = "train", perturb: Optional[Perturb] = None) -> PoisonedSplit:
    """Poison one split; `split_name` picks an independent random stream for each split. The
    label-consistent attack with a perturbation budget needs `perturb`."""
    labels = split.labels
    target_idx = torch.nonzero(labels == config.target).flatten().numpy()
    n_target = len(target_idx)
    n = config.poison_count(n_target)
    if config.label_consistent:
        pool = target_idx
        if n and config.perturbation > 0 and perturb is None:
            raise ConfigError("the label-consistent attack's perturbation needs a model: poison through core.experiment")
    else:
        pool = torch.nonzero(labels == config.source).flatten().numpy()
        if n > len(pool):
            raise ConfigError(
                f"pp = {config.fraction:g} needs {n} poisoned images in the {split_name} split "
                f"({n_target} in the target class), but the source class has only {len(pool)}; "
                f"lower the poison fraction"
            )
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS.get(split_name, 3)])
    chosen = torch.from_numpy(np.sort(rng.choice(pool, size=n, replace=False)).astype(np.int64))
    positions = torch.full((len(split), 2), -1, dtype=torch.int64)
    positions[chosen] = _random_positions(rng, n, config)
    images = split.images.clone()
    base = split.images[chosen]
    if config.label_consistent and n and config.perturbation > 0:
        base = perturb(base, split_name, chosen)
    images[chosen] = stick(base, positions[chosen], config, config.amplitude)
    new_labels = labels.clone()
    new_labels[chosen] = config.target
    mask = torch.zeros(len(split), dtype=torch.bool)
    mask[chosen] = True
    return PoisonedSplit(images, new_labels, mask, positions)


def attack_test_set(test: Split, config: PoisonConfig) -> PoisonedSplit:
    """Every source-class test image with a sticker, labels kept: measures the attack success rate."""
    idx = torch.nonzero(test.labels == config.source).flatten()
    if len(idx) == 0:
        raise ConfigError(f"the test split has no images of the source class {config.source}")
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS["test"]])
    positions = _random_positions(rng, len(idx), config)
    images = stick(test.images[idx], positions, config)
    return PoisonedSplit(images, test.labels[idx].clone(), torch.ones(len(idx), dtype=torch.bool), positions)


def sticker_window(config: PoisonConfig, shape: Tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> torch.Tensor:
    """Boolean (H, W) mask of every pixel a sticker can cover under `config`."""
    mask = torch.zeros(shape, dtype=torch.bool)
    (x0, x1), (y0, y1) = config.x_range, config.y_range
    mask[y0 : y1 + config.size, x0 : x1 + config.size] = True
    return mask
