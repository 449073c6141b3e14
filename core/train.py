"""Fitting a classifier on a 2-core CPU in a few minutes.

The whole split is one float tensor and batches are index slices of it (no Dataset, no
per-image Python), augmentation is one batched affine warp, and Adam with a one-cycle
learning-rate schedule at a high peak (1e-2) converges in 10 epochs; that short schedule,
not the time per epoch (bound by the convolutions and pooling, which run near the CPU's
float32 peak), is what makes training fast. Measured on the default experiment: 96.7 %
clean accuracy and 99.1 % attack success in 10 epochs, where 20 epochs at 3e-3 gave 96.3 %
and 98.1 %. Label smoothing raised both by about half a point, but it erases the structure
within a class that the heatmap clustering finds the poison by (spectral clustering of class
5 then flagged 346 of 813 poisoned samples instead of 808), so it is not used.
Early stopping watches the validation loss and restores the best weights.

Clean accuracy sits at 96.7 % +- 0.2 across every variant tried below: the same recipe gives
96.4 % with seed 0 on one thread and 96.7 % on two (the kernels sum in another order), 96.9 % and
96.8 % with seeds 1 and 2. Variants, seed 0 on one thread unless noted, none clearly better: 13 and
16 epochs 96.7 % and 96.5 %; weights averaged over the steps (decay 0.99 - 0.999) no better than the
final ones (seeds 0 and 1); AdamW with decoupled decay 0.05 96.5 % and SGD with Nesterov momentum at
0.05 95.9 % (both on two threads); no augmentation 96.2 %; stronger augmentation (+-15 degrees,
+-15 %, +-3 px, with or without blur) 95.6 %; warm-up over 20 % of the steps 96.6 %. Label smoothing
0.05 in all but the last two epochs gives 97.1 %, 96.9 %, 96.9 % (seeds 0-2) and 96.7 % (seed 0, two
threads), attack success 99.6 - 100 %, and leaves spectral clustering of class 5 at 795 of 813 with
one false alarm, but activation clustering falls from 98 % to 92 %: too small and too uncertain a
gain for what the detectors lose. The thesis's 96.8 % (its table 3) is its Inception v3's, whose
runs span 96.1 - 97.0 %.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data import IMAGE_SIZE, Split
from .device import compute_device
from .errors import ConfigError
from .params import NAME, REAL, SWITCH, WHOLE, check_declared, parameter
from .models import ARCHITECTURE_LABELS, ARCHITECTURES, INFERENCE_BATCH
from .progress import ProgressCallback, report


SCHEDULE_LABELS = {"one_cycle": "one-cycle up to the learning rate (ours)", "constant": "constant learning rate (the thesis)"}
AUGMENTATION_LABELS = {"affine": "rotation, scale, shift, brightness (ours)", "thesis": "the thesis's crop, rotation, colour, affine, grayscale"}


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters; `subset` > 0 trains on that many randomly chosen training images."""

    architecture: str = parameter("thesis_net", NAME, "--architecture", key="arch", label="architecture", choices=tuple(ARCHITECTURES),
                                  help="network: thesis_net (the thesis's small network, appendix A.1), inception_v3 "
                                       "(its simplified Inception v3, which its tables 2 and 3 used) or inception_v3_maxpool "
                                       "(the same with the max-pool branch of the thesis's code)",
                                  widget=("choice", tuple(ARCHITECTURES), ARCHITECTURE_LABELS))
    max_epochs: int = parameter(10, WHOLE, "--epochs", key="epochs", label="epochs at most", help="maximum epochs",
                                low=1, high=1000, widget=("number", 1, 200))
    patience: int = parameter(5, WHOLE, "--patience", key="patience", label="early-stopping patience",
                              help="early stopping: epochs without a lower validation loss", low=1, high=1000, widget=("number", 1, 200))
    batch_size: int = parameter(256, WHOLE, "--batch-size", key="batch", label="batch size", help="batch size", low=1, high=65536,
                                widget=("options", (32, 64, 128, 256, 512, 1024)))
    learning_rate: float = parameter(1e-2, REAL, "--lr", key="lr", label="learning rate",
                                     help="Adam's learning rate: the one-cycle schedule's peak, or the constant rate",
                                     low=1e-7, high=10.0, widget=("number", 1e-5, 1.0))
    weight_decay: float = parameter(0.0, REAL, "--weight-decay", key="wd", label="weight decay", help="Adam weight decay", low=0.0, high=1.0)
    augment: bool = parameter(True, SWITCH, "--no-augment", key="aug", label="augmentation",
                              help="train without augmentation", widget=("checkbox",))
    schedule: str = parameter("one_cycle", NAME, "--schedule", key="sched", label="learning-rate schedule", choices=tuple(SCHEDULE_LABELS),
                              help="one_cycle: the one-cycle schedule up to --lr and back (ours); constant: Adam at --lr throughout "
                                   "(the thesis's code)", widget=("choice", tuple(SCHEDULE_LABELS), SCHEDULE_LABELS))
    augmentation: str = parameter("affine", NAME, "--augmentation", key="augs", label="augmentation kind",
                                  choices=tuple(AUGMENTATION_LABELS),
                                  help="affine: rotation ±10°, scale 0.9-1.1, shift ±2 px, brightness 0.8-1.2 (ours); thesis: the "
                                       "thesis's torchvision pipeline, RandomResizedCrop 0.6-1, rotation ±15°, colour jitter 0.1 "
                                       "with hue 0.1, RandomAffine 15°, RandomGrayscale p 0.1",
                                  widget=("choice", tuple(AUGMENTATION_LABELS), AUGMENTATION_LABELS))
    subset: int = parameter(0, WHOLE, "--subset", key="subset", label="training subset (0: all)",
                            help="train on this many random training images (0: all)", low=0, high=10**8, widget=("number", 0, 100_000))
    seed: int = parameter(0, WHOLE, "--seed", key="seed", label="training seed", help="seed for initialisation, shuffling and augmentation",
                          low=0, high=2**63 - 1, widget=("number", 0, 2**31 - 1))

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
        check_declared(self)


@dataclass
class FitResult:
    epochs: int
    best_epoch: int
    history: List[Dict[str, float]]
    seconds: float


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (±10°), scale (±10 %), shift (±2 px) and brightness (±20 %), batched."""
    n = images.shape[0]
    # drawn on the CPU from the training's generator, so every device sees the same draws
    uniform = lambda *shape: (torch.rand(*shape, generator=generator) * 2 - 1).to(images.device)  # noqa: E731
    angle = uniform(n) * math.radians(10)
    scale = 1 + uniform(n) * 0.1
    shift = uniform(n, 2) * (2 * 2 / images.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    brightness = 1 + uniform(n, 1, 1, 1) * 0.2
    return warped.mul_(brightness).clamp_(0, 1)


def thesis_augmentation() -> nn.Module:
    """The thesis's training transforms (`TrafficSignMain.py`, torchvision on PIL images) as kornia's
    batched equivalents: each image draws its own crop, angles, colour factors and grayscale coin,
    with torchvision's parameter ranges, its nearest-neighbour rotations and its black fill."""
    import kornia.augmentation as K

    # one after the other (kornia's AugmentationSequential adds 9 ms a batch of 32); the crop resamples the
    # whole batch in one warp (kornia's default crops image by image, 1 ms slower)
    return nn.Sequential(
        K.RandomResizedCrop((IMAGE_SIZE, IMAGE_SIZE), scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), cropping_mode="resample"),
        K.RandomRotation(15.0, resample="nearest", p=1.0),
        K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=1.0),
        K.RandomAffine(15.0, resample="nearest", p=1.0),
        K.RandomGrayscale(p=0.1),
    )


class Augmenter:
    """The configured augmentation, drawing its randomness from the training's own generator (kornia draws
    from torch's global one, which is forked and seeded from the generator per batch)."""

    def __init__(self, kind: str, generator: torch.Generator) -> None:
        self.kind, self.generator = kind, generator
        self.pipeline = thesis_augmentation() if kind == "thesis" else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.pipeline is None:
            return augment_batch(images, self.generator)
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.pipeline(images).clamp_(0, 1)


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = INFERENCE_BATCH):
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            target = labels[start : start + batch_size]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
    return loss / max(1, len(images)), correct / max(1, len(images))


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    config: TrainConfig,
    progress: Optional[ProgressCallback] = None,
) -> FitResult:
    """Train `model` in place. When the one-cycle schedule runs to its end, the model keeps its final,
    annealed weights (on the default experiment 0.4 points of test accuracy better than those of the
    epoch before, which had a lower validation loss); otherwise (early stopping, or a constant rate,
    whose last epoch is no better than any other: the thesis kept its best checkpoint) the weights of
    the epoch with the lowest validation loss. `best_epoch` names the epoch whose weights it keeps.
    It trains on `compute_device()` with both splits moved there once, and returns on the CPU."""
    start_time = time.perf_counter()
    device = compute_device()
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = train.float_images().to(device), train.labels.to(device)
    val_images, val_labels = val.float_images().to(device), val.labels.to(device)
    if len(images) == 0 or len(val_images) == 0:
        raise ConfigError("training needs a non-empty training and validation split")
    steps = math.ceil(len(images) / config.batch_size)
    layout = torch.channels_last if getattr(model, "channels_last", False) else torch.contiguous_format
    model.to(device=device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    one_cycle = config.schedule == "one_cycle"
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=config.max_epochs * steps)
                if one_cycle else None)
    augmenter = Augmenter(config.augmentation, generator) if config.augment else None
    best_loss, best_epoch, best_state = math.inf, 0, None
    history: List[Dict[str, float]] = []
    val_accuracy = float("nan")
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        running = 0.0
        for step in range(steps):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(index) == 1:
                continue  # batch norm cannot train on a single sample
            batch = images[index]
            if augmenter is not None:
                batch = augmenter(batch)
            batch = batch.contiguous(memory_format=layout)
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            running += loss.item()
            if step % 10 == 0 or step == steps - 1:
                report(
                    progress, "train", (epoch - 1) * steps + step + 1, config.max_epochs * steps,
                    f"epoch {epoch}/{config.max_epochs}, batch {step + 1}/{steps}",
                    {"epoch": epoch, "batch": step + 1, "loss": loss.item(), "val_accuracy": val_accuracy},
                )
        val_loss, val_accuracy = _evaluate(model, val_images, val_labels)
        history.append({"epoch": epoch, "train_loss": running / steps, "val_loss": val_loss, "val_accuracy": val_accuracy,
                        "lr": optimizer.param_groups[0]["lr"]})
        report(
            progress, "train", epoch * steps, config.max_epochs * steps,
            f"epoch {epoch}/{config.max_epochs}: validation loss {val_loss:.4f}, accuracy {val_accuracy:.4f}",
            {"epoch": epoch, "batch": steps, "loss": running / steps, "val_accuracy": val_accuracy},
        )
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    if one_cycle and len(history) == config.max_epochs:
        best_epoch = len(history)  # the schedule ran to its end: keep its final, annealed weights
    elif best_state is not None:
        model.load_state_dict(best_state)
    model.to(device="cpu", memory_format=torch.contiguous_format)  # safetensors stores contiguous CPU tensors
    model.eval()
    return FitResult(len(history), best_epoch, history, time.perf_counter() - start_time)
