"""Heatmap point clouds on the shared pixel grid, and the products C T of their structure matrices
with transport plans, as the GW solver (`core.gromov`) carries them.

- Every cloud is a subset of the same 32×32 pixel grid, and its structure matrix is the
  grid's distance matrix D restricted to the cloud and divided by the cloud's largest
  distance. So C T for every cloud at once is one matrix product of the plans, padded with
  zeros onto the grid, with D. C² p is exact from three moments of the weights, because
  squared distances have rank 4.
- Which product gives C T cheaply depends on the CPU (`core.arithmetic` measures it once). The
  float32 path uses a rank-6 separable approximation of D for every product: the grid's
  distances depend only on the offset (Δr, Δc), and the singular values of the 63×63 kernel
  √(Δr² + Δc²) fall below 4e-5 of the first after six terms, so C T is Σ_r A_r T B_rᵀ with
  32×32 Toeplitz factors: a third of the arithmetic, with an error of 5e-6 to 1e-4 of C T.
  The bfloat16 path updates C T by a bfloat16 product of each plan change with D (error about
  2e-3 of C ΔT), with the exact product at every pair's last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .arithmetic import choose
from .errors import ConfigError
from .pointcloud import check_threshold, normalised_mass, point_count

GRID_SIZE = 32


def grid_coordinates(size: int = GRID_SIZE) -> torch.Tensor:
    """(size², 2) float64 (row, column) of every pixel, row-major like a flattened heatmap."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).double()


def grid_distances(size: int = GRID_SIZE) -> torch.Tensor:
    """(size², size²) float64 Euclidean distances between the pixels of the grid."""
    xy = grid_coordinates(size)
    return torch.cdist(xy, xy)


@dataclass(frozen=True, eq=False)
class GridClouds:
    """The point clouds of many heatmaps, each as weights on the shared pixel grid.

    `weights[i]` is cloud i's mass (zero outside the cloud, sums to 1) and `scale[i]` the
    inverse of its largest distance, so cloud i's structure matrix is scale[i] · D restricted
    to its support, exactly as `core.pointcloud.point_cloud` builds it.
    """

    weights: torch.Tensor  # float64 (B, size²)
    scale: torch.Tensor  # float64 (B,)
    size: int = GRID_SIZE

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def from_heatmaps(cls, heatmaps: torch.Tensor, threshold: float) -> "GridClouds":
        threshold = check_threshold(threshold)
        mass = normalised_mass(heatmaps)
        mass = mass.unsqueeze(0) if mass.dim() == 2 else mass
        count, size = len(mass), mass.shape[-1]
        if mass.shape[-2] != size:
            raise ConfigError(f"heatmaps must be square, got {tuple(mass.shape[-2:])}")
        flat = mass.flatten(1)
        kept = point_count(mass, threshold).reshape(count)
        order = flat.sort(dim=1, descending=True, stable=True).indices
        ranks = torch.arange(flat.shape[1]).expand(count, -1)
        support = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, ranks < kept[:, None])
        weights = torch.where(support, flat, torch.zeros_like(flat))
        weights = weights / weights.sum(dim=1, keepdim=True)
        largest = _largest_distance(support.reshape(count, size, size))
        scale = torch.where(largest > 0, 1.0 / largest.clamp(min=1e-300), torch.zeros_like(largest))
        return cls(weights, scale, size)

    def support(self, i: int) -> torch.Tensor:
        """Grid indices of cloud i's points, most massive first (the order of point_cloud)."""
        w = self.weights[i]
        order = w.sort(descending=True, stable=True).indices
        return order[: int((w > 0).sum())]

    def structure(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cloud i as (structure matrix (n, n), weights (n,)) in float64, e.g. for POT."""
        idx = self.support(i)
        xy = grid_coordinates(self.size)[idx]
        return torch.cdist(xy, xy) * self.scale[i], self.weights[i, idx]

    def mean_square_distances(self) -> torch.Tensor:
        """C² p for every cloud, (B, size²) float64: each grid point's mean squared distance to the
        cloud's mass, the part of the linearised GW loss that depends on the cloud alone."""
        xy = grid_coordinates(self.size)
        squared = (xy * xy).sum(dim=1)
        w, s = self.weights, self.scale
        # (C² p)_a = s² Σ_b p_b |x_a − x_b|² = s² (|x_a|² + Σ_b p_b |x_b|² − 2 x_a · Σ_b p_b x_b): exact.
        moments = squared[None, :] + (w @ squared)[:, None] - 2.0 * (w @ xy) @ xy.T
        return (s * s)[:, None] * moments


def _largest_distance(support: torch.Tensor) -> torch.Tensor:
    """Largest pairwise distance within each (B, H, W) pixel set.

    The farthest pair lies on the convex hull, and every hull vertex is the leftmost or the
    rightmost pixel of its row, so 2H candidates per set suffice.
    """
    count, height, width = support.shape
    any_in_row = support.any(dim=2)
    columns = torch.arange(width).expand(count, height, width)
    left = torch.where(support, columns, width).amin(dim=2)
    right = torch.where(support, columns, -1).amax(dim=2)
    rows = torch.arange(height).expand(count, height)
    xy = torch.cat([torch.stack([rows, left], -1), torch.stack([rows, right], -1)], dim=1).double()
    valid = torch.cat([any_in_row, any_in_row], dim=1)
    d = torch.cdist(xy, xy)
    d = d.masked_fill(~(valid[:, :, None] & valid[:, None, :]), -1.0)
    return d.flatten(1).amax(dim=1).clamp(min=0.0)


SEPARABLE_RANK = 6


def separable_distance_factors(size: int = GRID_SIZE, rank: int = SEPARABLE_RANK, dtype=torch.float32):
    """Factors (left, right) with X D ≈ left @ (X_rows @ right) for plans X on the size×size grid.

    D[(i, j), (k, l)] = K(i − k, j − l) with K(a, b) = √(a² + b²) on offsets −(size−1) … size−1.
    The truncated SVD K ≈ Σ_r u_r v_rᵀ gives (X D)(i, j) = Σ_r Σ_k u_r(i − k) Σ_l X(k, l) v_r(j − l).
    `right` is (l, (r, j)) and `left` is (i, (k, r)), laid out so that neither step needs a
    transpose of the plans: see `separable_product`.
    """
    offsets = torch.arange(-(size - 1), size, dtype=torch.float64)
    kernel = (offsets[:, None] ** 2 + offsets[None, :] ** 2).sqrt()
    u, sigma, vh = torch.linalg.svd(kernel)
    root = sigma[:rank].sqrt()
    index = torch.arange(size)
    shift = index[:, None] - index[None, :] + (size - 1)  # (i, k) -> offset i − k
    left = (u[:, :rank] * root)[shift]  # (i, k, r)
    right = (vh[:rank].T * root)[shift]  # (j, l, r)
    return left.reshape(size, size * rank).to(dtype), right.permute(1, 2, 0).reshape(size, rank * size).to(dtype)


SEPARABLE_BLOCK = 128


def separable_product(rows: torch.Tensor, left: torch.Tensor, right: torch.Tensor, block: int = SEPARABLE_BLOCK) -> torch.Tensor:
    """rows (R, size²) times the grid's distance matrix, through its separable factors.

    The intermediate is `rank` times larger than the rows, so they go through in blocks whose
    intermediate stays in the CPU's cache (over a whole batch it spills to memory, and the
    product runs at a third of the speed inside the solver).
    """
    count, n = rows.shape
    size = left.shape[0]
    rank = left.shape[1] // size
    if count > block:
        out = torch.empty_like(rows)
        for start in range(0, count, block):
            out[start : start + block] = separable_product(rows[start : start + block], left, right, block)
        return out
    inner = (rows.reshape(count * size, size) @ right).view(count, size * rank, size)  # (row, (k, r), j)
    return torch.matmul(left, inner).view(count, n)


_CHANGE_PRODUCT_PATH: dict = {}


def change_product_path(size: int = GRID_SIZE, rows: int = 320) -> str:
    """'bfloat16' or 'float32': which way of carrying C T is faster on this CPU, measured once per
    CPU (and per process) on `rows` plan rows, or forced by POISONLAB_ARITHMETIC.

    Each candidate is timed as what a mirror step costs on its path: the float32 path's separable
    product, against the bfloat16 path's product of the change plus the exact product that a
    quarter of all steps take (the pairs' last steps: 84,000 of 320,000 on class 5). Timing the
    bfloat16 product alone chose it on a CPU with native bfloat16 where the whole k-means then ran
    19 % slower than on the float32 path (38.4 s against 32.3 s)."""
    from .arithmetic import forced_path

    forced = forced_path()
    if forced is not None:
        return forced
    if size not in _CHANGE_PRODUCT_PATH:
        generator = torch.Generator().manual_seed(0)
        sample = torch.rand(rows, size * size, generator=generator) * 1e-4
        dense = grid_distances(size).float()
        dense_bf16 = dense.bfloat16()
        left, right = separable_distance_factors(size)
        last = sample[: rows // 4]
        _CHANGE_PRODUCT_PATH[size] = choose(f"gw-step-product-{size}", {
            "float32": lambda: separable_product(sample, left, right),
            "bfloat16": lambda: ((sample.bfloat16() @ dense_bf16).float(), last @ dense),
        })
    return _CHANGE_PRODUCT_PATH[size]


class CloudProducts:
    """C T for plans T (P, m, size²) of the clouds of a GridClouds, on one arithmetic path
    ('float32' or 'bfloat16', see the module's notes); in float64 every product is exact."""

    def __init__(self, clouds: GridClouds, dtype: torch.dtype, arithmetic: str) -> None:
        self.clouds = clouds
        self.dtype = dtype
        self.arithmetic = arithmetic
        self.distances = grid_distances(clouds.size).to(dtype)
        # float32 computes every C T through the separable factors: nothing accumulates, nothing to refresh.
        self.direct = arithmetic == "float32" and dtype == torch.float32
        if arithmetic == "bfloat16":
            self._distances_bf16 = self.distances.bfloat16()
        else:
            self._left, self._right = separable_distance_factors(clouds.size, dtype=dtype)

    def carried(self, plans: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C T for each pair, as (P, m, size²), as the solver computes it: through the separable
        factors on the float32 path (at half the time of the dense product; error about 5e-6 of
        C T for plans of scattered mass, up to 1e-4 for smooth ones, which moves GW values by
        1.4e-6 (median) to 2.3e-5 (max) on class 5: below the solver's own tolerances), else the
        exact product."""
        if self.direct:
            count, m, n = plans.shape
            product = separable_product(plans.reshape(count * m, n), self._left, self._right).reshape(count, m, n)
            return product.mul_(self.clouds.scale.to(self.dtype)[cloud][:, None, None])
        return self.exact(plans, cloud)

    def exact(self, plans: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C T for each pair, as (P, m, size²): one product with the grid's distance matrix."""
        count, m, n = plans.shape
        product = (plans.reshape(count * m, n) @ self.distances).reshape(count, m, n)
        return product.mul_(self.clouds.scale.to(self.dtype)[cloud][:, None, None])

    def change(self, difference: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C ΔT for a plan change ΔT by the cheap product: bfloat16 with D (error under 1 % of
        C ΔT) or float32 through D's separable factors (about 2e-6); either is far below what a
        step of a small change can feel."""
        count, m, n = difference.shape
        rows = difference.reshape(count * m, n)
        if self.arithmetic == "bfloat16":
            product = (rows.bfloat16() @ self._distances_bf16).float()
        else:
            product = separable_product(rows.to(self.dtype), self._left, self._right)
        return product.reshape(count, m, n).mul_(self.clouds.scale.to(self.dtype)[cloud][:, None, None])

    def updated(self, products: torch.Tensor, difference: torch.Tensor, new_plans: torch.Tensor,
                cloud: torch.Tensor, cheap: torch.Tensor) -> torch.Tensor:
        """C T of the new plans: the old C T plus the cheap product of the change where `cheap`,
        the exact product elsewhere. On the float32 path the product of the new plans costs as
        much as that of the change and does not accumulate rounding, so it is taken directly."""
        if self.direct:
            return self.carried(new_plans, cloud)
        if not bool(cheap.any()):
            return self.carried(new_plans, cloud)
        if bool(cheap.all()):
            return products + self.change(difference, cloud)
        small, large = cheap.nonzero()[:, 0], (~cheap).nonzero()[:, 0]
        result = torch.empty_like(new_plans)
        result[small] = products[small] + self.change(difference[small], cloud[small])
        result[large] = self.carried(new_plans[large], cloud[large])
        return result
