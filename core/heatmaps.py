"""LRP heatmaps of every training image of a class: the cached artifact that spectral
clustering, GW k-means, the pages and the exports start from, computed once per (model,
class, rules) and kept in the cache folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from .cache import cache_dir, cached, config_hash
from .data import NUM_CLASSES
from .errors import ConfigError
from .validation import whole_number
from .lrp import LRPConfig, explain
from .models import architecture_name
from .progress import ProgressCallback

_ARTIFACT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ClassHeatmaps:
    """LRP heatmaps of every training image of one class, with what is needed to read them."""

    heatmaps: torch.Tensor  # float32 (N, 32, 32): relevance summed over colour channels
    indices: torch.Tensor  # int64 (N,): positions in the experiment's (poisoned) training split
    poison_mask: torch.Tensor  # bool (N,)
    explained: torch.Tensor  # int64 (N,): the class whose logit is explained
    logit: torch.Tensor  # float32 (N,): that logit
    confidence: torch.Tensor  # float32 (N,): softmax probability of the image's label
    predicted: torch.Tensor  # int64 (N,)
    class_id: int
    config: LRPConfig
    seconds: float

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def conservation_gap(self) -> torch.Tensor:
        """(logit - total relevance) / |logit| per image: what biases and eps absorbed."""
        return (self.logit - self.heatmaps.sum(dim=(1, 2))) / self.logit.abs().clamp(min=1e-12)

    def summary(self, window: torch.Tensor, threshold: float) -> Dict[str, float]:
        """The figures the CLI prints and the page shows, for poisoned versus clean samples.

        `window` marks the pixels a sticker can cover; its share of the thesis-normalised
        mass and of the positive relevance says whether the model looks at the sticker.
        """
        from .pointcloud import normalised_mass, point_count, top_share

        poisoned, clean = self.poison_mask, ~self.poison_mask
        mass = normalised_mass(self.heatmaps)
        mass_share = (mass * window).flatten(1).sum(dim=1)
        positive = self.heatmaps.clamp(min=0).double()
        positive_share = (positive * window).flatten(1).sum(1) / positive.flatten(1).sum(1).clamp(min=1e-300)
        points = point_count(mass, threshold).double()
        top9 = top_share(mass, 9)
        gap = self.conservation_gap.double()

        def mean(values: torch.Tensor, where: torch.Tensor) -> Optional[float]:
            return round(float(values[where].mean()), 6) if bool(where.any()) else None

        def median(values: torch.Tensor, where: torch.Tensor) -> Optional[float]:
            return round(float(values[where].double().median()), 6) if bool(where.any()) else None

        return {
            "count": len(self), "poisoned": int(poisoned.sum()), "clean": int(clean.sum()),
            "seconds": self.seconds,
            "conservation_gap_median": round(float(gap.median()), 6),
            "conservation_gap_mean_abs": round(float(gap.abs().mean()), 6),
            "threshold": threshold, "mean_points": round(float(points.mean()), 2),
            "cloud_size_median_poisoned": median(points, poisoned), "cloud_size_median_clean": median(points, clean),
            "top9_share_median_poisoned": median(top9, poisoned), "top9_share_median_clean": median(top9, clean),
            "window_pixels": int(window.sum()), "window_share_of_image": round(float(window.double().mean()), 6),
            "window_mass_share_poisoned": mean(mass_share, poisoned), "window_mass_share_clean": mean(mass_share, clean),
            "window_positive_share_poisoned": mean(positive_share, poisoned), "window_positive_share_clean": mean(positive_share, clean),
        }


def heatmaps_path(model_file: str, class_id: int, config: LRPConfig):
    key = config_hash(_ARTIFACT_VERSION, model_file, class_id, config)
    return cache_dir() / f"heatmaps-{class_id:02d}-{config.rule}-{key}.safetensors"


def check_class(class_id) -> int:
    try:
        return whole_number("class", class_id, 0, NUM_CLASSES - 1)
    except ConfigError:
        raise ConfigError(f"class must be in 0 … {NUM_CLASSES - 1}, got {class_id!r}") from None


def class_heatmaps(
    model: nn.Module,
    model_file: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    poison_mask: torch.Tensor,
    class_id: int,
    config: LRPConfig,
    progress: Optional[ProgressCallback] = None,
    use_cache: bool = True,
) -> ClassHeatmaps:
    """Heatmaps of the training images labelled `class_id`, cached per (model, class, rules).

    `model_file` names the trained model's artifact (its hash covers data, attack and
    training), so the heatmaps are recomputed whenever any of those change.
    """
    class_id = check_class(class_id)
    indices = torch.nonzero(labels == class_id).flatten()
    if len(indices) == 0:
        raise ConfigError(f"the training split has no images labelled {class_id}")

    def compute() -> ClassHeatmaps:
        started = time.perf_counter()
        class_images = images[indices]
        class_labels = labels[indices]
        if config.target == "prediction":
            from .models import predict

            explained = predict(model, class_images)
        else:
            explained = class_labels
        heatmaps, logits = explain(model, class_images, explained, config, progress=progress)
        probabilities = logits.softmax(dim=1)
        return ClassHeatmaps(
            heatmaps=heatmaps.float().contiguous(),
            indices=indices,
            poison_mask=poison_mask[indices].clone(),
            explained=explained.clone(),
            logit=logits.gather(1, explained[:, None])[:, 0].float(),
            confidence=probabilities.gather(1, class_labels[:, None])[:, 0].float(),
            predicted=logits.argmax(dim=1),
            class_id=class_id,
            config=config,
            seconds=round(time.perf_counter() - started, 3),
        )

    def encode(result: ClassHeatmaps):
        tensors = {k: getattr(result, k) for k in _HEATMAP_TENSORS}
        return tensors, {"seconds": result.seconds, "class_id": class_id, "model": model_file, "config": config.__dict__}

    def decode(tensors, meta) -> ClassHeatmaps:
        return ClassHeatmaps(**{k: tensors[k] for k in _HEATMAP_TENSORS}, class_id=class_id, config=config, seconds=meta["seconds"])

    return cached(heatmaps_path(model_file, class_id, config), compute, encode, decode, use_cache, progress,
                  measure=(lrp_step(architecture_name(model), config), len(indices)))


def lrp_step(architecture: str, config: LRPConfig) -> str:
    """The name under which LRP's duration per image is measured (core.durations)."""
    return f"lrp {architecture} {config.rule}"


_HEATMAP_TENSORS = ("heatmaps", "indices", "poison_mask", "explained", "logit", "confidence", "predicted")


def experiment_heatmaps(
    experiment,
    class_id: int,
    config: LRPConfig,
    data=None,
    progress: Optional[ProgressCallback] = None,
    use_cache: bool = True,
) -> ClassHeatmaps:
    """Heatmaps of `class_id` in the (poisoned) training split of `experiment`, training its model if needed."""
    from .data import load_gtsrb
    from .experiment import train_or_load

    class_id = check_class(class_id)  # before loading data and training, which can take minutes
    from .lrp import check_layer_of

    check_layer_of(experiment.train.architecture, config.layer)
    data = data if data is not None else load_gtsrb(progress=progress)
    trained = train_or_load(experiment, data, progress=progress, use_cache=use_cache)
    return model_heatmaps(trained, experiment, class_id, config, data, progress=progress, use_cache=use_cache)


def model_heatmaps(
    trained,
    experiment,
    class_id: int,
    config: LRPConfig,
    data,
    progress: Optional[ProgressCallback] = None,
    use_cache: bool = True,
) -> ClassHeatmaps:
    """Heatmaps of `class_id` for `experiment`'s model once it is trained: the one place that
    pairs the model with its own (poisoned) training split."""
    from .experiment import poisoned_data

    train = poisoned_data(data, experiment).train
    return class_heatmaps(trained.model, trained.path.name, train.images, train.labels, train.poison_mask,
                          class_id, config, progress=progress, use_cache=use_cache)


def experiment_heatmaps_path(experiment, class_id: int, config: LRPConfig, data):
    """Where the heatmaps of `class_id` for `experiment` are cached, whether or not they are computed yet."""
    from .experiment import model_path

    return heatmaps_path(model_path(data, experiment).name, class_id, config)
