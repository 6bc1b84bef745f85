"""Image transforms and the sample format shared by every pixelgen dataset.

A sample is a dict ``{"image": (3, S, S) float in [-1, 1], "raw": (3, S, S) float in [0, 1]}`` plus
``"label"`` (int, class data) or ``"caption"`` (str, text data). ``raw`` feeds the frozen DINOv2 encoder;
``image`` is what the diffusion model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "AdmCropPlan",
    "adm_crop_plan",
    "adm_center_crop",
    "resize_center_crop",
    "check_resolution",
    "ImageTooLargeError",
    "load_rgb",
    "make_sample",
    "sample_from_uint8",
]


def check_resolution(resolution: object, name: str = "resolution") -> int:
    """A positive integer side length in pixels."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of pixels, got {type(resolution).__name__} {resolution!r}.")
    if resolution < 1:
        raise ValueError(f"{name} must be a positive number of pixels, got {resolution}.")
    return int(resolution)


@dataclass(frozen=True)
class AdmCropPlan:
    """What :func:`adm_center_crop` does to an image of a given size.

    ``halvings`` BOX halvings turn it into ``halved`` (width, height); a BICUBIC resize then gives
    ``resized`` (short side == target), and the crop window starts at ``offset`` (x, y).
    """

    halvings: int
    halved: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]


def adm_crop_plan(width: int, height: int, size: int) -> AdmCropPlan:
    """The ADM centre-crop plan for a ``width`` x ``height`` image and a square ``size`` target."""
    size = check_resolution(size, "size")
    if width < 1 or height < 1:
        raise ValueError(f"The image must have a positive size, got {width}x{height}.")
    halvings = 0
    # Halving with BOX filtering first keeps big downscales alias-free and cheap, as ADM does.
    while min(width, height) >= 2 * size:
        width, height = width // 2, height // 2
        halvings += 1
    scale = size / min(width, height)
    resized = (round(width * scale), round(height * scale))
    offset = ((resized[0] - size) // 2, (resized[1] - size) // 2)
    return AdmCropPlan(halvings, (width, height), resized, offset)


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop (the ImageNet preprocessing the released models were trained with): BOX-halve while
    the short side is >= 2x ``size``, BICUBIC-resize the short side to ``size`` (rounding the long side), then
    take the integer centre crop."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"adm_center_crop expects a PIL image, got {type(image).__name__}.")
    plan = adm_crop_plan(image.width, image.height, size)
    for _ in range(plan.halvings):
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    image = image.resize(plan.resized, resample=Image.BICUBIC)
    x, y = plan.offset
    return image.crop((x, y, x + size, y + size))


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(size)`` (short side, bilinear, antialiased) then ``CenterCrop(size)``: the
    caption-folder transform."""
    from torchvision.transforms import functional as TF

    if not isinstance(image, Image.Image):
        raise TypeError(f"resize_center_crop expects a PIL image, got {type(image).__name__}.")
    size = check_resolution(size, "size")
    return TF.center_crop(TF.resize(image, size), [size, size])


class ImageTooLargeError(ValueError):
    """An image has more pixels than allowed (a decompression bomb, or a setting too low for the data)."""


def load_rgb(source: Any, *, max_pixels: int | None = None) -> Image.Image:
    """Open an image file (path or file object) fully and convert it to RGB (raises on corrupt data).

    ``max_pixels`` refuses an image with more pixels before decoding it (:class:`ImageTooLargeError`). 16-bit
    greyscale images are scaled to 8 bits (PIL's RGB conversion would clip every value above 255 to white).
    """
    with Image.open(source) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {img.width}x{img.height} = {img.width * img.height} pixels, more than max_pixels="
                f"{max_pixels} (a decompression bomb?)."
            )
        img.load()
        if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.asarray(img).astype(np.float64)
            if img.mode != "I" or values.max(initial=0) > 255:  # 16-bit range
                values = values / 257.0
            return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
        return img.convert("RGB")


def make_sample(image: Image.Image, *, flip: bool = False, **fields: Any) -> dict[str, Any]:
    """A sample dict from a square PIL image: ``raw`` in [0, 1], ``image`` = (raw - 0.5) / 0.5, plus ``fields``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return sample_from_uint8(pixels, flip=flip, **fields)


def sample_from_uint8(pixels: torch.Tensor, *, flip: bool = False, **fields: Any) -> dict[str, Any]:
    """A sample dict from a (3, S, S) uint8 tensor (``flip`` mirrors it left-right)."""
    if flip:
        pixels = pixels.flip(-1)
    # Contiguous NCHW: a permuted HWC buffer would keep channels-last strides through .float() and collate,
    # which makes every convolution/patchify downstream slow.
    raw = pixels.contiguous().float().div_(255.0)
    return {"image": (raw - 0.5) / 0.5, "raw": raw, **fields}
