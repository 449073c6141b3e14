"""Heatmaps thresholded into weighted point clouds (thesis, section 6.4): properties on random
heatmaps, degenerate heatmaps, invalid input, and a small example computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.errors import ConfigError
from core.pointcloud import check_threshold, mass_inside, normalised_mass, point_cloud, point_count, point_clouds

# float32 is what core produces; full-range float32 values (subnormals to 3e38) must not overflow.
_moderate = st.floats(-1e3, 1e3, width=32)
_any_float32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
_few_values = st.sampled_from([-2.0, -1.0, 0.0, 0.0, 0.5, 1.0, 3.0])  # ties and plateaus
_small_shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))

heatmaps = st.one_of(
    arrays(np.float32, (32, 32), elements=_moderate),
    arrays(np.float32, (32, 32), elements=_few_values),
    arrays(np.float32, _small_shapes, elements=_moderate),
    arrays(np.float32, _small_shapes, elements=_any_float32),
    arrays(np.float32, _small_shapes, elements=_few_values),
    arrays(np.float64, _small_shapes, elements=st.floats(-1e300, 1e300)),
).map(torch.from_numpy)

thresholds = st.floats(0, 1, exclude_min=True)


def check_cloud(heatmap: torch.Tensor, threshold: float):
    """Every property a cloud must have; returns it with the heatmap's normalised mass."""
    cloud = point_cloud(heatmap, threshold)
    mass = normalised_mass(heatmap)
    height, width = heatmap.shape
    k = len(cloud)
    assert 1 <= k <= height * width
    assert cloud.coords.shape == (k, 2) and cloud.coords.dtype == torch.int64
    assert cloud.weights.shape == (k,) and cloud.weights.dtype == torch.float64
    assert cloud.structure.shape == (k, k) and cloud.structure.dtype == torch.float64
    assert k == int(point_count(mass, threshold))

    # weights: a probability vector over the kept pixels, most relevant first
    assert bool(torch.isfinite(cloud.weights).all()) and bool((cloud.weights > 0).all())
    assert abs(float(cloud.weights.sum()) - 1.0) <= 1e-9
    assert bool((cloud.weights[1:] <= cloud.weights[:-1]).all())

    # coordinates: unique pixels inside the image
    rows, cols = cloud.coords[:, 0], cloud.coords[:, 1]
    assert bool(((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).all())
    assert len({tuple(c) for c in cloud.coords.tolist()}) == k

    # the kept pixels are the most relevant ones, and the weights are their renormalised masses
    kept = torch.zeros(height, width, dtype=torch.bool)
    kept[rows, cols] = True
    kept_mass = mass[rows, cols]
    if k < height * width:
        assert float(kept_mass.min()) >= float(mass[~kept].max())
    assert torch.allclose(cloud.weights, kept_mass / kept_mass.sum(), rtol=1e-12, atol=0)

    # they are the fewest that reach the threshold
    ordered = kept_mass.cumsum(0)
    assert float(ordered[-1]) >= threshold - 1e-9
    if k > 1 and threshold < 1:
        assert float(ordered[-2]) < threshold + 1e-9

    # structure: Euclidean distances of the pixel coordinates divided by their maximum
    s = cloud.structure
    assert bool(torch.isfinite(s).all())
    assert torch.equal(s, s.T) and bool((s.diagonal() == 0).all())
    if k == 1:
        assert s.tolist() == [[0.0]]
    else:
        assert float(s.max()) == 1.0 and float(s.min()) >= 0.0
        points = cloud.coords.double().numpy()
        distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        assert np.allclose(s.numpy(), distances / distances.max(), rtol=1e-12, atol=1e-12)
        off_diagonal = ~np.eye(k, dtype=bool)
        assert (s.numpy()[off_diagonal] > 0).all(), "distinct pixels are at positive distance"
    return cloud, mass


@settings(max_examples=150, deadline=None)
@given(heatmap=heatmaps, threshold=thresholds)
def test_cloud_properties(heatmap, threshold):
    check_cloud(heatmap, threshold)


@settings(max_examples=100, deadline=None)
@given(heatmap=heatmaps)
def test_threshold_one_keeps_every_pixel_with_mass(heatmap):
    cloud, mass = check_cloud(heatmap, 1.0)
    positive = {tuple(p) for p in torch.nonzero(mass > 0).tolist()}
    assert {tuple(c) for c in cloud.coords.tolist()} == positive


@settings(max_examples=100, deadline=None)
@given(heatmap=heatmaps, ts=st.lists(thresholds, min_size=2, max_size=8))
def test_more_mass_keeps_more_points(heatmap, ts):
    ts = sorted(ts) + [1.0]
    mass = normalised_mass(heatmap)
    counts = [int(point_count(mass, t)) for t in ts]
    assert counts == sorted(counts)
    clouds = [point_cloud(heatmap, t) for t in ts]
    for smaller, larger in zip(clouds, clouds[1:]):  # nested: a lower threshold keeps a prefix
        assert torch.equal(larger.coords[: len(smaller)], smaller.coords)


@settings(max_examples=100, deadline=None)
@given(heatmap=heatmaps)
def test_normalised_mass_is_a_distribution(heatmap):
    mass = normalised_mass(heatmap)
    assert mass.shape == heatmap.shape and mass.dtype == torch.float64
    assert bool(torch.isfinite(mass).all()) and bool((mass >= 0).all())
    assert abs(float(mass.sum()) - 1.0) <= 1e-9
    h = heatmap.double()
    if float(h.max()) > float(h.min()):
        assert float(mass.min()) == 0.0, "min-max normalisation maps the least relevant pixel to 0"
        assert float(mass.flatten()[h.flatten().argmax()]) == float(mass.max())
    else:
        assert torch.allclose(mass, torch.full_like(mass, 1.0 / mass.numel()))
    whole = torch.ones(heatmap.shape, dtype=torch.bool)
    assert float(mass_inside(heatmap, whole)[0]) == pytest.approx(1.0, abs=1e-9)
    assert float(mass_inside(heatmap, ~whole)[0]) == 0.0


@settings(max_examples=50, deadline=None)
@given(batch=st.lists(arrays(np.float32, (8, 8), elements=_moderate), min_size=1, max_size=5), threshold=thresholds,
       mask=arrays(np.bool_, (8, 8)))
def test_batches_equal_single_heatmaps(batch, threshold, mask):
    stack = torch.from_numpy(np.stack(batch))
    mask = torch.from_numpy(mask)
    mass = normalised_mass(stack)
    counts = point_count(mass, threshold)
    inside = mass_inside(stack, mask)
    assert counts.shape == inside.shape == (len(batch),)
    for i, heatmap in enumerate(stack):
        assert torch.allclose(mass[i], normalised_mass(heatmap), rtol=1e-15, atol=0)
        assert int(counts[i]) == int(point_count(normalised_mass(heatmap), threshold))
        assert float(inside[i]) == pytest.approx(float(mass_inside(heatmap, mask)[0]), abs=1e-12)
        assert float(inside[i] + mass_inside(heatmap, ~mask)[0]) == pytest.approx(1.0, abs=1e-9)
    assert [len(c) for c in point_clouds(stack, threshold)] == counts.tolist()


# --- degenerate heatmaps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "heatmap",
    [torch.zeros(32, 32), torch.full((32, 32), 7.5), torch.full((3, 5), -2.0), torch.zeros(1, 1), torch.full((1, 1), -4.0)],
    ids=["zeros", "constant", "constant-negative", "one-pixel", "one-negative-pixel"],
)
@pytest.mark.parametrize("threshold", [0.01, 0.5, 0.99, 1.0])
def test_constant_heatmaps_are_uniform(heatmap, threshold):
    cloud, mass = check_cloud(heatmap, threshold)
    n = heatmap.numel()
    assert torch.allclose(mass, torch.full_like(mass, 1.0 / n))
    assert len(cloud) == max(1, math.ceil(threshold * n - 1e-9))
    assert torch.allclose(cloud.weights, torch.full_like(cloud.weights, 1.0 / len(cloud)))


@pytest.mark.parametrize("threshold", [0.3, 0.99, 1.0])
def test_all_negative_heatmap(threshold):
    heatmap = -torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) - 1.0
    cloud, mass = check_cloud(heatmap, threshold)
    assert len(cloud) >= 1
    top = torch.nonzero(heatmap == heatmap.max())[0].tolist()
    assert cloud.coords[0].tolist() == top, "the least negative pixel is the most relevant"


# --- the thesis's normalisation by hand --------------------------------------------------------


def test_hand_computed_example():
    # min-max: [[1, .75], [.5, 0]], total 2.25 -> masses [[4/9, 3/9], [2/9, 0]]
    heatmap = torch.tensor([[4.0, 3.0], [2.0, 0.0]])
    assert torch.allclose(normalised_mass(heatmap), torch.tensor([[4 / 9, 3 / 9], [2 / 9, 0.0]], dtype=torch.float64))

    half = point_cloud(heatmap, 0.5)  # 4/9 < 0.5 <= 7/9: two points
    assert half.coords.tolist() == [[0, 0], [0, 1]]
    assert torch.allclose(half.weights, torch.tensor([4 / 7, 3 / 7], dtype=torch.float64), rtol=1e-15)
    assert half.structure.tolist() == [[0.0, 1.0], [1.0, 0.0]]

    full = point_cloud(heatmap, 1.0)  # every pixel with positive mass: the 0 pixel is dropped
    assert full.coords.tolist() == [[0, 0], [0, 1], [1, 0]]
    assert torch.allclose(full.weights, torch.tensor([4 / 9, 3 / 9, 2 / 9], dtype=torch.float64), rtol=1e-15)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[0.0, r, r], [r, 0.0, 1.0], [r, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(full.structure, expected, rtol=1e-15)

    assert len(point_cloud(heatmap, 0.44)) == 1 and point_cloud(heatmap, 0.44).structure.tolist() == [[0.0]]
    assert len(point_cloud(heatmap, 0.78)) == 3

    # min-max normalisation makes the cloud blind to offset and positive scale
    for other in (heatmap - 5.0, heatmap * 3.0, heatmap.double() * 1e-30):
        for t in (0.5, 1.0):
            a, b = point_cloud(other, t), point_cloud(heatmap, t)
            assert torch.equal(a.coords, b.coords) and torch.allclose(a.weights, b.weights, rtol=1e-12)

    window = torch.tensor([[True, False], [True, False]])
    assert float(mass_inside(heatmap, window)[0]) == pytest.approx(6 / 9, abs=1e-15)


# --- invalid input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heatmap",
    [
        torch.tensor([[1.0, math.nan], [0.0, 2.0]]),
        torch.tensor([[1.0, math.inf], [0.0, 2.0]]),
        torch.tensor([[1.0, -math.inf], [0.0, 2.0]]),
        torch.full((32, 32), math.nan),
    ],
    ids=["nan", "inf", "-inf", "all-nan"],
)
def test_non_finite_heatmaps_are_rejected(heatmap):
    with pytest.raises(ConfigError, match="NaN or infinite"):
        normalised_mass(heatmap)
    with pytest.raises(ConfigError, match="NaN or infinite"):
        point_cloud(heatmap, 0.5)
    with pytest.raises(ConfigError, match="NaN or infinite"):
        mass_inside(heatmap, torch.ones(heatmap.shape, dtype=torch.bool))


@pytest.mark.parametrize("heatmap", [torch.empty(0, 0), torch.empty(0, 32), torch.empty(3, 0), torch.empty(0, 32, 32)],
                         ids=["0x0", "0x32", "3x0", "0x32x32"])
def test_empty_heatmaps_are_rejected(heatmap):
    with pytest.raises(ConfigError, match="empty"):
        normalised_mass(heatmap)
    if heatmap.dim() == 2:
        with pytest.raises(ConfigError, match="empty"):
            point_cloud(heatmap, 0.5)


@pytest.mark.parametrize("heatmap", [torch.ones(32), torch.ones(2, 3, 32, 32), torch.tensor(1.0), np.ones((32, 32)), [[1.0, 2.0]]],
                         ids=["1d", "4d", "scalar", "numpy", "list"])
def test_wrong_shapes_are_rejected(heatmap):
    with pytest.raises(ConfigError, match="shape"):
        normalised_mass(heatmap)


@pytest.mark.parametrize("heatmap", [torch.ones(32), torch.ones(2, 32, 32), torch.ones(1, 2, 32, 32)], ids=["1d", "3d", "4d"])
def test_point_cloud_takes_one_heatmap(heatmap):
    with pytest.raises(ConfigError, match="one heatmap"):
        point_cloud(heatmap, 0.5)


@pytest.mark.parametrize("threshold", [0, 0.0, -0.1, -1, 1.0000001, 1.5, 2, math.nan, math.inf, -math.inf, True, False, "0.5", None])
def test_bad_thresholds_are_rejected(threshold):
    heatmap = torch.rand(32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ConfigError, match="mass threshold"):
        check_threshold(threshold)
    with pytest.raises(ConfigError, match="mass threshold"):
        point_cloud(heatmap, threshold)
    with pytest.raises(ConfigError, match="mass threshold"):
        point_count(normalised_mass(heatmap), threshold)


@pytest.mark.parametrize("threshold", [1, 1.0, 0.5, 1e-300, np.float32(0.25), np.float64(0.99)])
def test_good_thresholds_are_floats(threshold):
    assert check_threshold(threshold) == float(threshold) and type(check_threshold(threshold)) is float


def test_cloud_sizes_match_point_count_at_every_threshold():
    from core.pointcloud import cloud_sizes

    heatmaps = torch.randn(6, 32, 32)
    heatmaps[0] = 0  # a constant map: uniform mass
    mass = normalised_mass(heatmaps)
    thresholds = (0.05, 0.5, 0.9, 0.99, 1.0)
    sizes = cloud_sizes(mass, thresholds)
    assert sizes.shape == (6, len(thresholds))
    for column, t in enumerate(thresholds):
        assert torch.equal(sizes[:, column], point_count(mass, t))
    assert (sizes.diff(dim=1) >= 0).all()
    with pytest.raises(ConfigError):
        cloud_sizes(mass, (0.5, 0.0))


def test_top_share_is_one_for_an_atom_and_small_for_a_flat_field():
    from core.pointcloud import top_share

    atom = torch.zeros(32, 32)
    atom[10:13, 4:7] = 1.0  # nine equal pixels
    flat = torch.ones(32, 32)
    flat[0, 0] = 0.5
    shares = top_share(normalised_mass(torch.stack([atom, flat])), 9)
    assert float(shares[0]) == pytest.approx(1.0)
    assert float(shares[1]) == pytest.approx(9 / (1023 * 1.0 + 0.0), rel=1e-3)
