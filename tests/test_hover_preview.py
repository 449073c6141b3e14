"""The sprite sheets behind the hover previews: every tile lands where the browser looks for it."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ui.hover_preview import hover_preview
from ui.tiles import diverging_rgb, sprite_sheet


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


@pytest.mark.parametrize("count", [1, 7, 30])
def test_each_tile_is_at_its_row_and_column_losslessly(count):
    tiles = np.random.default_rng(count).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    url, columns = sprite_sheet(tiles)
    sheet = decode(url)
    assert columns * columns >= count and sheet.shape[1] == columns * 32
    for i in range(count):
        r, c = divmod(i, columns)  # the same arithmetic as the component's JavaScript
        np.testing.assert_array_equal(sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32], tiles[i])


def test_bad_tiles_are_refused_before_anything_is_sent():
    with pytest.raises(ValueError, match="uint8"):
        hover_preview("chart", {"image": ("k", np.zeros((3, 32, 32, 3), dtype=np.float32))}, ["a", "b", "c"])
    with pytest.raises(ValueError, match="one caption each"):
        hover_preview("chart", {"image": ("k", np.zeros((3, 32, 32, 3), dtype=np.uint8))}, ["a"])


def test_heatmap_colours_are_per_sample_and_signed():
    heat = np.zeros((2, 4, 4), dtype=np.float32)
    heat[0, 0, 0], heat[0, 1, 1] = 2.0, -1.0
    heat[1, 2, 2] = 0.001  # a faint map still reaches full red: each map has its own scale
    rgb = diverging_rgb(heat)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1, 1], [127, 127, 255])
    np.testing.assert_array_equal(rgb[0, 3, 3], [255, 255, 255])
    np.testing.assert_array_equal(rgb[1, 2, 2], [255, 0, 0])
    np.testing.assert_array_equal(diverging_rgb(np.zeros((4, 4))), np.full((4, 4, 3), 255))
