"""The compiled kernel of `core.semidual` (numba, float32; imported on first use, cached on disk).

Exponentials and logarithms are written so that the compiler can vectorise them: 2^x from a
polynomial of the fractional bits times the whole bits placed in the exponent field, log2 from
the exponent field plus atanh's series of the mantissa.
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# 2^f on [0, 1): least-squares fit of degree 6, relative error below 2e-8 (float32's own rounding is 6e-8).
_EXP2 = tuple(np.float32(c) for c in np.polynomial.polynomial.polyfit(
    np.linspace(0.0, 1.0, 4001), np.exp2(np.linspace(0.0, 1.0, 4001)), 6))


@intrinsic
def float_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def bits_from_float(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


c0, c1, c2, c3, c4, c5, c6 = _EXP2
inv_ln2 = np.float32(1.0 / math.log(2.0))
one, two, zero = np.float32(1.0), np.float32(2.0), np.float32(0.0)
third, fifth, seventh, ninth, eleventh = (np.float32(1.0 / k) for k in (3, 5, 7, 9, 11))


@numba.njit(inline="always", fastmath=True, cache=True)
def exp2(x):
    """2^x for x in [-126, 0]: split into whole and fractional bits."""
    whole = np.floor(x)
    f = x - whole
    poly = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
    return poly * float_from_bits(np.int32((np.int32(whole) + 127) << 23))


@numba.njit(inline="always", fastmath=True, cache=True)
def log2(x):
    """log2 x for normal positive x: the exponent bits plus log2 of the mantissa by atanh's series."""
    bits = bits_from_float(x)
    exponent = np.float32((bits >> 23) - 127)
    mantissa = float_from_bits(np.int32((bits & 0x007FFFFF) | 0x3F800000))
    s = (mantissa - one) / (mantissa + one)
    s2 = s * s
    series = s * (one + s2 * (third + s2 * (fifth + s2 * (seventh + s2 * (ninth + s2 * eleventh)))))
    return exponent + two * inv_ln2 * series


@numba.njit(fastmath=True, cache=True)
def evaluate(h, cost, p, q, expo, total, top, floor_bits, keep_floor):
    """expo = 2^(h − K − top) per column, total its column sums; returns Φ(h) in bits."""
    m, n = cost.shape
    for a in range(n):
        top[a] = h[0] - cost[0, a]
    for j in range(1, m):
        hj = h[j]
        for a in range(n):
            top[a] = max(top[a], hj - cost[j, a])
    for a in range(n):
        total[a] = zero
    for j in range(m):
        hj = h[j]
        for a in range(n):
            d = hj - cost[j, a] - top[a]
            e = exp2(max(d, floor_bits)) if d > floor_bits or keep_floor else zero  # floor_bits ≥ -126: normal
            expo[j, a] = e
            total[a] += e
    objective = 0.0
    for j in range(m):
        objective += h[j] * q[j]
    tail = 0.0
    for a in range(n):
        tail += p[a] * (log2(total[a]) + top[a])
    return np.float32(objective - tail)


@numba.njit(fastmath=True, cache=True)
def _marginals(expo, total, p, ratio, marginal):
    m, n = expo.shape
    for a in range(n):
        ratio[a] = p[a] / total[a]
    for j in range(m):
        acc = zero
        for a in range(n):
            acc += expo[j, a] * ratio[a]
        marginal[j] = acc


@numba.njit(fastmath=True, cache=True)
def _hessian(expo, total, ratio, marginal, ridge, hessian):
    """diag(marginal) − Σ_a (p_a / s_a²) e_a e_aᵀ + 11ᵀ/m + ridge·I (the 11ᵀ/m fixes the constant shift)."""
    m, n = expo.shape
    weight = np.empty(n, dtype=np.float32)
    for a in range(n):
        weight[a] = ratio[a] / total[a]
    for j in range(m):
        for k in range(j + 1):
            acc = zero
            for a in range(n):
                acc += expo[j, a] * expo[k, a] * weight[a]
            value = -np.float64(acc) + 1.0 / m
            hessian[j, k] = value
            hessian[k, j] = value
        hessian[j, j] += np.float64(marginal[j]) + ridge


@numba.njit(cache=True)
def _solve_spd(a, b, out):
    """out = a⁻¹ b for a small symmetric positive definite a, by Cholesky (a is overwritten)."""
    m = a.shape[0]
    for j in range(m):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        d = math.sqrt(max(s, 1e-300))
        a[j, j] = d
        for i in range(j + 1, m):
            s = a[i, j]
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / d
    y = np.empty(m, dtype=np.float64)
    for i in range(m):
        s = np.float64(b[i])
        for k in range(i):
            s -= a[i, k] * y[k]
        y[i] = s / a[i, i]
    for i in range(m - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, m):
            s -= a[k, i] * y[k]
        y[i] = s / a[i, i]
    for i in range(m):
        out[i] = np.float32(y[i])


@numba.njit(parallel=True, cache=True)
def transport(loss, cost_scale, p, q, h, trust, steps, marginal_tol, ridge, slack, max_newton, previous,
              floor_bits, keep_floor, tiny_mass, plans, scratch, error, change, norm):
    """The Newton iterations of `SemiDualTransport.solve_with_tensors` for each pair, from the
    linearised loss: the cost is loss × `cost_scale` (in bits), 1e30 on padding rows (q = 0). Also
    returns each plan's distance from `previous` and its norm (Frobenius). Softmax terms at or below
    `floor_bits` are 0 (2^floor_bits with `keep_floor`) and plan entries below `tiny_mass` are 0
    (see `core.semidual.FLOOR_BITS`)."""
    count, m, n = loss.shape
    for i in numba.prange(count):
        cost = np.empty((m, n), dtype=np.float32)
        for j in range(m):
            if q[i, j] <= zero:
                cost[j, :] = np.float32(1e30)
            else:
                for a in range(n):
                    cost[j, a] = loss[i, j, a] * cost_scale
        top = np.empty(n, dtype=np.float32)
        total = np.empty(n, dtype=np.float32)
        t_total = np.empty(n, dtype=np.float32)
        ratio = np.empty(n, dtype=np.float32)
        hi = h[i].copy()
        expo, t_expo = plans[i], scratch[i]
        in_scratch = False
        objective = evaluate(hi, cost, p[i], q[i], expo, total, top, floor_bits, keep_floor)
        marginal = np.empty(m, dtype=np.float32)
        gradient = np.empty(m, dtype=np.float32)
        hessian = np.empty((m, m), dtype=np.float64)
        step = np.empty(m, dtype=np.float32)
        trial = np.empty(m, dtype=np.float32)
        residual = np.float32(0.0)
        for taken in range(max_newton + 1):
            _marginals(expo, total, p[i], ratio, marginal)
            residual = np.float32(0.0)
            for j in range(m):
                gradient[j] = q[i, j] - marginal[j]
                residual = max(residual, abs(gradient[j]))
            unfinished = residual > marginal_tol and (taken < steps or residual > np.float32(1e-3))
            if taken == max_newton or not unfinished:
                break
            _hessian(expo, total, ratio, marginal, ridge, hessian)
            _solve_spd(hessian, gradient, step)
            slope = np.float32(0.0)
            for j in range(m):
                step[j] *= inv_ln2  # the Newton step of h in nats, in bits
                slope += gradient[j] * step[j]
            scale = trust[i]
            for _halving in range(30):
                for j in range(m):
                    trial[j] = hi[j] + scale * step[j]
                t_objective = evaluate(trial, cost, p[i], q[i], t_expo, t_total, top, floor_bits, keep_floor)
                if t_objective >= objective + np.float32(1e-4) * scale * slope - slack * abs(objective):
                    # Steps that succeed at once may grow again; otherwise start where this one succeeded.
                    trust[i] = min(two * scale, one) if scale >= trust[i] else scale
                    hi[:] = trial
                    expo, t_expo = t_expo, expo
                    total, t_total = t_total, total
                    in_scratch = not in_scratch
                    objective = t_objective
                    break
                scale *= np.float32(0.5)
        error[i] = residual
        for a in range(n):
            ratio[a] = p[i, a] / total[a]
        moved, size = 0.0, 0.0
        for j in range(m):
            row_moved, row_size = zero, zero
            for a in range(n):
                value = expo[j, a] * ratio[a]
                if value < tiny_mass:
                    value = zero
                expo[j, a] = value
                delta = value - previous[i, j, a]
                row_moved += delta * delta
                row_size += value * value
            moved += row_moved
            size += row_size
        change[i] = math.sqrt(moved)
        norm[i] = math.sqrt(size)
        if in_scratch:
            plans[i, :, :] = expo
        h[i, :] = hi


@numba.njit(parallel=True, fastmath=True, cache=True)
def loss_and_value(products, cloud_term, bary, q, plans, loss, value):
    """L(T) = C² p 1ᵀ + 1 qᵀ C̄² − 2 C̄ (C T) (barycenter rows, grid columns) and ⟨L(T), T⟩ per pair."""
    count, m, n = products.shape
    for i in numba.prange(count):
        total = 0.0
        for j in range(m):
            bary_term = zero
            for k in range(m):
                bary_term += bary[i, j, k] * bary[i, j, k] * q[i, k]
            row = loss[i, j]
            for a in range(n):
                row[a] = cloud_term[i, a] + bary_term
            for k in range(m):
                weight = -two * bary[i, j, k]
                for a in range(n):
                    row[a] += weight * products[i, k, a]
            partial = zero
            for a in range(n):
                partial += row[a] * plans[i, j, a]
            total += partial
        value[i] = total
