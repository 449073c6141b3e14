"""The inner problem of the GW mirror descent (`core.gromov`): the entropic transport of one
linearised problem per pair, from a barycenter's weights q to a cloud's weights p.

- The inner entropic transport problem has only m (= 10) target points, so it is solved in
  its semi-dual: the plan is T_aj = p_a softmax_j((g_j − M_aj)/ε) and the m potentials g
  follow from a few damped Newton steps, in the log domain, stable at ε = 5e-4 where POT's
  plain-domain Sinkhorn fails. Potentials and plans are warm-started across mirror steps,
  barycenter updates and k-means iterations.
- Exponentials are base 2 with arguments clamped above the denormal range (several times
  faster on CPUs than natural ones near underflow).
- In float32 the transport runs as a fused kernel (`core.semidual`): each pair's m × N block
  is worked on while it is in the core's cache, where the same steps as tensor operations make
  some twenty passes through memory.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import semidual

LOG2E = 1.0 / math.log(2.0)


class SemiDualTransport:
    """Entropic transport solves for a batch of pairs, as one mirror step of the GW solver needs them.

    `marginal_tol` bounds the barycenter-side marginal error of each solve; `newton_steps` Newton
    steps are taken in each, more only while a marginal is off by more than 1e-3.
    """

    def __init__(self, epsilon: float, dtype: torch.dtype = torch.float32, *, marginal_tol: Optional[float] = None,
                 newton_steps: int = 1) -> None:
        single = dtype == torch.float32
        self.epsilon = epsilon
        self.dtype = dtype
        # float32 resolves potentials of size 2·max(L)/ε ≈ 10³ to about 1e-4, so its marginals to about 1e-5.
        self.marginal_tol = marginal_tol if marginal_tol is not None else (1e-5 if single else 1e-10)
        self.newton_steps = newton_steps
        self.max_newton = 50
        self.ridge = 1e-6 if single else 1e-10
        self.slack = 1e-5 if single else 1e-12

    def solve(self, loss: torch.Tensor, p: torch.Tensor, q: torch.Tensor, potentials: torch.Tensor,
              trust: torch.Tensor, padding: torch.Tensor,
              previous: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One mirror step's transport from the loss L(T) of the plans `previous`: new plans, potentials,
        marginal errors, and the Frobenius norms of the plans' change and of the new plans. In float32 by
        the fused kernel of `core.semidual` (four times faster on 2 cores, bench/gromov.py: each pair's
        block stays in cache), else as tensor operations. `loss` is overwritten; `padding` marks the
        barycenter points of weight zero, which receive no mass."""
        scale = 2.0 * LOG2E / self.epsilon
        if self.dtype == torch.float32 and semidual.available():
            plans, bits, error, change, norm = semidual.transport(
                loss, scale, p, q, potentials * (LOG2E / self.epsilon), trust,
                self.newton_steps, self.marginal_tol, self.ridge, self.slack, self.max_newton, previous)
            return plans, bits.mul_(self.epsilon / LOG2E), error, change, norm
        cost = loss.mul_(scale)  # L(T) of the plans this step starts from
        if bool(padding.any()):
            cost.masked_fill_(padding[:, :, None], 1e30)
        plans, potentials, error = self.solve_with_tensors(cost, p, q, potentials, self.newton_steps, trust)
        return plans, potentials, error, (plans - previous).flatten(1).norm(dim=1), plans.flatten(1).norm(dim=1)

    def solve_with_tensors(self, scaled_cost: torch.Tensor, p: torch.Tensor, q: torch.Tensor, potentials: torch.Tensor,
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
        regulariser = torch.full((m, m), 1.0 / m, dtype=self.dtype) + torch.eye(m, dtype=self.dtype) * self.ridge

        def evaluate(h_: torch.Tensor, k_: torch.Tensor, p_: torch.Tensor, q_: torch.Tensor):
            """2^(h − K − top) (P, m, N), its column sums s (P, 1, N) and Φ(h) in bits."""
            shifted = h_[:, :, None] - k_
            top = shifted.amax(dim=1, keepdim=True)
            shifted = shifted.sub_(top)
            floor = semidual.FLOOR_BITS  # no subnormal floats: see there
            expo = shifted.clamp(min=floor).exp2_()
            if not semidual.KEEP_FLOOR:
                expo.masked_fill_(shifted <= floor, 0.0)
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
                ok = t_objective >= before + 1e-4 * trial_scale * _take(slope, trying) - self.slack * before.abs()
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
        plans.masked_fill_(plans < semidual.TINY_MASS, 0.0)
        return plans, h * (self.epsilon / LOG2E), error


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
