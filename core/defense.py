"""Barycentric defense (Subramanyam and Raj, "Barycentric defense", ICIP 2022, Algorithm 1).

An input x is replaced by the entropic Wasserstein barycenter of copies of itself, pulled
towards x (the paper's equation (1)):

    p* = argmin_p  Σ_k β_k W_γ(p, q_k) + θ/2 ‖x̂ − p‖²,   q_k = A_k x̂,  β_k = 1/N,

with A_k the identity, small rotations and a translation ("B6": 0°, ±2°, ±3°, 3 px; "B4":
0°, ±2°, 3 px). It is solved in the dual (Cuturi and Peyré 2016, section 5) by proximal
gradient descent with step τ, u_N eliminated through v + Σ_k β_k u_k = 0:

    u_N = −v/β_N − Σ_{k<N} (β_k/β_N) u_k,
    G_k = ∇H*_{q_k}(u_k) = α_k ⊙ K(q_k ⊘ K α_k),   α_k = exp(u_k/γ),
    u_k ← u_k − τ β_k (G_k − G_N)   (k < N),
    v   ← (v + τ G_N − τ x̂) / (1 + τ/θ)   (the prox of τJ*, J*(v) = vᵀx̂ + ‖v‖²/(2θ)),
    p   = Σ_k β_k G_k.

The paper prints J* and its prox with a wrong sign and γ for θ; the form above is the
convex conjugate of its J. Choices where the paper is silent (all visible in DefenseConfig):

- Cost: the local 7×7 l1 cost |di| + |dj|, in units of the image side (pixel offsets / 32).
  In pixel units with γ = 0.02 the off-centre kernel entries would be e^−50 and below: the
  kernel would be the identity and the "barycenter" a pixelwise mix of the copies.
- Each colour channel is a probability vector (divided by its mass); the barycenter is
  scaled back to the input channel's mass and clipped to [0, 1]. A channel without mass
  stays 0.
- The Gibbs kernel factorises, exp(−(|di| + |dj|)/γ') = exp(−|di|/γ')·exp(−|dj|/γ'), so K X
  is B X B with one banded 32×32 matrix B: two small matrix products per channel.
- All potentials start at 1 as in the paper; each α_k is divided by its largest entry (G_k
  does not change when u_k moves by a constant). The default precision is float32, ten times
  faster here than float64: within one map, u/γ spreads over about 30 at 300 iterations and
  70 at 1,000, inside float32's range; arguments below −80 are clamped (pixels without
  mass), and float64 is an option.
- Iterations: a fixed 300, optionally stopped early for each image once its barycenter
  moves by less than `tol` (relative) in an iteration. At θ = 1e5 the converged barycenter
  is essentially the input, so the count sets the defense's strength: on 200 test images
  and the poisoned model, 50 to 300 iterations give the same accuracy on clean, CW and
  DeepFool images within 1.5 points, while 2,000 (the authors' code) let the barycenter
  drift back towards the attacked input (CW: 91.5 % at 300, 57.5 % at 2,000). An early stop
  at tol = 1e-4 changed at most 1 % of predictions there (`bench/defense.py` measures it).
- Rotations turn about the image centre with bilinear interpolation; the translation moves
  the image 3 px right and 3 px down (as the authors' code does) and is the marginal
  eliminated as q_N. Pixels that come in from outside repeat the border (the authors' code
  fills zeros): a uniform image then stays uniform, and no copy loses mass at its corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .params import NAME, REAL, WHOLE, check_declared, parameter
from .validation import whole_number
from .spatial import affine

MARGINAL_SETS = {"B6": (2.0, -2.0, 3.0, -3.0), "B4": (2.0, -2.0)}


@dataclass(frozen=True)
class DefenseConfig:
    """The paper's settings: B6, γ = 0.02, θ = 1e5, τ = 0.2, local 7×7 l1 cost."""

    marginals: str = parameter("B6", NAME, "--marginals", label="marginal set", help="marginal set of the defense",
                               choices=tuple(MARGINAL_SETS))
    gamma: float = parameter(0.02, REAL, "--defense-gamma", label="γ", help="entropic regularisation γ of the barycenter",
                             low=1e-4, high=100.0)
    theta: float = parameter(1e5, REAL, "--theta", label="θ", help="weight θ of the pull towards the input", low=1e-6, high=1e12)
    tau: float = parameter(0.2, REAL, "--tau", label="τ", help="step τ of the proximal gradient", low=1e-6, high=100.0)
    window: int = 7
    iterations: int = parameter(300, WHOLE, "--iterations", label="iterations", help="iterations of Algorithm 1", low=1, high=100_000)
    tol: float = parameter(0.0, REAL, "--tol", label="tolerance",
                           help="stop an image early once its barycenter moves less than this per iteration (0: never)",
                           low=0.0, high=1.0, open_high=True)
    shift: int = 3
    cost_unit: float = parameter(1.0 / 32, REAL, "--cost-unit", label="cost of one pixel step",
                                 help="cost of a one-pixel step (1/32: offsets in units of the image side)", low=1e-4, high=100.0)
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_declared(self)
        for name, low, high in (("window", 1, 15), ("shift", 0, 8)):
            whole_number(name, getattr(self, name), low, high)
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"precision must be 'float32' or 'float64', got {self.precision!r}")
        if self.window % 2 == 0:
            raise ConfigError(f"window must be odd (a centred stencil), got {self.window}")

    @property
    def angles(self) -> Tuple[float, ...]:
        return MARGINAL_SETS[self.marginals]


def banded_kernel(size: int, window: int, gamma: float, cost_unit: float) -> torch.Tensor:
    """B[i, j] = exp(−|i − j|·cost_unit/γ) for |i − j| ≤ window // 2, else 0 (float64)."""
    offset = torch.arange(size)[:, None] - torch.arange(size)[None, :]
    band = offset.abs() <= window // 2
    return torch.where(band, torch.exp(-offset.abs().double() * cost_unit / gamma), torch.zeros((), dtype=torch.float64))


class BandedKernel:
    """K X for the local l1 cost as B X B: exact, since the 7×7 Gibbs kernel is separable."""

    def __init__(self, size: int, config: DefenseConfig) -> None:
        self.band = banded_kernel(size, config.window, config.gamma, config.cost_unit)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        band = self.band.to(device=x.device, dtype=x.dtype)
        return torch.matmul(torch.matmul(band, x), band)


class UnfoldKernel:
    """K X as a local convolution over unfolded 7×7 patches, the way published code applies
    the kernel: the reference for tests and the benchmark."""

    def __init__(self, size: int, config: DefenseConfig) -> None:
        r = config.window // 2
        offset = torch.arange(-r, r + 1).double().abs()
        self.weights = torch.exp(-(offset[:, None] + offset[None, :]) * config.cost_unit / config.gamma).flatten()
        self.window = config.window

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, 1, shape[-2], shape[-1])
        patches = F.unfold(flat, self.window, padding=self.window // 2)  # (M, 49, H·W)
        return (patches * self.weights.to(device=x.device, dtype=x.dtype)[None, :, None]).sum(dim=1).reshape(shape)


def _rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation about the image centre (clockwise as displayed for positive angles), bilinear,
    border repeated; differentiable, so attacks can go through the defense."""
    return affine(images, degrees=degrees)


def _translate(images: torch.Tensor, shift: int) -> torch.Tensor:
    """Move the image `shift` pixels right and down, border repeated."""
    if shift == 0:
        return images
    return F.pad(images, (shift, 0, shift, 0), mode="replicate")[..., : images.shape[-2], : images.shape[-1]]


def marginal_images(images: torch.Tensor, config: DefenseConfig) -> torch.Tensor:
    """(B, N, C, H, W): the image, its rotations and its translation (last), in [0, 1]."""
    copies = [images] + [_rotate(images, a) for a in config.angles] + [_translate(images, config.shift)]
    return torch.stack(copies, dim=1).clamp(0.0, 1.0)


def check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError("images must be a (B, C, H, W) tensor with 1 or 3 channels")
    if images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"images must be square, got {tuple(images.shape[-2:])}")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ConfigError("images must hold finite values in [0, 1]")
    return images


def regularized_barycenter(marginals: torch.Tensor, target: torch.Tensor, config: DefenseConfig,
                           kernel: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Tuple[torch.Tensor, int]:
    """Algorithm 1 on probability vectors: marginals (B, N, C, H, W) and the regularisation
    target x̂ (B, C, H, W), each (image, channel) summing to 1. Returns p (B, C, H, W), each
    channel summing to 1, and the number of iterations run."""
    dtype = torch.float32 if config.precision == "float32" else torch.float64
    q = marginals.to(dtype)
    x_hat = target.to(dtype)
    floor = -80.0 if dtype == torch.float32 else -700.0
    tiny = torch.finfo(dtype).tiny
    count = q.shape[1]
    apply = kernel if kernel is not None else BandedKernel(q.shape[-1], config)
    gamma, tau, theta = config.gamma, config.tau, config.theta
    u = torch.ones_like(q[:, :-1])
    v = torch.ones_like(x_hat)

    def gradients(q_: torch.Tensor, u_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
        u_last = -count * v_ - u_.sum(dim=1)  # −v/β_N − Σ β_k/β_N u_k with β = 1/N
        potentials = torch.cat([u_, u_last[:, None]], dim=1)
        top = potentials.flatten(-2).amax(dim=-1)[..., None, None]
        alpha = torch.exp(((potentials - top) / gamma).clamp(min=floor))
        return alpha * apply(q_ / apply(alpha).clamp(min=tiny))

    if config.tol == 0:
        for _ in range(config.iterations):
            g = gradients(q, u, v)
            u = u - (tau / count) * (g[:, :-1] - g[:, -1:])
            v = (v + tau * g[:, -1] - tau * x_hat) / (1.0 + tau / theta)
        return gradients(q, u, v).mean(dim=1), config.iterations

    # Early stop per image: an image leaves the batch once its barycenter moved by less than
    # `tol` (relative) in one iteration; the others go on.
    result = torch.zeros_like(x_hat)
    active = torch.arange(len(x_hat), device=x_hat.device)
    last = None
    done = 0
    for done in range(1, config.iterations + 1):
        g = gradients(q, u, v)
        p = g.mean(dim=1)
        if last is not None:
            moved = (p - last).flatten(1).norm(dim=1) / p.flatten(1).norm(dim=1).clamp(min=tiny)
            settled = moved < config.tol
            if bool(settled.any()):
                result = result.index_put((active[settled],), p[settled])
                keep = ~settled
                active, q, u, v, x_hat, g, p = (t[keep] for t in (active, q, u, v, x_hat, g, p))
                if len(active) == 0:
                    return result, done
        last = p
        u = u - (tau / count) * (g[:, :-1] - g[:, -1:])
        v = (v + tau * g[:, -1] - tau * x_hat) / (1.0 + tau / theta)
    return result.index_put((active,), gradients(q, u, v).mean(dim=1)), done


def _as_distributions(images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each channel divided by its mass (a channel without mass becomes uniform); the masses."""
    mass = images.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(images, 1.0 / (images.shape[-1] * images.shape[-2]))
    return torch.where(mass > 0, images / mass.clamp(min=1e-30), uniform), mass


def purify(images: torch.Tensor, config: DefenseConfig = DefenseConfig(),
           kernel: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """The defense: barycenters of the images' own transformed copies, as float32 images in
    [0, 1] with each channel's mass of the input. Differentiable in `images`. Computed on
    `compute_device()`, returned where `images` are."""
    from .device import compute_device

    images = check_images(images)
    home = images.device
    images = images.to(compute_device())
    copies = marginal_images(images.double(), config)
    q, _ = _as_distributions(copies)
    x_hat, mass = _as_distributions(images.double())
    p, _ = regularized_barycenter(q, x_hat, config, kernel)
    return (p.double() * mass).clamp(0.0, 1.0).float().to(home)
