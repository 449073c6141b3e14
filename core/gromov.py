"""Entropic Gromov–Wasserstein between heatmap point clouds, batched over a whole class.

Thesis section 6.5 (after Peyré, Cuturi and Solomon 2016): for structure matrices C (n×n,
the cloud) and C̄ (m×m, a barycenter) with weights p and q, the square-loss GW objective is
E(T) = Σ (C_ik − C̄_jl)² T_ij T_kl, and entropic GW minimises E(T) − ε H(T) over couplings
of p and q by mirror descent with step 1/ε (thesis proposition 6.5.37; POT's
`entropic_gromov_wasserstein`, solver "PGD"):

    T ← argmin_{T ∈ Π(p, q)} ⟨2 L(T), T⟩ − ε H(T),   L(T) = C² p 1ᵀ + 1 qᵀ C̄² − 2 C T C̄,

and GW is E(T) = ⟨L(T), T⟩ at the end. What makes it fast here:

- Every cloud is a subset of the same 32×32 pixel grid, and its structure matrix is the
  grid's distance matrix D restricted to the cloud and divided by the cloud's largest
  distance. So C T for every cloud at once is one matrix product of the plans, padded with
  zeros onto the grid, with D. C² p is exact from three moments of the weights, because
  squared distances have rank 4.
- The inner entropic transport problem has only m (= 10) target points, so it is solved in
  its semi-dual: the plan is T_aj = p_a softmax_j((g_j − M_aj)/ε) and the m potentials g
  follow from a few damped Newton steps, in the log domain, stable at ε = 5e-4 where POT's
  plain-domain Sinkhorn fails. Potentials and plans are warm-started across mirror steps,
  barycenter updates and k-means iterations.
- Pairs that have converged leave the batch; at small ε a pair also stops once its objective
  has settled, while the boundaries of its plan may still creep.
- Exponentials are base 2 with arguments clamped above the denormal range (several times
  faster on CPUs than natural ones near underflow).
- In float32 the transport and the linearised loss run as fused kernels (`core.semidual`):
  each pair's m × N block is worked on while it is in the core's cache, where the same steps
  as tensor operations make some twenty passes through memory.
- Which product gives C T cheaply depends on the CPU (`core.arithmetic` measures it once). The
  float32 path uses a rank-6 separable approximation of D for every product: the grid's
  distances depend only on the offset (Δr, Δc), and the singular values of the 63×63 kernel
  √(Δr² + Δc²) fall below 4e-5 of the first after six terms, so C T is Σ_r A_r T B_rᵀ with
  32×32 Toeplitz factors: a third of the arithmetic, with an error of 5e-6 to 1e-4 of C T.
  The bfloat16 path updates C T by a bfloat16 product of each plan change with D (error about
  2e-3 of C ΔT), with the exact product at every pair's last step.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import semidual
from .arithmetic import choose
from .errors import ConfigError
from .pointcloud import check_threshold, normalised_mass, point_count

GRID_SIZE = 32
LOG2E = 1.0 / math.log(2.0)
# Softmax arguments below this many bits contribute nothing; clamping them avoids denormals,
# on which the processor's exponential is many times slower.
_FLOOR_BITS = -126.0
# POT's entropic_gromov_barycenters solves each member's plan with its own max_iter and a fixed
# absolute tolerance of 1e-4 on the plan's change; fresh barycenter updates do the same.
POT_BARYCENTER_PLAN_TOL = 1e-4


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


def random_structure(size: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """A barycenter's starting structure, as POT draws it: distances between `size` standard
    normal points in the plane, divided by the largest."""
    import numpy as np

    xy = np.random.default_rng(seed).standard_normal((size, 2))
    d = torch.cdist(torch.from_numpy(xy), torch.from_numpy(xy))
    return (d / d.max()).to(dtype)


@dataclass
class Plans:
    """Solutions for a batch of (cloud, barycenter) pairs, reusable as warm starts."""

    plans: torch.Tensor  # (P, m, size²): T[j, a] = mass from barycenter point j to grid point a
    products: torch.Tensor  # (P, m, size²): C T, which does not depend on the barycenter
    potentials: torch.Tensor  # (P, m): the semi-dual potentials g of the last transport problem
    values: torch.Tensor  # (P,) float64 GW objective E(T)
    iterations: torch.Tensor  # (P,) mirror steps taken

    FIELDS = ("plans", "products", "potentials", "values", "iterations")

    def select(self, index) -> "Plans":
        return Plans(*(getattr(self, f)[index] for f in self.FIELDS))

    @staticmethod
    def empty(count: int, like: "Plans") -> "Plans":
        """Uninitialised arrays for `count` pairs, shaped and typed as `like`'s."""
        return Plans(*(torch.empty((count, *getattr(like, f).shape[1:]), dtype=getattr(like, f).dtype) for f in Plans.FIELDS))

    def write(self, part: slice, other: "Plans") -> None:
        """Copy `other` into the pairs `part`, in place."""
        for f in self.FIELDS:
            getattr(self, f)[part].copy_(getattr(other, f))

    def update(self, index, other: "Plans") -> None:
        """Overwrite the pairs at `index` with `other`'s."""
        for f in self.FIELDS:
            getattr(self, f)[index] = getattr(other, f)


class GridGW:
    """Entropic GW between the clouds of a GridClouds and small barycenters, in batches of pairs.

    `outer_tol` stops a pair's mirror descent when the Frobenius change of its plan, relative
    to the plan's norm, falls below it (POT's criterion, made relative), or when the change is
    below 30 × `outer_tol` and the objective moved by less than `value_tol` (relative) in the
    step; `marginal_tol` bounds the barycenter-side marginal error of each inner transport
    problem. Steps that change a plan by less than `cheap_change` (relative) update C T by a
    cheap product of the change (`arithmetic`: 'bfloat16' or 'float32', see the module's notes;
    default: the faster on this CPU); on the bfloat16 path every pair's last step uses the exact
    product, on the float32 path every product is the separable one. In float64 both shortcuts
    are off, for reference results.
    """

    def __init__(self, clouds: GridClouds, epsilon: float, *, dtype: torch.dtype = torch.float32,
                 outer_tol: Optional[float] = None, max_outer: int = 500, marginal_tol: Optional[float] = None,
                 newton_steps: int = 1, chunk: int = 128, cheap_change: Optional[float] = None,
                 value_tol: Optional[float] = None, arithmetic: Optional[str] = None) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon) or epsilon <= 0:
            raise ConfigError(f"epsilon must be a positive number, got {epsilon!r}")
        self.clouds = clouds
        self.epsilon = float(epsilon)
        self.dtype = dtype
        self.max_outer = max_outer
        single = dtype == torch.float32
        # float32 resolves potentials of size 2·max(L)/ε ≈ 10³ to about 1e-4, so its marginals to about 1e-5.
        self.marginal_tol = marginal_tol if marginal_tol is not None else (1e-5 if single else 1e-10)
        self.newton_steps = newton_steps
        self.outer_tol = outer_tol if outer_tol is not None else (3e-4 if single else 1e-8)
        self.value_tol = value_tol if value_tol is not None else (1e-5 if single else 0.0)
        self.max_newton = 50
        self.chunk = chunk
        self._ridge = 1e-6 if single else 1e-10
        self._slack = 1e-5 if single else 1e-12
        self.distances = grid_distances(clouds.size).to(dtype)
        if arithmetic is not None and arithmetic not in ("bfloat16", "float32"):
            raise ConfigError(f"arithmetic must be 'bfloat16' or 'float32', got {arithmetic!r}")
        self.arithmetic = arithmetic if arithmetic is not None else (change_product_path(clouds.size) if single else "float32")
        # float32 computes every C T through the separable factors: nothing accumulates, nothing to refresh.
        self.direct_products = self.arithmetic == "float32" and single
        if self.arithmetic == "bfloat16":
            self._distances_bf16 = self.distances.bfloat16()
        else:
            self._left, self._right = separable_distance_factors(clouds.size, dtype=dtype)
        # Plans that change by less than this (relative) update C T by the cheap product; float64 stays exact.
        # The separable product's error (2e-6 of C ΔT) is small enough for steps of any size; bfloat16's is not.
        default_cheap = (math.inf if self.arithmetic == "float32" else 1e-1) if single else 0.0
        self.cheap_change = cheap_change if cheap_change is not None else default_cheap
        xy = grid_coordinates(clouds.size)
        squared = (xy * xy).sum(dim=1)
        w, s = clouds.weights, clouds.scale
        # (C² p)_a = s² Σ_b p_b |x_a − x_b|² = s² (|x_a|² + Σ_b p_b |x_b|² − 2 x_a · Σ_b p_b x_b): exact.
        moments = squared[None, :] + (w @ squared)[:, None] - 2.0 * (w @ xy) @ xy.T
        self.cloud_term = ((s * s)[:, None] * moments).to(dtype)
        self.weights = w.to(dtype)
        self.log_weights = torch.log(self.weights)  # −inf outside a cloud: no mass goes there

    def transferred(self, plan: Plans, cloud: torch.Tensor) -> Plans:
        """Warm starts for `cloud`'s pairs with the structure that `plan` (one pair) solved for
        another cloud: each grid point sends its mass to the barycenter's points in the shares
        it does in that plan (uniformly where that cloud has no mass).

        All clouds lie on one grid and the class's clouds look alike, so this starts every pair
        near the optimum in the same orientation of the barycenter, where p qᵀ starts far away.
        """
        shares = plan.plans[0].to(self.dtype)  # (m, size²)
        column = shares.sum(dim=0, keepdim=True)
        m = shares.shape[0]
        shares = torch.where(column > 0, shares / column.clamp(min=1e-30), torch.full_like(shares, 1.0 / m))
        count = len(cloud)
        plans = torch.empty(count, m, shares.shape[1], dtype=self.dtype)
        products = torch.empty_like(plans)
        for start in range(0, count, self.chunk):
            part = slice(start, start + self.chunk)
            plans[part] = self.weights[cloud[part]][:, None, :] * shares
            products[part] = self.cloud_product(plans[part], cloud[part])
        potentials = plan.potentials[:1].to(self.dtype).expand(count, -1).clone()
        values = torch.zeros(count, dtype=torch.float64)
        return Plans(plans, products, potentials, values, torch.zeros(count, dtype=torch.long))

    def cloud_product(self, plans: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C T for each pair, as (P, m, size²), as the solver computes it: through the separable
        factors on the float32 path (at half the time of the dense product; error about 5e-6 of
        C T for plans of scattered mass, up to 1e-4 for smooth ones, which moves GW values by
        1.4e-6 (median) to 2.3e-5 (max) on class 5: below the solver's own tolerances), else the
        exact product."""
        if self.direct_products:
            count, m, n = plans.shape
            product = separable_product(plans.reshape(count * m, n), self._left, self._right).reshape(count, m, n)
            return product.mul_(self.clouds.scale.to(self.dtype)[cloud][:, None, None])
        return self.exact_product(plans, cloud)

    def exact_product(self, plans: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C T for each pair, as (P, m, size²): one product with the grid's distance matrix."""
        count, m, n = plans.shape
        product = (plans.reshape(count * m, n) @ self.distances).reshape(count, m, n)
        return product.mul_(self.clouds.scale.to(self.dtype)[cloud][:, None, None])

    def change_product(self, difference: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
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

    def linearised_loss(self, products: torch.Tensor, cloud_term: torch.Tensor, bary: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """L(T) = C² p 1ᵀ + 1 qᵀ C̄² − 2 C T C̄ (barycenter rows, grid columns) from C T and the
        pairs' rows of `self.cloud_term` (C² p)."""
        bary_term = torch.bmm(bary * bary, q[:, :, None])[:, :, 0]  # (C̄² q)_j
        return torch.baddbmm(cloud_term[:, None, :] + bary_term[:, :, None], bary, products, alpha=-2.0)

    def _loss_and_value(self, products: torch.Tensor, cloud_term: torch.Tensor, bary: torch.Tensor, q: torch.Tensor,
                        plans: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """L(T) and the objective ⟨L(T), T⟩ (float64): fused in float32 (`core.semidual`), else as tensors."""
        if self.dtype == torch.float32 and semidual.available():
            return semidual.loss_and_value(products, cloud_term, bary, q, plans)
        loss = self.linearised_loss(products, cloud_term, bary, q)
        return loss, _objective(loss, plans)

    def solve(self, cloud: torch.Tensor, bary: torch.Tensor, warm: Optional[Plans] = None,
              max_outer: Optional[int] = None, weights: Optional[torch.Tensor] = None,
              absolute_tol: Optional[float] = None, out: Optional[Plans] = None, exact_last: bool = True) -> Plans:
        """GW between cloud[i] and structure bary[i] (m×m) with weights weights[i] (default
        uniform; zero weights mark padding, which receives no mass) for every i.

        Without `warm`, starts from the product coupling p qᵀ like POT. With `absolute_tol`, a
        pair stops only when the Frobenius norm of its plan's change falls below it (POT's
        rule as it stands). With `out` (which may be `warm`), the results are written into its
        arrays, sparing the allocation of new ones. With `exact_last` false, even the last step
        may update C T by the cheap product (for callers that refresh it later). Pairs are solved in
        chunks of `chunk` (128 measured fastest here: larger batches, few megabytes each).
        """
        cloud = torch.as_tensor(cloud, dtype=torch.long)
        # Solving in place: the chunk works in `out`'s own arrays, no copy in and none out.
        in_place = out is not None and out is warm and all(
            getattr(warm, f).dtype == self.dtype for f in ("plans", "products", "potentials"))
        for start in range(0, len(cloud), self.chunk):
            part = slice(start, start + self.chunk)
            result = self._solve_chunk(cloud[part], bary[part], None if warm is None else warm.select(part), max_outer,
                                       None if weights is None else weights[part], absolute_tol, exact_last, in_place)
            if out is None:  # the arrays for every pair, allocated once (concatenating chunks copies them again)
                out = Plans.empty(len(cloud), result)
            if in_place:
                out.values[part], out.iterations[part] = result.values, result.iterations
            else:
                out.write(part, result)
        return out

    def _solve_chunk(self, cloud: torch.Tensor, bary: torch.Tensor, warm: Optional[Plans], max_outer: Optional[int],
                     weights: Optional[torch.Tensor], absolute_tol: Optional[float], exact_last: bool,
                     in_place: bool = False) -> Plans:
        bary = bary.to(self.dtype)
        count, m = len(cloud), bary.shape[-1]
        q = torch.full((count, m), 1.0 / m, dtype=self.dtype) if weights is None else weights.to(self.dtype)
        padding = q <= 0
        # The clouds' rows are gathered once per chunk and packed with the rest of the state.
        cloud_weights, cloud_term = self.weights[cloud], self.cloud_term[cloud]
        if warm is None:
            plans = cloud_weights[:, None, :] * q[:, :, None]
            products = self.cloud_product(cloud_weights[:, None, :], cloud) * q[:, :, None]  # C p qᵀ
            potentials = torch.zeros(count, m, dtype=self.dtype)
        elif in_place:  # the state is packed into arrays of its own before a result is written back
            plans, products, potentials = warm.plans, warm.products, warm.potentials
        else:
            plans, products, potentials = (warm.plans.to(self.dtype).clone(), warm.products.to(self.dtype).clone(),
                                           warm.potentials.to(self.dtype).clone())
        iterations = torch.zeros(count, dtype=torch.long)
        limit = self.max_outer if max_outer is None else max_outer
        loss, value = self._loss_and_value(products, cloud_term, bary, q, plans)
        # The pairs still going are kept packed in arrays of their own (`where`: their positions in
        # the chunk, None while it is all of them); a pair that stops is written to the chunk's
        # arrays once, and the next steps work on the pairs still going alone.
        where = None
        state = {"plans": plans, "products": products, "potentials": potentials, "loss": loss, "cloud": cloud, "bary": bary,
                 "cloud_weights": cloud_weights, "cloud_term": cloud_term,
                 "q": q, "padding": padding, "trust": torch.ones(count, dtype=self.dtype),
                 "value": value}
        values = torch.empty(count, dtype=torch.float64)
        for taken in range(limit):
            s = state
            c = s["cloud"]
            new_plans, new_potentials, error, absolute_change, new_norm = self._mirror_step(s)
            change = absolute_change / new_norm
            if self.direct_products:
                new_products = self.cloud_product(new_plans, c)
            else:  # steps that change a plan by less than `cheap_change` update C T by the cheap product
                new_products = self._updated_products(s["products"], new_plans - s["plans"], new_plans, c, change < self.cheap_change)
            new_loss, new_value = self._loss_and_value(new_products, s["cloud_term"], s["bary"], s["q"], new_plans)  # new_loss: the next step's cost
            # POT stops on the plan's change alone. At small ε the plans of clouds keep creeping at
            # their boundaries long after the objective has settled, so a pair also stops once its
            # change is small and this step moved its objective by less than `value_tol` (relative).
            settled = (change <= self.outer_tol) | ((change <= 30 * self.outer_tol) & ((new_value - s["value"]).abs() <= self.value_tol * new_value))
            if absolute_tol is not None:
                settled = absolute_change <= absolute_tol
            going = ~settled | (error > self.marginal_tol)
            if taken + 1 == limit:
                going = torch.zeros_like(going)
            if where is None:
                iterations += 1
            else:
                iterations[where] += 1
            s.update(plans=new_plans, products=new_products, potentials=new_potentials, loss=new_loss, value=new_value)
            if bool(going.all()):
                continue
            # A pair's last step gets the exact product (unless `exact_last` is false).
            done = (~going).nonzero()[:, 0]
            into = done if where is None else where[done]
            plans[into], potentials[into], values[into] = new_plans[done], new_potentials[done], new_value[done]
            exact = exact_last and not self.direct_products
            products[into] = self.cloud_product(new_plans[done], c[done]) if exact else new_products[done]
            if len(done) == len(going):
                break
            keep = going.nonzero()[:, 0]
            where = keep if where is None else where[keep]
            state = {k: v[keep] for k, v in s.items()}
        if limit == 0 or (exact_last and not self.direct_products):  # the values of the exact products
            values = self._loss_and_value(products, cloud_term, bary, q, plans)[1]
        return Plans(plans, products, potentials, values, iterations)

    def _updated_products(self, products: torch.Tensor, difference: torch.Tensor, new_plans: torch.Tensor,
                          cloud: torch.Tensor, cheap: torch.Tensor) -> torch.Tensor:
        """C T of the new plans: the old C T plus the cheap product of the change where `cheap`,
        the exact product elsewhere. On the float32 path the product of the new plans costs as
        much as that of the change and does not accumulate rounding, so it is taken directly."""
        if self.direct_products:
            return self.cloud_product(new_plans, cloud)
        if not bool(cheap.any()):
            return self.cloud_product(new_plans, cloud)
        if bool(cheap.all()):
            return products + self.change_product(difference, cloud)
        small, large = cheap.nonzero()[:, 0], (~cheap).nonzero()[:, 0]
        result = torch.empty_like(new_plans)
        result[small] = products[small] + self.change_product(difference[small], cloud[small])
        result[large] = self.cloud_product(new_plans[large], cloud[large])
        return result

    def _mirror_step(self, s: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One mirror step's transport from the state's loss: new plans, potentials, marginal errors,
        and the Frobenius norms of the plans' change and of the new plans. In float32 by the fused
        kernel of `core.semidual` (four times faster on 2 cores, bench/gromov.py: each pair's block stays in cache),
        else as tensor operations. The state's loss is overwritten."""
        scale = 2.0 * LOG2E / self.epsilon
        if self.dtype == torch.float32 and semidual.available():
            plans, bits, error, change, norm = semidual.transport(
                s["loss"], scale, s["cloud_weights"], s["q"], s["potentials"] * (LOG2E / self.epsilon), s["trust"],
                self.newton_steps, self.marginal_tol, self._ridge, self._slack, self.max_newton, s["plans"])
            return plans, bits.mul_(self.epsilon / LOG2E), error, change, norm
        cost = s["loss"].mul_(scale)  # L(T) of the plans this step starts from
        if bool(s["padding"].any()):
            cost.masked_fill_(s["padding"][:, :, None], 1e30)
        plans, potentials, error = self._transport_tensors(cost, s["cloud_weights"], s["q"], s["potentials"],
                                                           self.newton_steps, s["trust"])
        return plans, potentials, error, (plans - s["plans"]).flatten(1).norm(dim=1), plans.flatten(1).norm(dim=1)

    def _transport_tensors(self, scaled_cost: torch.Tensor, p: torch.Tensor, q: torch.Tensor, potentials: torch.Tensor,
                           steps: int, trust: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entropic OT from weights q (P, m) to the clouds' weights p (P, N), cost already divided by ε
        and given in bits (× log2 e): base-2 exponentials are several times faster.

        Semi-dual in h = g/ε (in bits): T_ja = p_a softmax_j(h_j − K_ja), concave objective
        Φ(h) = q·h − Σ_a p_a logsumexp_j(h_j − K_ja), raised by Newton steps with
        backtracking: `steps` of them, or more while a marginal is off by more than 1e-3
        (warm-started inside a mirror descent, one or two steps usually suffice). Returns the
        plans, the potentials g and each pair's largest marginal error. `trust` holds each
        pair's first trial step length and is updated in place.
        """
        h = potentials * (LOG2E / self.epsilon)
        m = scaled_cost.shape[1]
        # 11ᵀ/m fixes the constant shift; a small ridge keeps columns that lost all mass solvable.
        regulariser = torch.full((m, m), 1.0 / m, dtype=self.dtype) + torch.eye(m, dtype=self.dtype) * self._ridge

        def evaluate(h_: torch.Tensor, k_: torch.Tensor, p_: torch.Tensor, q_: torch.Tensor):
            """2^(h − K − top) (P, m, N), its column sums s (P, 1, N) and Φ(h) in bits."""
            shifted = h_[:, :, None] - k_
            top = shifted.amax(dim=1, keepdim=True)
            expo = shifted.sub_(top).clamp_(min=_FLOOR_BITS).exp2_()
            total = expo.sum(dim=1, keepdim=True)
            objective = (h_ * q_).sum(dim=1) - (p_ * (total.log2()[:, 0, :] + top[:, 0, :])).sum(dim=1)
            return expo, total, objective

        expo, total, objective = evaluate(h, scaled_cost, p, q)
        error = torch.empty(len(h), dtype=self.dtype)
        pending = None  # pairs still taking Newton steps; None: all of them
        for taken in range(self.max_newton + 1):
            e, s = _take(expo, pending), _take(total, pending)
            ratio = _take(p, pending) / s[:, 0, :]  # p_a / s_a: plan = expo · ratio
            marginal = (e * ratio[:, None, :]).sum(dim=2)  # faster than a batched matrix-vector product
            gradient = _take(q, pending) - marginal
            residual = gradient.abs().amax(dim=1)
            error = _put(error, pending, residual)
            # Beyond `steps`, only far-off problems go on: the mirror descent tolerates small errors.
            unfinished = (residual > self.marginal_tol) & ((taken < steps) | (residual > 1e-3))
            if taken == self.max_newton or not bool(unfinished.any()):
                break
            if not bool(unfinished.all()):
                keep = unfinished.nonzero()[:, 0]
                pending = _compose(pending, keep)
                e, s, ratio, gradient, marginal = e[keep], s[keep], ratio[keep], gradient[keep], marginal[keep]
            weighted = e * (ratio / s[:, 0, :]).sqrt_()[:, None, :]  # √p_a · softmax column a
            hessian = torch.diag_embed(marginal) - torch.bmm(weighted, weighted.transpose(1, 2)) + regulariser
            step = torch.linalg.solve(hessian, gradient) * LOG2E  # the Newton step of h in nats, in bits
            slope = (gradient * step).sum(dim=1)
            scale = _take(trust, pending).clone()
            trying = None  # positions within `pending` still backtracking; None: all of them
            for _halving in range(30):
                rows = _compose(pending, trying)
                trial_scale = _take(scale, trying)
                trial = _take(h, rows) + trial_scale[:, None] * _take(step, trying)
                t_expo, t_total, t_objective = evaluate(trial, _take(scaled_cost, rows), _take(p, rows), _take(q, rows))
                before = _take(objective, rows)
                ok = t_objective >= before + 1e-4 * trial_scale * _take(slope, trying) - self._slack * before.abs()
                passed = None if bool(ok.all()) else ok.nonzero()[:, 0]
                accepted = _compose(rows, passed)
                # Steps that succeed at once may grow again; otherwise start where this one succeeded.
                won, old = _take(trial_scale, passed), _take(trust, accepted)
                new_trust = torch.where(won >= old, (2 * won).clamp(max=1.0), won)
                if accepted is None:
                    trust.copy_(new_trust)
                else:
                    trust[accepted] = new_trust
                h = _put(h, accepted, _take(trial, passed))
                expo = _put(expo, accepted, _take(t_expo, passed))
                total = _put(total, accepted, _take(t_total, passed))
                objective = _put(objective, accepted, _take(t_objective, passed))
                if passed is None:
                    break
                failed = (~ok).nonzero()[:, 0]
                if len(failed) == 0:
                    break
                trying = _compose(trying, failed)
                scale[trying] *= 0.5
        plans = expo.mul_(p[:, None, :] / total)
        return plans, h * (self.epsilon / LOG2E), error

    @staticmethod
    def structure_update(solution: Plans) -> torch.Tensor:
        """The square-loss barycenter update (POT's `update_square_loss`, uniform weights λ and q):
        C̄ = mean_s T_s C_s T_sᵀ / (q qᵀ), from each member's plan and its product C T."""
        m = solution.plans.shape[1]
        total = torch.zeros(m, m, dtype=torch.float64)
        for start in range(0, len(solution.plans), 256):
            part = slice(start, start + 256)
            total += torch.bmm(solution.plans[part], solution.products[part].transpose(1, 2)).double().sum(dim=0)
        structure = total / len(solution.plans) * (m * m)
        return (structure + structure.T) / 2

    def barycenter(self, members: torch.Tensor, start: torch.Tensor, warm: Optional[Plans] = None, *,
                   max_updates: int = 30, tol: float = 1e-4, inner_steps: int = 1,
                   fresh_updates: int = 0) -> Tuple[torch.Tensor, Plans, int]:
        """Entropic GW barycenter (uniform weights) of the member clouds, from structure `start`.

        Block coordinate descent on Σ_s GW_ε(C̄, C_s): `inner_steps` warm-started mirror steps for
        every member's plan, then the closed-form structure update, until the structure's relative
        change falls below `tol`. POT solves every member's plan afresh from p qᵀ between
        updates; the fixed point is the same, reached with far fewer mirror steps (one step per update
        took 36 % fewer on class 5 than two, for the same k-means result). From a random
        start, warm-started plans get stuck in poor local optima, so the first `fresh_updates`
        updates solve every plan from p qᵀ with POT's inner stopping rule. Returns the structure, the
        members' plans (against the structure before the last update: warm starts for the next
        solve) and the number of updates.
        """
        members = torch.as_tensor(members, dtype=torch.long)
        if len(members) == 0:
            raise ConfigError("a barycenter needs at least one member cloud")
        structure = start.double()
        plans = warm
        updates = 0
        for updates in range(1, max_updates + 1):
            fresh = updates <= fresh_updates
            if fresh:  # as POT's entropic_gromov_barycenters: at most max_updates steps, absolute tolerance 1e-4
                plans = self.solve(members, structure.expand(len(members), -1, -1), max_outer=max_updates,
                                   absolute_tol=POT_BARYCENTER_PLAN_TOL)
            else:  # the caller's warm start is read, never overwritten; C T is made exact after the loop
                plans = self.solve(members, structure.expand(len(members), -1, -1), warm=plans, max_outer=inner_steps,
                                   out=plans if plans is not warm else None, exact_last=False)
            new = self.structure_update(plans)
            change = float((new - structure).norm() / structure.norm().clamp(min=1e-12))
            structure = new
            if change < tol:
                break
        if not self.direct_products:
            self.refresh_products(plans, members)
        return structure, plans, updates

    def refresh_products(self, plans: Plans, cloud: torch.Tensor) -> None:
        """Recompute every pair's C T exactly, in place (after cheap updates)."""
        for start in range(0, len(cloud), self.chunk):
            part = slice(start, start + self.chunk)
            plans.products[part] = self.cloud_product(plans.plans[part], cloud[part])


def _objective(loss: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """⟨L(T), T⟩ per pair, as float64. A float32 dot product (pairwise summation, error about
    1e-7 of Σ|L T|) is five times faster than accumulating in float64 and below the rounding
    that L itself carries in float32."""
    return torch.linalg.vecdot(loss.flatten(1), plans.flatten(1)).double()


def _take(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """x's rows at `index`; None stands for all rows, and costs no copy."""
    return x if index is None else x[index]


def _put(x: torch.Tensor, index: Optional[torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    """x with its rows at `index` replaced by `value`; for None, `value` itself."""
    if index is None:
        return value
    x[index] = value
    return x


def _compose(outer: Optional[torch.Tensor], inner: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Positions `inner` of the subset `outer`, as positions in the whole (None: everything)."""
    if inner is None:
        return outer
    return inner if outer is None else outer[inner]


def pool_heatmaps(heatmaps: torch.Tensor, pool: int) -> torch.Tensor:
    """Relevance summed over pool×pool blocks (relevance is additive): a coarser grid."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or heatmaps.shape[-1] % pool:
        raise ConfigError(f"pool must be a whole number dividing {heatmaps.shape[-1]}, got {pool!r}")
    if pool == 1:
        return heatmaps
    return torch.nn.functional.avg_pool2d(heatmaps.double()[:, None], pool)[:, 0] * (pool * pool)


def pairwise_gw(heatmaps: torch.Tensor, threshold: float = 0.99, epsilon: float = 5e-4, pool: int = 4,
                progress=None) -> torch.Tensor:
    """Entropic GW between every pair of heatmap clouds (n, n), symmetric with a zero diagonal.

    Clouds of the full 32×32 grid have about 1,000 points, so a cloud-to-cloud plan costs a
    million entries: `pool` sums the heatmaps over pool×pool blocks first (4: an 8×8 grid of
    at most 64 points). Each pair (i < j) is solved once, cloud j as the target with its
    own weights, all pairs in one batch of the grid solver.
    """
    from .progress import report

    pooled = pool_heatmaps(heatmaps, pool)
    clouds = GridClouds.from_heatmaps(pooled, threshold)
    n = len(clouds)
    if n < 2:
        raise ConfigError(f"pairwise GW needs at least 2 heatmaps, got {n}")
    structures = [clouds.structure(i) for i in range(n)]
    m = max(len(w) for _, w in structures)
    targets = torch.zeros(n, m, m, dtype=torch.float64)
    weights = torch.zeros(n, m, dtype=torch.float64)
    for j, (c, w) in enumerate(structures):
        targets[j, : len(w), : len(w)] = c
        weights[j, : len(w)] = w
    first, second = torch.triu_indices(n, n, offset=1)
    solver = GridGW(clouds, epsilon, chunk=max(64, (1 << 20) // (m * clouds.size ** 2)))
    values = torch.empty(len(first), dtype=torch.float64)
    block = 4096
    for start in range(0, len(first), block):
        part = slice(start, start + block)
        values[part] = solver.solve(first[part], targets[second[part]], weights=weights[second[part]]).values
        report(progress, "pairwise GW", min(start + block, len(first)), len(first), f"{min(start + block, len(first)):,} of {len(first):,} pairs")
    distances = torch.zeros(n, n, dtype=torch.float64)
    distances[first, second] = values.clamp(min=0.0)
    distances[second, first] = values.clamp(min=0.0)
    return distances
