"""Tiling uint8 images into grids (sample overviews, DPG-Bench 2x2 tiles) and saving them as PNG."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pixelgen.eval.images import check_nhwc_uint8
from pixelgen.utils.io import atomic_write

__all__ = ["tile_images", "save_png"]


def tile_images(images: np.ndarray, columns: int | None = None, *, padding: int = 0, fill: int = 255) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows·H, columns·W, 3) image, row-major; ``columns`` defaults to ceil(sqrt(N))."""
    images = check_nhwc_uint8(np.asarray(images), "images to tile")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("There are no images to tile.")
    columns = columns or math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}.")
    rows = math.ceil(n / columns)
    out = np.full((rows * h + (rows - 1) * padding, columns * w + (columns - 1) * padding, c), fill, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, columns)
        out[r * (h + padding) : r * (h + padding) + h, q * (w + padding) : q * (w + padding) + w] = im
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"A PNG image must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)
