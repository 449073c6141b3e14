"""The barycentric defense (Algorithm 1) on real GTSRB images: the separable kernel against
the unfold-based local convolution, mass, range, the limits it must reach, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.defense import (BandedKernel, DefenseConfig, UnfoldKernel, _as_distributions, banded_kernel,
                          marginal_images, purify, regularized_barycenter)
from core.errors import ConfigError


@pytest.fixture(scope="module")
def images(gtsrb):
    x = gtsrb.test.images[:4].float()
    return x / 255 if x.max() > 1 else x


def test_kernel_is_not_numerically_the_identity_at_the_defaults():
    config = DefenseConfig()
    band = banded_kernel(32, config.window, config.gamma, config.cost_unit)
    assert band[5, 6] > 0.1 and band[5, 8] > 1e-3 and band[5, 9] == 0  # 7×7 window: offsets up to 3
    in_pixels = banded_kernel(32, config.window, config.gamma, 1.0)
    assert in_pixels[5, 6] < 1e-20, "with the cost in pixel units the kernel would be the identity"


def test_banded_kernel_equals_the_unfold_based_local_convolution(images):
    config = DefenseConfig(iterations=40, precision="float64")
    x = torch.rand(2, 6, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(BandedKernel(32, config)(x), UnfoldKernel(32, config)(x), rtol=1e-12, atol=0)
    q, _ = _as_distributions(marginal_images(images.double(), config))
    x_hat, _ = _as_distributions(images.double())
    fast, _ = regularized_barycenter(q, x_hat, config)
    reference, _ = regularized_barycenter(q, x_hat, config, kernel=UnfoldKernel(32, config))
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-15)


def test_purified_images_keep_shape_range_and_channel_mass(images):
    y = purify(images)
    assert y.shape == images.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    ratio = y.sum(dim=(-2, -1)) / images.sum(dim=(-2, -1))
    assert ((ratio - 1).abs() < 2e-3).all(), ratio
    change = (y - images).abs().mean()
    assert 1e-3 < change < 0.05, change  # it does something, and the sign stays recognisable


def test_barycenter_of_identical_copies_converges_to_the_image(images):
    x_hat, _ = _as_distributions(images.double())
    copies = x_hat[:, None].expand(-1, 6, -1, -1, -1)
    errors = []
    for iterations in (50, 300, 1000):
        p, done = regularized_barycenter(copies, x_hat, DefenseConfig(iterations=iterations))
        assert done == iterations
        torch.testing.assert_close(p.sum(dim=(-2, -1)), torch.ones(p.shape[:2]), rtol=0, atol=1e-5)
        errors.append(float((p - x_hat).abs().mean() / x_hat.abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors


def test_a_uniform_image_stays_uniform():
    x = torch.full((1, 3, 32, 32), 0.4)
    torch.testing.assert_close(marginal_images(x, DefenseConfig()), x[:, None].expand(-1, 6, -1, -1, -1), rtol=0, atol=1e-6)
    change = (purify(x) - x).abs()
    # Inside, the uniform image is kept; within 4 px of the border the kernel is cut off, which
    # leaves a small ripple (the entropic barycenter is not exactly uniform there).
    assert change[..., 4:-4, 4:-4].max() < 1e-3 and change.max() < 0.03, change.max()


def test_float32_agrees_with_float64(images):
    single = purify(images, DefenseConfig(iterations=300))
    double = purify(images, DefenseConfig(iterations=300, precision="float64"))
    assert (single - double).abs().max() < 1e-3


def test_marginal_sets():
    x = torch.rand(2, 3, 32, 32)
    b6, b4 = marginal_images(x, DefenseConfig()), marginal_images(x, DefenseConfig(marginals="B4"))
    assert b6.shape[1] == 6 and b4.shape[1] == 4
    assert torch.equal(b6[:, 0], x) and torch.equal(b6[:, -1, :, 3:, 3:], x[:, :, :-3, :-3])
    assert not torch.allclose(b6[:, 1], x) and torch.allclose(b6[:, 1], b4[:, 1])


def test_the_defense_is_differentiable(images):
    x = images[:1].clone().requires_grad_(True)
    purify(x, DefenseConfig(iterations=20)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_stopping_rule_ends_early(images):
    _, done = regularized_barycenter(*_targets(images), DefenseConfig(iterations=2000, tol=1e-4))
    assert done < 2000


def _targets(images):
    config = DefenseConfig()
    q, _ = _as_distributions(marginal_images(images.double(), config))
    x_hat, _ = _as_distributions(images.double())
    return q, x_hat


@pytest.mark.parametrize("field, value", [("marginals", "B5"), ("gamma", 0.0), ("theta", float("nan")), ("tau", -1.0),
                                          ("window", 6), ("iterations", 0), ("tol", 1.0), ("shift", 20), ("gamma", True),
                                          ("precision", "float16")])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ConfigError):
        DefenseConfig(**{field: value})


@pytest.mark.parametrize("bad", [torch.rand(3, 32, 32), torch.rand(1, 3, 32, 30), torch.rand(1, 3, 32, 32) * 2,
                                 torch.full((1, 3, 32, 32), float("nan")), torch.rand(1, 2, 32, 32)])
def test_bad_images_are_refused(bad):
    with pytest.raises(ConfigError):
        purify(bad)


def test_early_stop_is_per_image_and_returns_the_iterate_it_stopped_at(images):
    q, x_hat = _targets(images[:3])
    config = DefenseConfig(iterations=400, tol=3e-4)
    batch, _ = regularized_barycenter(q, x_hat, config)
    counts = []
    for i in range(3):
        alone, done = regularized_barycenter(q[i:i + 1], x_hat[i:i + 1], config)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-7)
        fixed, _ = regularized_barycenter(q[i:i + 1], x_hat[i:i + 1], replace(config, tol=0.0, iterations=done - 1))
        torch.testing.assert_close(alone, fixed, rtol=0, atol=1e-7)
        counts.append(done)
    assert min(counts) < 400
