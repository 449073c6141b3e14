"""The spatial-transformation defense: each transformation moves pixels where it says, bad text is
refused in one line, and on a real model the untransformed row is the model's own metrics."""

from __future__ import annotations

import pytest
import torch

from core.cli import main
from core.defense import _rotate
from core.errors import ConfigError
from core.robustness import spatial_defense
from core.spatial import DEFAULT_TRANSFORMS, SpatialTransform, parse_transforms


def dot(x: int, y: int) -> torch.Tensor:
    """A 32×32 image, black but for one white pixel at column x, row y."""
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, y, x] = 1.0
    return image


def where(image: torch.Tensor) -> tuple:
    row, col = divmod(int(image[0, 0].flatten().argmax()), image.shape[-1])
    return col, row


def test_shift_moves_every_pixel_right_and_down_by_whole_pixels():
    moved = SpatialTransform.parse("shift=3,-2")(dot(10, 20))
    assert where(moved) == (13, 18)
    assert torch.allclose(moved, dot(13, 18), atol=1e-6), "a whole-pixel shift does not blur"


def test_flip_mirrors_columns_and_twice_is_the_identity():
    image = torch.rand(2, 3, 32, 32)
    flip = SpatialTransform.parse("flip")
    assert where(flip(dot(3, 7))) == (28, 7)
    assert torch.equal(flip(flip(image)), image)


def test_scale_zooms_about_the_centre_and_one_is_the_identity():
    image = torch.rand(2, 3, 32, 32)
    assert torch.allclose(SpatialTransform.parse("scale=1")(image), image, atol=1e-6)
    assert torch.allclose(SpatialTransform.parse("rotate=0")(image), image, atol=1e-6)
    square = torch.zeros(1, 3, 32, 32)
    square[..., 12:20, 12:20] = 1.0  # 8 px wide, centred
    assert float(SpatialTransform.parse("scale=2")(square).mean()) == pytest.approx(4 * float(square.mean()), rel=0.05)
    assert float(SpatialTransform.parse("scale=0.5")(square).mean()) == pytest.approx(float(square.mean()) / 4, rel=0.05)


def test_rotation_is_clockwise_as_displayed_and_the_barycentric_defenses_own():
    col, row = where(SpatialTransform.parse("rotate=90")(dot(28, 16)))  # right of centre → below it (rows grow downwards)
    assert abs(col - 16) <= 1 and row >= 27
    col, row = where(SpatialTransform.parse("rotate=-90")(dot(28, 16)))  # → above it
    assert abs(col - 16) <= 1 and row <= 4
    image = torch.rand(3, 3, 32, 32)
    assert torch.equal(SpatialTransform.parse("rotate=-20")(image), _rotate(image, -20))


@pytest.mark.parametrize("text, message", [
    ("mirror", "choose flip, scale=F, rotate=DEGREES or shift=DX,DY"),
    ("flip=2", "flip takes no value"),
    ("scale", "scale needs a number"),
    ("scale=big", "scale needs a number"),
    ("scale=3", "scale factor must be in 0.5 … 2"),
    ("rotate=200", "angle must be in −180 … 180"),
    ("shift=3", "shift needs two numbers"),
    ("shift=3,40", "each shift must be in −16 … 16"),
])
def test_bad_transformations_are_refused_in_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as refused:
        SpatialTransform.parse(text)
    assert "\n" not in str(refused.value)


def test_texts_round_trip_and_repeats_are_dropped():
    chosen = parse_transforms(list(DEFAULT_TRANSFORMS) + ["FLIP", "rotate=10.0"])
    assert [t.text for t in chosen] == list(DEFAULT_TRANSFORMS)
    with pytest.raises(ConfigError, match="at least one"):
        parse_transforms([])


def test_the_command_line_refuses_a_bad_transformation_with_status_2(capsys):
    assert main(["spatial", "--transforms", "flip", "turn=3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: transformation 'turn=3'") and "\n" not in err


def test_on_a_real_model_the_plain_row_is_the_models_own_metrics_and_it_is_cached(gtsrb, seeded_cache):
    from core.experiment import ExperimentConfig, train_or_load

    config = ExperimentConfig.from_query({"subset": "3000", "epochs": "2", "patience": "2", "aug": "0"})
    metrics = train_or_load(config, gtsrb).metrics
    transforms = parse_transforms(["flip", "shift=4,4"])
    table = spatial_defense(config, transforms, gtsrb)
    assert [row["transform"] for row in table["rows"]] == ["none", "flip", "shift=4,4"]
    plain = table["rows"][0]
    assert plain["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"], abs=1e-4)
    assert plain["attack_success_rate"] == pytest.approx(metrics["attack_success_rate"], abs=1e-4)
    assert plain["source_accuracy"] == pytest.approx(metrics["source_accuracy"], abs=1e-4)
    assert table["stickered_images"] == metrics["n_attack_test"] and table["test_images"] == len(gtsrb.test)
    flipped = table["rows"][1]
    assert flipped["clean_accuracy"] < plain["clean_accuracy"], "mirrored signs (arrows, text) are read worse"
    assert list(seeded_cache.glob("spatial-*.safetensors"))
    assert spatial_defense(config, transforms, gtsrb) == table
