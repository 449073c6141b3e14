"""Classifier architectures, by name.

Each network is an `nn.Sequential` of named modules with one module instance per
operation (no module applied twice, no functional calls, normalisation right after the
layer it normalises), so that LRP libraries can walk it layer by layer and fold the
normalisations into their preceding layers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict

import torch
from torch import nn

from .data import IMAGE_SIZE, NUM_CLASSES
from .errors import ConfigError


# Batches of 256 keep a layer's activations in the CPU's cache: inference over the 4,440 validation
# images takes 0.45 s where batches of 1,024 take 0.9 s (2 cores, float32).
INFERENCE_BATCH = 256


class ThesisNet(nn.Sequential):
    """The small network of the thesis, appendix A.1.

    Three 5x5 convolutions (12, 32, 64 channels) with 2x2 max pooling, instance norm after
    the first and batch norm after the second, then dense layers 1024-256-128-43 with
    batch norm after the first and dropout 0.5 after the first two. The thesis calls
    `F.dropout` (which stays active at evaluation); here dropout is a module and is off in
    eval mode. `penultimate` names the 128-unit activation the thesis also returns.
    """

    penultimate = "relu5"
    readout_layers = ("input", "relu1", "relu2")

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        flat = 64 * (IMAGE_SIZE // 8) ** 2
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 12, kernel_size=5, padding=2)),
                    ("norm1", nn.InstanceNorm2d(12)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2, 2)),
                    ("conv2", nn.Conv2d(12, 32, kernel_size=5, padding=2)),
                    ("norm2", nn.BatchNorm2d(32)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, kernel_size=5, padding=2)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.MaxPool2d(2, 2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(flat, 256)),
                    ("norm4", nn.BatchNorm1d(256)),
                    ("relu4", nn.ReLU()),
                    ("drop4", nn.Dropout(0.5)),
                    ("fc2", nn.Linear(256, 128)),
                    ("relu5", nn.ReLU()),
                    ("drop5", nn.Dropout(0.5)),
                    ("fc3", nn.Linear(128, num_classes)),
                ]
            )
        )


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, prefix: str = "") -> list:
    """Convolution, batch norm, ReLU (the thesis's `BatchConv`), as named modules."""
    return [
        (f"conv{prefix}", nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)),
        (f"norm{prefix}", nn.BatchNorm2d(out_channels)),
        (f"relu{prefix}", nn.ReLU()),
    ]


class InceptionBlock(nn.Module):
    """The thesis's `InceptionA` block: four branches over the same input, concatenated to 256 maps.

    1x1 (64); 1x1 then 5x5 (48, 64); 1x1 then two 3x3 (64, 96, 96); 3x3 pooling then 1x1 (32):
    average pooling as in the thesis's listing and torchvision's InceptionA, or max pooling as in
    the code the thesis ran (`Aenderungen_LRP/TrafficSignAI/Models/Net.py`, `nn.MaxPool2d(3, 1, 1)`).
    Each branch is an `nn.Sequential`, so batch norms fold into their convolutions and LRP sees
    every operation; the forward is only the branches and the concatenation.
    """

    channels = 256

    def __init__(self, in_channels: int = 3, pool: str = "average") -> None:
        super().__init__()
        self.branch1x1 = nn.Sequential(OrderedDict(_conv_block(in_channels, 64, 1)))
        self.branch5x5 = nn.Sequential(OrderedDict(_conv_block(in_channels, 48, 1, 0, "1") + _conv_block(48, 64, 5, 2, "2")))
        self.branch3x3dbl = nn.Sequential(OrderedDict(
            _conv_block(in_channels, 64, 1, 0, "1") + _conv_block(64, 96, 3, 1, "2") + _conv_block(96, 96, 3, 1, "3")
        ))
        pooling = {"average": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
        self.branch_pool = nn.Sequential(OrderedDict([("pool", pooling(3, stride=1, padding=1))] + _conv_block(in_channels, 32, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x), self.branch_pool(x)], dim=1)


class InceptionV3(nn.Sequential):
    """The thesis's simplified Inception v3 (`InceptionNet3`, its appendix listing and code).

    One Inception block on the 32x32 image (256 maps), then three 2x2 convolutions of 256
    channels with batch norm, each after 2x2 max pooling, a last pooling to 1x1, and dense
    layers 256-256-128-43 with dropout 0.5 after the first and before the last. 1.11 M
    weights, about 0.29 G multiply-adds per image (ThesisNet: 7 M). The thesis's table 2 and
    its stored relevances come from this network, read at the block's output (`inception`).
    Its training runs in channels-last layout: 25 % faster per step on a 2-core CPU.
    """

    penultimate = "relu6"
    readout_layers = ("input", "inception", "relu2")
    channels_last = True
    branch_pool = "average"

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        width = InceptionBlock.channels
        super().__init__(
            OrderedDict(
                [("inception", InceptionBlock(3, self.branch_pool)), ("pool1", nn.MaxPool2d(2, 2))]
                + _conv_block(width, width, 2, 0, "2") + [("pool2", nn.MaxPool2d(2, 2))]
                + _conv_block(width, width, 2, 0, "3") + [("pool3", nn.MaxPool2d(2, 2))]
                + _conv_block(width, width, 2, 0, "4") + [("pool4", nn.MaxPool2d(2, 2))]
                + [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(width, 256)),
                    ("relu5", nn.ReLU()),
                    ("drop5", nn.Dropout(0.5)),
                    ("fc2", nn.Linear(256, 128)),
                    ("relu6", nn.ReLU()),
                    ("drop6", nn.Dropout(0.5)),
                    ("fc3", nn.Linear(128, num_classes)),
                ]
            )
        )


class InceptionV3MaxPool(InceptionV3):
    """`InceptionV3` as the thesis's code built it: the block's pool branch max-pools. Its own name,
    so the models cached as `inception_v3` keep their meaning."""

    branch_pool = "max"


ARCHITECTURES: Dict[str, Callable[[], nn.Module]] = {
    "thesis_net": ThesisNet,
    "inception_v3": InceptionV3,
    "inception_v3_maxpool": InceptionV3MaxPool,
}

def readout_layers(name: str) -> tuple:
    """Where the pages offer to read relevance in architecture `name`: the input first."""
    return ARCHITECTURES[name].readout_layers


LAYER_LABELS = {
    "input": "input pixels",
    "relu1": "relu1: 1st convolution",
    "relu2": "relu2: 2nd convolution",
    "inception": "inception: the block (thesis)",
}

ARCHITECTURE_LABELS = {
    "thesis_net": "ThesisNet (the thesis's small network, appendix A.1)",
    "inception_v3": "Inception v3 (the thesis's simplified InceptionNet3, its tables 2 and 3)",
    "inception_v3_maxpool": "Inception v3 with the max-pool branch (as the thesis's code ran it)",
}


def architecture_name(model: nn.Module) -> str:
    """The registered name of `model`'s architecture (its class name if it is not registered)."""
    return next((name for name, factory in ARCHITECTURES.items() if type(model) is factory), type(model).__name__)


def build_model(name: str) -> nn.Module:
    """A freshly initialised network of the registered architecture `name`."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}") from None
    return factory()


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Predicted classes (on the CPU) for uint8 or float images, in eval mode and without gradients,
    computed on `compute_device()`."""
    from .device import compute_device, model_on

    device = compute_device()
    was_training = model.training
    model.eval()
    runner = model_on(model, device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            if batch.dtype == torch.uint8:
                batch = batch.float().div_(255.0)
            out.append(runner(batch).argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
