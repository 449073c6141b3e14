"""Small images for grids and hover previews: upscaled samples, coloured heatmaps, sprite sheets."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def enlarge(rgb: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour upscaling, so that single pixels stay visible."""
    return np.kron(rgb, np.ones((factor, factor, 1), dtype=rgb.dtype))


def diverging_rgb(heat: np.ndarray) -> np.ndarray:
    """Heatmaps ([..., H, W]) as RGB images: white at zero, red for positive, blue for negative
    relevance, each scaled by its own largest magnitude."""
    bound = np.abs(heat).max(axis=(-2, -1), keepdims=True)
    v = np.clip(heat / np.where(bound > 0, bound, 1.0), -1.0, 1.0)
    red = np.where(v < 0, 1.0 + v, 1.0)
    blue = np.where(v > 0, 1.0 - v, 1.0)
    green = 1.0 - np.abs(v)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def sprite_sheet(tiles: np.ndarray) -> tuple[str, int]:
    """All tiles ([N, H, W, 3] uint8) in one PNG data URL, row-major; returns it and the number of columns.

    One lossless PNG keeps single poisoned pixels exact and carries thousands of tiles at once.
    """
    count, height, width, _ = tiles.shape
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = int(np.ceil(count / columns))
    sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), columns
