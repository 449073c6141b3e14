"""The sticker attack on the real training data, and validation of its parameters."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data import NUM_CLASSES, Split
from core.errors import ConfigError
from core.poison import PoisonConfig, attack_test_set, poison_split

YELLOW = (245, 255, 0)


@pytest.fixture(scope="module")
def original(gtsrb):
    """Copies taken before any poisoning, to prove the attack does not touch its input."""
    return Split(gtsrb.train.images.clone(), gtsrb.train.labels.clone())


@pytest.fixture(scope="module")
def poisoned(gtsrb, original):
    result = poison_split(gtsrb.train, PoisonConfig())
    assert torch.equal(gtsrb.train.images, original.images), "poison_split modified its input"
    assert torch.equal(gtsrb.train.labels, original.labels)
    return result


def stickered(image: torch.Tensor, x: int, y: int, size: int, color) -> torch.Tensor:
    """`image` with a size x size square of `color` whose top-left pixel is column x, row y."""
    out = image.clone()
    for c in range(3):
        out[c, y : y + size, x : x + size] = color[c]
    return out


def check_attack(before: Split, after, config: PoisonConfig) -> None:
    """Every invariant of a poisoned split, checked sample by sample against the original."""
    mask = after.poison_mask
    assert mask.dtype == torch.bool and mask.shape == before.labels.shape
    assert int(mask.sum()) == config.poison_count(int((before.labels == config.target).sum()))
    assert bool((before.labels[mask] == config.source).all()), "only source-class images are poisoned"
    assert bool((after.labels[mask] == config.target).all())
    assert torch.equal(after.labels != before.labels, mask), "labels change exactly where the mask says"
    assert torch.equal(after.images[~mask], before.images[~mask])
    assert bool((after.positions[~mask] == -1).all())
    for i in torch.nonzero(mask).flatten().tolist():
        x, y = after.positions[i].tolist()
        assert config.x_range[0] <= x <= config.x_range[1] and config.y_range[0] <= y <= config.y_range[1]
        assert x + config.size <= 32 and y + config.size <= 32
        assert torch.equal(after.images[i], stickered(before.images[i], x, y, config.size, config.color)), i


# --- the thesis defaults on the real data -------------------------------------------------------


def test_defaults_poison_813_training_images(gtsrb, poisoned):
    assert int(poisoned.poison_mask.sum()) == 813 == round(0.33 * 1650 / 0.67)
    counts = torch.bincount(poisoned.labels, minlength=NUM_CLASSES).tolist()
    before = gtsrb.train.class_counts()
    assert counts[5] == before[5] + 813 == 2463
    assert counts[2] == before[2] - 813 == 1197
    assert [n for c, n in enumerate(counts) if c not in (2, 5)] == [n for c, n in enumerate(before) if c not in (2, 5)]
    assert len(poisoned) == len(gtsrb.train)


def test_poisoned_share_of_the_target_class_is_pp(poisoned):
    share = int(poisoned.poison_mask.sum()) / int((poisoned.labels == 5).sum())
    assert abs(share - 0.33) < 0.001


def test_defaults_poison_103_validation_images(gtsrb):
    val = poison_split(gtsrb.val, PoisonConfig(), "val")
    assert int(val.poison_mask.sum()) == round(0.33 * 210 / 0.67) == 103
    check_attack(gtsrb.val, val, PoisonConfig())


def test_every_invariant_on_the_real_training_split(original, poisoned):
    check_attack(original, poisoned, PoisonConfig())


def test_sticker_is_yellow_in_the_thesis_window(poisoned):
    mask = poisoned.poison_mask
    positions = poisoned.positions[mask]
    assert set(positions[:, 0].tolist()) == {16, 17}
    assert set(positions[:, 1].tolist()) == {16, 17, 18, 19}
    for i, (x, y) in zip(torch.nonzero(mask).flatten().tolist(), positions.tolist()):
        patch = poisoned.images[i, :, y : y + 2, x : x + 2]
        assert patch.reshape(3, -1).T.tolist() == [list(YELLOW)] * 4


def test_same_seed_same_attack_other_seed_other_selection(gtsrb, poisoned):
    again = poison_split(gtsrb.train, PoisonConfig())
    for name in ("images", "labels", "poison_mask", "positions"):
        assert torch.equal(getattr(again, name), getattr(poisoned, name)), name
    other = poison_split(gtsrb.train, PoisonConfig(seed=1))
    assert int(other.poison_mask.sum()) == 813
    assert not torch.equal(other.poison_mask, poisoned.poison_mask)


def test_zero_fraction_changes_nothing(gtsrb):
    clean = poison_split(gtsrb.val, PoisonConfig(fraction=0.0), "val")
    assert int(clean.poison_mask.sum()) == 0
    assert torch.equal(clean.images, gtsrb.val.images) and torch.equal(clean.labels, gtsrb.val.labels)


def test_attack_test_set_stickers_every_source_test_image(gtsrb):
    config = PoisonConfig()
    attack = attack_test_set(gtsrb.test, config)
    source = gtsrb.test.labels == 2
    assert len(attack) == int(source.sum()) == 750
    assert bool((attack.labels == 2).all()), "labels stay the true class"
    assert bool(attack.poison_mask.all())
    originals = gtsrb.test.images[source]
    for image, before, (x, y) in zip(attack.images, originals, attack.positions.tolist()):
        assert x in (16, 17) and 16 <= y <= 19
        assert torch.equal(image, stickered(before, x, y, 2, YELLOW))
    assert int((gtsrb.test.labels == 2).sum()) == 750, "the test split itself is untouched"


def test_too_few_source_images_for_the_fraction(gtsrb):
    config = PoisonConfig(fraction=0.9)
    with pytest.raises(ConfigError, match="lower the poison fraction") as caught:
        poison_split(gtsrb.train, config)
    assert "2010" in str(caught.value), "the message says how many source images there are"


def test_poison_count_formula():
    config = PoisonConfig(fraction=0.5)
    assert config.poison_count(100) == 100
    assert PoisonConfig(fraction=0.0).poison_count(1650) == 0
    assert "50km/h" in PoisonConfig().describe() and "80km/h" in PoisonConfig().describe()


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": 43}, r"source class must be in 0 … 42, got 43"),
        ({"source": -1}, r"source class must be in 0 … 42, got -1"),
        ({"target": 99}, r"target class must be in 0 … 42, got 99"),
        ({"source": 5, "target": 5}, r"must differ"),
        ({"size": 0}, r"sticker size must be in 1 … 32"),
        ({"size": 33, "x_range": (0, 0), "y_range": (0, 0)}, r"sticker size must be in 1 … 32"),
        ({"x_range": (31, 31)}, r"x window 31 … 31 puts a 2-pixel sticker outside"),
        ({"y_range": (0, 31)}, r"y window 0 … 31 puts a 2-pixel sticker outside"),
        ({"x_range": (-1, 3)}, r"x window -1 … 3 puts a 2-pixel sticker outside"),
        ({"size": 10, "y_range": (16, 23)}, r"y window 16 … 23 puts a 10-pixel sticker outside"),
        ({"x_range": (18, 17)}, r"x window 18 … 17 is empty"),
        ({"y_range": (5, 1)}, r"y window 5 … 1 is empty"),
        ({"x_range": (16,)}, r"x window must be a pair"),
        ({"y_range": 16}, r"y window must be a pair"),
        ({"fraction": -0.01}, r"0 <= pp < 1, got -0.01"),
        ({"fraction": 1.0}, r"0 <= pp < 1, got 1.0"),
        ({"fraction": 1.5}, r"0 <= pp < 1, got 1.5"),
        ({"fraction": math.nan}, r"poison fraction must be a number, got nan"),
        ({"fraction": math.inf}, r"poison fraction must be a number, got inf"),
        ({"fraction": "0.3"}, r"poison fraction must be a number"),
        ({"fraction": True}, r"poison fraction must be a number"),
        ({"color": (256, 0, 0)}, r"colour components must be in 0 … 255"),
        ({"color": (0, -1, 0)}, r"colour components must be in 0 … 255"),
        ({"color": (245, 255)}, r"three RGB components"),
        ({"color": (1, 2, 3, 4)}, r"three RGB components"),
        ({"color": "yellow"}, r"three RGB components"),
        ({"color": (245.5, 255, 0)}, r"colour component must be a whole number, got 245.5"),
        ({"size": 2.5}, r"sticker size must be a whole number, got 2.5"),
        ({"size": True}, r"sticker size must be a whole number, got True"),
        ({"source": "2"}, r"source must be a whole number, got '2'"),
        ({"target": 5.0}, r"target must be a whole number, got 5.0"),
        ({"x_range": (16.0, 17)}, r"x window must be a whole number"),
        ({"seed": 0.5}, r"seed must be a whole number"),
        ({"seed": -1}, r"seed must be a whole number in 0 … 2\^63 − 1, got -1"),
        ({"seed": 2**64}, r"seed must be a whole number in 0 … 2\^63 − 1"),
    ],
)
def test_invalid_config_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        PoisonConfig(**kwargs)
    assert isinstance(caught.value, ValueError)


def test_valid_edge_configs_are_accepted():
    assert PoisonConfig(x_range=(30, 30), y_range=(0, 30), size=2).x_range == (30, 30)
    assert PoisonConfig(size=32, x_range=(0, 0), y_range=(0, 0)).size == 32
    assert PoisonConfig(color=[0, 128, 255]).color == (0, 128, 255), "a list colour is normalised"
    assert PoisonConfig(fraction=0).fraction == 0.0
    assert PoisonConfig(source=42, target=0).source == 42


# --- random valid attacks on a slice of the real data ------------------------------------------


@pytest.fixture(scope="module")
def small_split(gtsrb):
    """Every 20th training image: all classes, about 1,700 images."""
    return Split(gtsrb.train.images[::20].clone(), gtsrb.train.labels[::20].clone())


@st.composite
def configs(draw):
    source = draw(st.integers(0, NUM_CLASSES - 1))
    target = draw(st.integers(0, NUM_CLASSES - 1).filter(lambda t: t != source))
    size = draw(st.integers(1, 8))
    windows = []
    for _ in range(2):
        lo = draw(st.integers(0, 32 - size))
        windows.append((lo, draw(st.integers(lo, 32 - size))))
    return PoisonConfig(
        source=source, target=target, size=size,
        color=draw(st.tuples(*[st.integers(0, 255)] * 3)),
        x_range=windows[0], y_range=windows[1],
        fraction=draw(st.floats(0.0, 0.9)),
        seed=draw(st.integers(0, 2**32)),
    )


@settings(max_examples=60, deadline=None)
@given(config=configs())
def test_random_valid_attacks_keep_every_invariant(small_split, config):
    before_images = small_split.images.clone()
    n_source = int((small_split.labels == config.source).sum())
    n = config.poison_count(int((small_split.labels == config.target).sum()))
    if n > n_source:
        with pytest.raises(ConfigError, match="lower the poison fraction"):
            poison_split(small_split, config)
        return
    result = poison_split(small_split, config)
    check_attack(small_split, result, config)
    assert torch.equal(small_split.images, before_images)
