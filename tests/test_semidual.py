"""The fused transport kernel against the tensor implementation it replaces in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import semidual
from core.grid_clouds import GridClouds
from core.gromov import GridGW
from core.gw_barycenter import random_structure
from core.gw_kmeans import GWConfig, gw_kmeans
from core.gw_transport import LOG2E


def grid_solver(count: int = 24, seed: int = 0) -> GridGW:
    """The float32 solver for clouds with a hot spot."""
    generator = torch.Generator().manual_seed(seed)
    heat = torch.rand(count, 32, 32, generator=generator)
    heat[: count // 3, 16:18, 16:18] += 3.0
    clouds = GridClouds.from_heatmaps(heat, 0.99)
    return GridGW(clouds, 5e-4, arithmetic="float32")


def inner_problem(count: int = 24, seed: int = 0, padded: bool = False):
    """Costs of real mirror-descent states: a few steps against a barycenter; the solver's transport first."""
    solver = grid_solver(count, seed)
    cloud = torch.arange(count)
    bary = random_structure(10, seed + 1).float().expand(count, -1, -1)
    q = torch.full((count, 10), 0.1)
    if padded:  # as pairwise GW pads smaller targets: zero weight, cost 1e30
        q[:, 7:] = 0.0
        q = q / q.sum(dim=1, keepdim=True)
    state = solver.solve(cloud, bary.double(), max_outer=3, weights=q.double())
    loss = solver.linearised_loss(state.products, solver.cloud_term[cloud], bary, q)
    return solver.transport, loss.contiguous(), solver.weights[cloud], q, state.potentials, state.plans


def run_both(transport, loss, p, q, potentials, previous, steps):
    """The tensor reference and the kernel on the same problem; the reference's cost as the solver builds it."""
    cost = loss.mul(2 * LOG2E / transport.epsilon).masked_fill_((q <= 0)[:, :, None], 1e30)
    reference_trust, trust = torch.ones(len(loss)), torch.ones(len(loss))
    reference = transport.solve_with_tensors(cost, p, q, potentials.clone(), steps, reference_trust)
    plans, bits, error, change, norm = semidual.transport(
        loss, 2 * LOG2E / transport.epsilon, p, q, potentials * (LOG2E / transport.epsilon), trust, steps,
        transport.marginal_tol, transport.ridge, transport.slack, transport.max_newton, previous)
    torch.testing.assert_close(change.double(), (plans - previous).flatten(1).norm(dim=1).double(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(norm.double(), plans.flatten(1).norm(dim=1).double(), rtol=1e-5, atol=0)
    return reference, (plans, bits * (transport.epsilon / LOG2E), error), trust


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("warm", [True, False])
def test_fused_transport_solves_the_same_problem(warm, padded):
    """Run to the marginal tolerance, both give the same plans: exact cloud-side marginals, the
    barycenter-side marginal within the tolerance, and the same entries to float32's resolution."""
    solver, loss, p, q, potentials, previous = inner_problem(padded=padded)
    start = potentials if warm else torch.zeros_like(potentials)
    (ref_plans, ref_potentials, ref_error), (plans, fused_potentials, error), _ = run_both(solver, loss, p, q, start, previous, 50)
    assert torch.isfinite(plans).all() and (plans >= 0).all()
    torch.testing.assert_close(plans.sum(dim=1), p, rtol=0, atol=1e-7)
    assert float((plans.sum(dim=2) - q).abs().max()) <= solver.marginal_tol
    assert float(error.max()) <= solver.marginal_tol and float(ref_error.max()) <= solver.marginal_tol
    assert float((plans - ref_plans).abs().max()) < 2e-5 * float(ref_plans.abs().max()) + 1e-5
    if padded:
        assert float(plans[:, 7:].sum()) < 1e-12  # padding receives no mass


def test_fused_transport_stops_where_the_reference_stops():
    """One mirror step's worth (`steps` = 1): Newton steps go on only while a marginal is off by more
    than 1e-3, in both; which pairs stop just below that bound depends on rounding, so the errors
    agree in distribution, not pair by pair."""
    solver, loss, p, q, potentials, previous = inner_problem(seed=3)
    (ref_plans, _, ref_error), (plans, _, error), trust = run_both(solver, loss, p, q, potentials, previous, 1)
    assert float(error.max()) <= 1e-3 and float(ref_error.max()) <= 1e-3
    assert 0.5 < float(error.median() / ref_error.median()) < 2.0
    torch.testing.assert_close(plans.sum(dim=1), p, rtol=0, atol=1e-7)
    assert ((trust > 0) & (trust <= 1)).all()


def test_kernel_exponential_and_logarithm_are_accurate():
    """The vectorisable 2^x and log2 x agree with numpy's to float32's resolution."""
    from core import _semidual_kernel as kernel

    import numba

    @numba.njit
    def both(x, y):
        out = np.empty_like(x)
        logs = np.empty_like(y)
        for i in range(len(x)):
            out[i] = kernel.exp2(x[i])
        for i in range(len(y)):
            logs[i] = kernel.log2(y[i])
        return out, logs

    x = np.linspace(-126.0, 0.0, 100_001).astype(np.float32)
    y = np.exp(np.linspace(0.0, np.log(100.0), 100_001)).astype(np.float32)
    powers, logs = both(x, y)
    assert np.abs(powers / np.exp2(x.astype(np.float64)) - 1).max() < 5e-7
    assert np.abs(logs - np.log2(y.astype(np.float64))).max() < 1e-6  # float32's resolution at 6.6 is 4.8e-7


def test_gw_k_means_flags_the_same_samples_with_and_without_the_kernel(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    heat = torch.rand(30, 32, 32, generator=generator) * 0.2
    heat[:10, 16:18, 16:18] += 3.0
    clouds = GridClouds.from_heatmaps(heat, 0.9)
    config = GWConfig(threshold=0.9, max_iter=4)
    results = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("POISONLAB_FUSED", fused)
        monkeypatch.setenv("POISONLAB_ARITHMETIC", "float32")
        results[fused] = gw_kmeans(clouds, config)
    assert (results["1"].flagged == results["0"].flagged).all()
    assert results["1"].flagged[:10].all() and not results["1"].flagged[10:].any()
    np.testing.assert_allclose(results["1"].distances, results["0"].distances, rtol=2e-3)


def test_the_override_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("POISONLAB_FUSED", "0")
    assert not semidual.available()
    monkeypatch.setenv("POISONLAB_FUSED", "1")
    assert semidual.available()


def test_fused_loss_and_objective_match_the_tensor_form():
    solver, q = grid_solver(seed=7), torch.full((24, 10), 0.1)
    cloud = torch.arange(len(q))
    bary = random_structure(10, 9).float().expand(len(q), -1, -1)
    state = solver.solve(cloud, bary.double(), max_outer=2)
    loss, value = semidual.loss_and_value(state.products, solver.cloud_term[cloud], bary, q, state.plans)
    reference = solver.linearised_loss(state.products, solver.cloud_term[cloud], bary, q)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    exact = (reference.double() * state.plans.double()).flatten(1).sum(dim=1)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, exact, rtol=1e-5, atol=0)


def _subnormal(x: torch.Tensor) -> int:
    x = x.float()
    return int(((x != 0) & (x.abs() < torch.finfo(torch.float32).tiny)).sum())


def test_no_subnormal_float_leaves_the_transport_or_the_solver():
    """Subnormal floats make every product that reads them many times slower on Intel cores (a whole
    k-means of class 5 ran 16 times slower): at ε = 5e-4 two thirds of the plan entries were
    subnormal. Both implementations write them as 0, and so the solver's plans and C T have none."""
    solver, loss, p, q, potentials, previous = inner_problem()
    (ref_plans, _, _), (plans, _, _), _ = run_both(solver, loss, p, q, potentials, previous, 50)
    assert (plans.abs() < torch.finfo(torch.float32).tiny).float().mean() > 0.5  # the case has the tiny entries in question
    assert _subnormal(ref_plans) == 0 and _subnormal(plans) == 0
    gw = grid_solver()
    count = len(gw.clouds)
    state = gw.solve(torch.arange(count), random_structure(10, 3).expand(count, -1, -1))
    assert _subnormal(state.plans) == 0 and _subnormal(state.products) == 0
