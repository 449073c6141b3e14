"""Heatmaps as weighted point clouds (thesis, section 6.4): the input of Gromov–Wasserstein.

A heatmap is min-max normalised to [0, 1] and divided by its total, so it is a probability
mass over the pixels. Its point cloud at mass threshold t keeps the most relevant pixels
until their cumulative mass reaches t; their masses, renormalised to sum to 1, are the
weights, and the Euclidean distances between their pixel coordinates, divided by the
largest, are the structure matrix.

Degenerate heatmaps have a defined meaning instead of NaN: a constant heatmap (all zero
included) says every pixel is equally relevant, so its mass is uniform; a cloud of one
point has the structure matrix [[0]].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from .errors import ConfigError
from .validation import real_number


@dataclass(frozen=True, eq=False)
class PointCloud:
    coords: torch.Tensor  # int64 (k, 2): (row, column) of each kept pixel, most relevant first
    weights: torch.Tensor  # float64 (k,), sums to 1
    structure: torch.Tensor  # float64 (k, k), Euclidean distances / their maximum

    def __len__(self) -> int:
        return int(self.weights.shape[0])


def _check_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() not in (2, 3):
        raise ConfigError("heatmaps must be a tensor of shape (H, W) or (N, H, W)")
    if heatmaps.numel() == 0:
        raise ConfigError("heatmaps are empty")
    if not torch.isfinite(heatmaps).all():
        raise ConfigError("heatmaps contain NaN or infinite values")
    return heatmaps.double()


def normalised_mass(heatmaps: torch.Tensor) -> torch.Tensor:
    """Thesis normalisation, per heatmap: min-max to [0, 1], then divided by the total (float64)."""
    h = _check_heatmaps(heatmaps)
    single = h.dim() == 2
    h = h.unsqueeze(0) if single else h
    flat = h.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    constant = span[:, 0] <= 0
    scaled = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    scaled[constant] = 1.0  # every pixel equally relevant
    mass = scaled / scaled.sum(dim=1, keepdim=True)
    mass = mass.reshape(h.shape)
    return mass[0] if single else mass


def check_threshold(threshold: float) -> float:
    return real_number("mass threshold", threshold, 0.0, 1.0, open_low=True)


def point_count(mass: torch.Tensor, threshold: float) -> torch.Tensor:
    """Points kept per heatmap at `threshold`, from normalised masses (N, H, W) or (H, W)."""
    threshold = check_threshold(threshold)
    single = mass.dim() == 2
    flat = (mass.unsqueeze(0) if single else mass).flatten(1)
    ordered = flat.sort(dim=1, descending=True).values
    cumulative = ordered.cumsum(dim=1)
    goal = threshold * cumulative[:, -1:]
    count = torch.searchsorted(cumulative.contiguous(), goal.contiguous()).squeeze(1) + 1
    if threshold >= 1.0:  # every pixel with positive mass, even where rounding plateaus the sum
        count = torch.maximum(count, (flat > 0).sum(dim=1))
    count = count.clamp(1, flat.shape[1])
    return count[0] if single else count


def cloud_sizes(mass: torch.Tensor, thresholds) -> torch.Tensor:
    """Points kept per heatmap (rows) at each threshold (columns), from normalised masses (N, H, W):
    one sort serves every threshold, so a page can draw the whole curve while t is tuned."""
    limits = torch.tensor([check_threshold(t) for t in thresholds], dtype=torch.float64)
    flat = mass.flatten(1)
    cumulative = flat.sort(dim=1, descending=True).values.cumsum(dim=1).contiguous()
    goal = (limits[None, :] * cumulative[:, -1:]).contiguous()
    counts = torch.searchsorted(cumulative, goal) + 1
    full = limits >= 1.0
    if bool(full.any()):
        counts[:, full] = torch.maximum(counts[:, full], (flat > 0).sum(dim=1, keepdim=True))
    return counts.clamp(1, flat.shape[1])


def top_share(mass: torch.Tensor, top: int = 9) -> torch.Tensor:
    """Share of each heatmap's normalised mass in its `top` heaviest pixels (N,): near 1 for a
    cloud that is one compact atom (a sticker), near top/pixels for a flat field."""
    flat = mass.flatten(1)
    return flat.topk(min(top, flat.shape[1]), dim=1).values.sum(dim=1) / flat.sum(dim=1)


VISIBILITY_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (0.99, 1.0)


def visibility(heatmaps: torch.Tensor, window: torch.Tensor, thresholds=VISIBILITY_THRESHOLDS, top: int = 9) -> dict:
    """What GW can see in each heatmap's cloud: its size at every threshold (N, T), the mass share of
    its `top` heaviest pixels and of the sticker `window` (N,). GW ignores where a cloud lies, so a
    sticker shows only as a heavy compact atom: a high top share in poisoned clouds and not in clean."""
    mass = normalised_mass(heatmaps)
    mass = mass.unsqueeze(0) if mass.dim() == 2 else mass
    return {"thresholds": tuple(thresholds), "sizes": cloud_sizes(mass, thresholds),
            "top_share": top_share(mass, top), "window_share": (mass * window).flatten(1).sum(dim=1)}


def point_cloud(heatmap: torch.Tensor, threshold: float) -> PointCloud:
    """The weighted point cloud of one heatmap (H, W) at mass threshold `threshold` in (0, 1]."""
    if not isinstance(heatmap, torch.Tensor) or heatmap.dim() != 2:
        raise ConfigError("point_cloud takes one heatmap tensor of shape (H, W)")
    mass = normalised_mass(heatmap)
    k = int(point_count(mass, threshold))
    width = mass.shape[1]
    values, order = mass.flatten().sort(descending=True, stable=True)
    keep = order[:k]
    coords = torch.stack([keep // width, keep % width], dim=1)
    weights = values[:k] / values[:k].sum()
    distances = torch.cdist(coords.double(), coords.double())
    largest = distances.max()
    structure = distances / largest if largest > 0 else distances
    return PointCloud(coords, weights, structure)


def point_clouds(heatmaps: torch.Tensor, threshold: float) -> List[PointCloud]:
    return [point_cloud(h, threshold) for h in heatmaps]


def mass_inside(heatmaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each heatmap's normalised mass that lies inside `mask` (N,)."""
    mass = normalised_mass(heatmaps)
    mass = mass.unsqueeze(0) if mass.dim() == 2 else mass
    return (mass * mask).flatten(1).sum(dim=1)
