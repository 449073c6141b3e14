"""Entropic GW barycenters of grid clouds (thesis section 6.5): the centres of GW k-means
(`core.gw_kmeans`), by block coordinate descent over the plans of a GW solver (`core.gromov`)
and the closed-form structure update.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .errors import ConfigError
from .gromov import GridGW, Plans

# POT's entropic_gromov_barycenters solves each member's plan with its own max_iter and a fixed
# absolute tolerance of 1e-4 on the plan's change; fresh barycenter updates do the same.
POT_BARYCENTER_PLAN_TOL = 1e-4


def random_structure(size: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """A barycenter's starting structure, as POT draws it: distances between `size` standard
    normal points in the plane, divided by the largest."""
    import numpy as np

    xy = np.random.default_rng(seed).standard_normal((size, 2))
    d = torch.cdist(torch.from_numpy(xy), torch.from_numpy(xy))
    return (d / d.max()).to(dtype)


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


def gw_barycenter(solver: GridGW, members: torch.Tensor, start: torch.Tensor, warm: Optional[Plans] = None, *,
                  max_updates: int = 30, tol: float = 1e-4, inner_steps: int = 1,
                  fresh_updates: int = 0) -> Tuple[torch.Tensor, Plans, int]:
    """Entropic GW barycenter (uniform weights) of the member clouds of `solver`, from structure `start`.

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
            plans = solver.solve(members, structure.expand(len(members), -1, -1), max_outer=max_updates,
                                 absolute_tol=POT_BARYCENTER_PLAN_TOL)
        else:  # the caller's warm start is read, never overwritten; C T is made exact after the loop
            plans = solver.solve(members, structure.expand(len(members), -1, -1), warm=plans, max_outer=inner_steps,
                                 out=plans if plans is not warm else None, exact_last=False)
        new = structure_update(plans)
        change = float((new - structure).norm() / structure.norm().clamp(min=1e-12))
        structure = new
        if change < tol:
            break
    if not solver.products.direct:
        solver.refresh_products(plans, members)
    return structure, plans, updates
