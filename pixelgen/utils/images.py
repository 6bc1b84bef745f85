"""The one image-grid and image-writing helper: torchvision's ``make_grid`` / ``save_image``, with captions.

Sample grids (the trainer's, the sample sets' overviews, DPG-Bench 2x2 tiles) and single images all go
through here, written atomically (:func:`pixelgen.utils.io.atomic_write`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write

__all__ = ["as_uint8_nchw", "make_image_grid", "save_image", "save_image_grid"]


def as_uint8_nchw(images: torch.Tensor | np.ndarray, name: str = "images") -> torch.Tensor:
    """uint8 (N, 3, H, W) torch or (N, H, W, 3) NumPy → a uint8 (N, 3, H, W) CPU tensor (one-sentence errors)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name} must be a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}.")
        images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a copy: memory-mapped sets are read-only
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(images).__name__}.")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}.")
    if images.shape[0] == 0:
        raise ValueError(f"There are no {name} to put in a grid.")
    return images.detach().cpu()


def _captioned(images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Each image with its caption wrapped in full on white underneath (one tile per image)."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    line_h = 11
    wrapped = [textwrap.wrap(str(c), max(8, w // 6)) or ["(empty)"] for c in captions]
    cap_h = line_h * max(len(lines) for lines in wrapped) + 2
    tiles = torch.full((n, 3, h + cap_h, w), 255, dtype=torch.uint8)
    tiles[:, :, :h] = images
    for i, lines in enumerate(wrapped):
        strip = Image.new("RGB", (w, cap_h), "white")
        draw = ImageDraw.Draw(strip)
        for k, line in enumerate(lines):
            draw.text((1, 1 + k * line_h), line, fill="black")
        tiles[i, :, h:] = torch.from_numpy(np.array(strip)).permute(2, 0, 1)
    return tiles


def make_image_grid(
    images: torch.Tensor | np.ndarray,
    *,
    nrow: int | None = None,
    captions: Iterable[str] | None = None,
    padding: int = 2,
    min_side: int = 0,
) -> torch.Tensor:
    """Tile images row-major into one uint8 (3, H, W) image (``torchvision.utils.make_grid``, white padding).

    ``nrow``: images per row (default ceil(sqrt(N))); ``captions``: one text per image, written under it;
    images smaller than ``min_side`` are enlarged by an integer factor (nearest) so small samples stay readable.
    """
    from torchvision.utils import make_grid

    images = as_uint8_nchw(images)
    n = images.shape[0]
    captions = list(captions) if captions is not None else None
    if captions is not None and len(captions) != n:
        raise ValueError(f"Got {n} images but {len(captions)} captions.")
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}.")
    if min_side and min(images.shape[-2:]) < min_side:
        factor = -(-min_side // min(images.shape[-2:]))
        images = images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    if captions is not None:
        images = _captioned(images, captions)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    return make_grid(images, nrow=nrow, padding=padding, pad_value=255)


def save_image(image: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 image, (3, H, W) tensor or (H, W, 3) array, as PNG, atomically."""
    from torchvision.utils import save_image as tv_save_image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"An image must be uint8 (H, W, 3), got {image.dtype} {image.shape}.")
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"An image must be a uint8 (3, H, W) tensor, got {getattr(image, 'dtype', type(image).__name__)} "
            f"{tuple(getattr(image, 'shape', ()))}."
        )
    with atomic_write(path) as tmp:
        # save_image takes floats in [0, 1] and rounds x·255 + 0.5 down: uint8 values come back unchanged
        tv_save_image(image.detach().cpu().float() / 255, tmp, format="PNG")
    return Path(path)


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    captions: Iterable[str] | None = None,
    padding: int = 2,
    min_side: int = 64,
) -> Path:
    """:func:`make_image_grid` then :func:`save_image` (the trainer's sample grids: captions, enlarged when small)."""
    return save_image(make_image_grid(images, nrow=nrow, captions=captions, padding=padding, min_side=min_side), path)
