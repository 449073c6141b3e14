"""Entropic Gromov–Wasserstein between heatmap point clouds, batched over a whole class.

Thesis section 6.5 (after Peyré, Cuturi and Solomon 2016): for structure matrices C (n×n,
the cloud) and C̄ (m×m, a barycenter) with weights p and q, the square-loss GW objective is
E(T) = Σ (C_ik − C̄_jl)² T_ij T_kl, and entropic GW minimises E(T) − ε H(T) over couplings
of p and q by mirror descent with step 1/ε (thesis proposition 6.5.37; POT's
`entropic_gromov_wasserstein`, solver "PGD"):

    T ← argmin_{T ∈ Π(p, q)} ⟨2 L(T), T⟩ − ε H(T),   L(T) = C² p 1ᵀ + 1 qᵀ C̄² − 2 C T C̄,

and GW is E(T) = ⟨L(T), T⟩ at the end. The parts: the clouds, their shared grid and the
products C T (`core.grid_clouds`); the inner transport problem of each mirror step, solved in
its semi-dual (`core.gw_transport`); the mirror descent, here; barycenters
(`core.gw_barycenter`). What makes the mirror descent fast here:

- Pairs that have converged leave the batch; at small ε a pair also stops once its objective
  has settled, while the boundaries of its plan may still creep.
- In float32 the transport and the linearised loss run as fused kernels (`core.semidual`):
  each pair's m × N block is worked on while it is in the core's cache, where the same steps
  as tensor operations make some twenty passes through memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import semidual
from .errors import ConfigError
from .validation import real_number
from .grid_clouds import CloudProducts, GridClouds, change_product_path
from .gw_transport import SemiDualTransport


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
    """Entropic GW between the clouds of a GridClouds and small barycenters, in batches of pairs:
    the mirror descent, with each step's transport problem solved by `transport` and C T carried
    by `products`.

    `outer_tol` stops a pair's mirror descent when the Frobenius change of its plan, relative
    to the plan's norm, falls below it (POT's criterion, made relative), or when the change is
    below 30 × `outer_tol` and the objective moved by less than `value_tol` (relative) in the
    step; `marginal_tol` bounds the barycenter-side marginal error of each inner transport
    problem. Steps that change a plan by less than `cheap_change` (relative) update C T by a
    cheap product of the change (`arithmetic`: 'bfloat16' or 'float32', see `core.grid_clouds`;
    default: the faster on this CPU); on the bfloat16 path every pair's last step uses the exact
    product, on the float32 path every product is the separable one. In float64 both shortcuts
    are off, for reference results.
    """

    def __init__(self, clouds: GridClouds, epsilon: float, *, dtype: torch.dtype = torch.float32,
                 outer_tol: Optional[float] = None, max_outer: int = 500, marginal_tol: Optional[float] = None,
                 newton_steps: int = 1, chunk: int = 128, cheap_change: Optional[float] = None,
                 value_tol: Optional[float] = None, arithmetic: Optional[str] = None) -> None:
        real_number("epsilon", epsilon, 0.0, None, open_low=True)
        self.clouds = clouds
        self.epsilon = float(epsilon)
        self.dtype = dtype
        self.max_outer = max_outer
        single = dtype == torch.float32
        self.transport = SemiDualTransport(self.epsilon, dtype, marginal_tol=marginal_tol, newton_steps=newton_steps)
        self.outer_tol = outer_tol if outer_tol is not None else (3e-4 if single else 1e-8)
        self.value_tol = value_tol if value_tol is not None else (1e-5 if single else 0.0)
        self.chunk = chunk
        if arithmetic is not None and arithmetic not in ("bfloat16", "float32"):
            raise ConfigError(f"arithmetic must be 'bfloat16' or 'float32', got {arithmetic!r}")
        arithmetic = arithmetic if arithmetic is not None else (change_product_path(clouds.size) if single else "float32")
        self.products = CloudProducts(clouds, dtype, arithmetic)
        # Plans that change by less than this (relative) update C T by the cheap product; float64 stays exact.
        # The separable product's error (2e-6 of C ΔT) is small enough for steps of any size; bfloat16's is not.
        default_cheap = (math.inf if arithmetic == "float32" else 1e-1) if single else 0.0
        self.cheap_change = cheap_change if cheap_change is not None else default_cheap
        self.cloud_term = clouds.mean_square_distances().to(dtype)  # C² p
        self.weights = clouds.weights.to(dtype)

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
            products[part] = self.products.carried(plans[part], cloud[part])
        potentials = plan.potentials[:1].to(self.dtype).expand(count, -1).clone()
        values = torch.zeros(count, dtype=torch.float64)
        return Plans(plans, products, potentials, values, torch.zeros(count, dtype=torch.long))

    def exact_product(self, plans: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        """C T for each pair by the dense product, whichever way the solver carries it: what the
        products it returns are checked against."""
        return self.products.exact(plans, cloud)

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
            products = self.products.carried(cloud_weights[:, None, :], cloud) * q[:, :, None]  # C p qᵀ
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
            new_plans, new_potentials, error, absolute_change, new_norm = self.transport.solve(
                s["loss"], s["cloud_weights"], s["q"], s["potentials"], s["trust"], s["padding"], s["plans"])
            change = absolute_change / new_norm
            if self.products.direct:
                new_products = self.products.carried(new_plans, c)
            else:  # steps that change a plan by less than `cheap_change` update C T by the cheap product
                new_products = self.products.updated(s["products"], new_plans - s["plans"], new_plans, c, change < self.cheap_change)
            new_loss, new_value = self._loss_and_value(new_products, s["cloud_term"], s["bary"], s["q"], new_plans)  # new_loss: the next step's cost
            # POT stops on the plan's change alone. At small ε the plans of clouds keep creeping at
            # their boundaries long after the objective has settled, so a pair also stops once its
            # change is small and this step moved its objective by less than `value_tol` (relative).
            settled = (change <= self.outer_tol) | ((change <= 30 * self.outer_tol) & ((new_value - s["value"]).abs() <= self.value_tol * new_value))
            if absolute_tol is not None:
                settled = absolute_change <= absolute_tol
            going = ~settled | (error > self.transport.marginal_tol)
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
            exact = exact_last and not self.products.direct
            products[into] = self.products.carried(new_plans[done], c[done]) if exact else new_products[done]
            if len(done) == len(going):
                break
            keep = going.nonzero()[:, 0]
            where = keep if where is None else where[keep]
            state = {k: v[keep] for k, v in s.items()}
        if limit == 0 or (exact_last and not self.products.direct):  # the values of the exact products
            values = self._loss_and_value(products, cloud_term, bary, q, plans)[1]
        return Plans(plans, products, potentials, values, iterations)

    def refresh_products(self, plans: Plans, cloud: torch.Tensor) -> None:
        """Recompute every pair's C T exactly, in place (after cheap updates)."""
        for start in range(0, len(cloud), self.chunk):
            part = slice(start, start + self.chunk)
            plans.products[part] = self.products.carried(plans.plans[part], cloud[part])


def _objective(loss: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """⟨L(T), T⟩ per pair, as float64. A float32 dot product (pairwise summation, error about
    1e-7 of Σ|L T|) is five times faster than accumulating in float64 and below the rounding
    that L itself carries in float32."""
    return torch.linalg.vecdot(loss.flatten(1), plans.flatten(1)).double()


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
