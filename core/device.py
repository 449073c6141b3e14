"""Where the heavy steps compute: the CPU or a CUDA GPU, one choice per process.

A step's result is the same on either up to floating-point tolerance, so the device never enters an
artifact's name (a model trained on a GPU is the model a CPU would have trained, and is read as such);
it is recorded in the artifact's metadata instead. Weights and results always come back to the CPU,
so everything between the heavy steps (caching, clustering, charts) is device-blind.
"""

from __future__ import annotations

import copy
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from .errors import ConfigError
from .params import NAME, check_declared, parameter

DEVICE_ENV = "POISONLAB_DEVICE"
_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,2})?")
ALLOWED = "auto, cpu, cuda or cuda:N"


def check_device(value) -> str:
    """`value` if it names a device this project knows (whether this machine has it is `resolve`'s)."""
    text = value.strip().lower() if isinstance(value, str) else value
    if not isinstance(text, str) or not _PATTERN.fullmatch(text):
        raise ConfigError(f"device must be {ALLOWED}, got {value!r}")
    return text


@dataclass(frozen=True)
class DeviceConfig:
    """The device setting; not part of any experiment (nor of any artifact's name)."""

    device: str = parameter("auto", NAME, "--device", key="device", label="compute on",
                            help=f"where the heavy steps run: auto (${DEVICE_ENV} if set, else a CUDA GPU when torch sees one, "
                                 "else the CPU), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        check_declared(self)


def resolve(value: str = "auto") -> torch.device:
    """The torch device `value` stands for on this machine; a GPU it does not have is a ConfigError."""
    text = check_device(value)
    if text == "auto":
        chosen = os.environ.get(DEVICE_ENV, "").strip()
        if chosen and chosen.lower() != "auto":
            try:
                return resolve(chosen)
            except ConfigError as error:
                raise ConfigError(f"${DEVICE_ENV}: {error}") from None
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {value!r} is not available: torch sees no CUDA GPU here (use auto or cpu)")
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device {value!r} is not available: this machine has {count} CUDA GPU{'s' * (count != 1)} "
                          f"(cuda:0 … cuda:{count - 1})")
    return torch.device("cuda", index)


_chosen: ContextVar[Optional[torch.device]] = ContextVar("poisonlab_device", default=None)
"""Per thread of control: an app's sessions may choose differently, and their jobs carry the choice."""


def use_device(value: str) -> torch.device:
    """Make `value` the device of this thread of control (checked at once: a missing GPU fails before
    any work)."""
    device = resolve(value)
    _chosen.set(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # libraries that take "the GPU" (ART) take this one
    return device


@contextmanager
def using(value: str) -> Iterator[torch.device]:
    """`use_device(value)` for the duration of a block."""
    token = _chosen.set(_chosen.get())
    try:
        yield use_device(value)
    finally:
        _chosen.reset(token)


def compute_device() -> torch.device:
    """The device `use_device` chose here, else `auto`'s."""
    chosen = _chosen.get()
    return chosen if chosen is not None else resolve("auto")


def describe(device: Optional[torch.device] = None) -> str:
    """The device in words, for artifacts' metadata and the Cache view."""
    device = device or compute_device()
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def model_on(model: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """`model` itself on the CPU; a copy on a GPU (the caller's model, shared by caches and views, stays
    on the CPU)."""
    device = device or compute_device()
    if device.type == "cpu":
        return model
    return copy.deepcopy(model).to(device)
