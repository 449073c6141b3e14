"""Entropic transport from a few barycenter points to a cloud, fused into one pass per pair.

The GW solver's inner problem (see `core.gw_transport`) has m (about 10) source points and a grid
of N (1,024) target points. In its semi-dual the plan is T_ja = p_a softmax_j(h_j − K_ja), and the
m potentials h (in bits) rise by damped Newton steps on the concave objective
Φ(h) = q·h − Σ_a p_a log2 Σ_j 2^(h_j − K_ja). Written as batched tensor operations, a Newton step
with its line search makes some twenty passes over the (pairs, m, N) arrays, and on a 2-core CPU
they run at the speed of memory, not of arithmetic. Here each pair's m × N block is worked on
while it sits in the core's cache: the same algorithm, step for step
(`SemiDualTransport.solve_with_tensors` is the reference it is tested against), compiled by
numba with exponentials and logarithms that the compiler can vectorise (a polynomial and the
float's exponent bits), in float32.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

# No subnormal float may arise: each product that makes or reads one takes a microcode assist, many
# times slower on Intel cores (at ε = 5e-4 two thirds of the plan entries were subnormal, and a
# k-means of class 5 ran 16 times slower, `bench/subnormals.py`). So a softmax term more than 40 bits
# below its column's largest is 0 (a float32 sum loses it anyway, and a product of two such terms
# stays normal), and a plan entry below 2^-64 is 0. Both the kernel and the tensor form
# (`core.gw_transport`) read these at each call; KEEP_FLOOR (terms below the floor count as
# 2^FLOOR_BITS) with FLOOR_BITS = -126 and TINY_MASS = 0 is the solver as it was, for the benchmark.
FLOOR_BITS = -40.0
KEEP_FLOOR = False
TINY_MASS = 2.0 ** -64

_LOCK = threading.Lock()  # numba's default thread pool takes one parallel call at a time


def available() -> bool:
    """numba is installed and POISONLAB_FUSED is not 0."""
    if os.environ.get("POISONLAB_FUSED", "1").strip() == "0":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _run(kernel, *arrays) -> None:
    """One kernel call on as many threads as torch uses, one call at a time."""
    import numba

    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*arrays)


def transport(loss: torch.Tensor, cost_scale: float, p: torch.Tensor, q: torch.Tensor, potentials_bits: torch.Tensor,
              trust: torch.Tensor, steps: int, marginal_tol: float, ridge: float, slack: float, max_newton: int,
              previous: torch.Tensor):
    """`SemiDualTransport.solve_with_tensors` on the cost loss × cost_scale (padding rows, q = 0,
    excluded), in float32: plans (P, m, N), potentials in bits (P, m), each pair's largest marginal
    error, and the Frobenius norms of plans − previous and of the plans. `trust` is updated in place."""
    from ._semidual_kernel import transport as kernel

    count, m, n = loss.shape
    h = potentials_bits.detach().to(torch.float32).contiguous().clone()
    plans = torch.empty(count, m, n, dtype=torch.float32)
    scratch = torch.empty(count, m, n, dtype=torch.float32)
    error, change, norm = (torch.empty(count, dtype=torch.float32) for _ in range(3))
    arrays = [t.detach().contiguous().numpy() for t in (loss, p, q)]
    _run(kernel, arrays[0], np.float32(cost_scale), arrays[1], arrays[2], h.numpy(), trust.numpy(), int(steps),
         np.float32(marginal_tol), float(ridge), np.float32(slack), int(max_newton), previous.detach().contiguous().numpy(),
         np.float32(FLOOR_BITS), bool(KEEP_FLOOR), np.float32(TINY_MASS), plans.numpy(), scratch.numpy(), error.numpy(), change.numpy(), norm.numpy())
    return plans, h, error, change, norm


def loss_and_value(products: torch.Tensor, cloud_term: torch.Tensor, bary: torch.Tensor, q: torch.Tensor,
                   plans: torch.Tensor):
    """The linearised GW loss L(T) (P, m, N) and the objective ⟨L(T), T⟩ (P,) float64, as
    `GridGW.linearised_loss` and its dot product compute them, in one pass per pair."""
    from ._semidual_kernel import loss_and_value as kernel

    count, m, n = products.shape
    loss = torch.empty(count, m, n, dtype=torch.float32)
    value = torch.empty(count, dtype=torch.float64)
    arrays = [t.detach().to(torch.float32).contiguous().numpy() for t in (products, cloud_term, bary, q, plans)]
    _run(kernel, *arrays, loss.numpy(), value.numpy())
    return loss, value
