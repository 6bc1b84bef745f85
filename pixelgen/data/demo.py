"""A built-in, download-free dataset: crops of scikit-image's bundled photographs, one class per photograph.

It exists so that the training recipes run end to end anywhere (``--demo``) — a few hundred small samples,
fully deterministic, installed with ``pip install scikit-image``. ``demo`` gives class labels,
``demo_captions`` gives a short caption per class for text-to-image.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pixelgen.registry import registries

from .transforms import adm_center_crop, check_resolution, sample_from_uint8

__all__ = ["DEMO_CLASSES", "DemoDataset", "DemoCaptionDataset", "demo_captions"]

# (class name, scikit-image loader, caption). Only photographs shipped inside the scikit-image wheel.
DEMO_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "astronaut", "a photo of an astronaut"),
    ("coffee", "coffee", "a photo of a cup of coffee"),
    ("cat", "chelsea", "a photo of a cat"),
    ("rocket", "rocket", "a photo of a rocket on the launch pad"),
    ("galaxies", "hubble_deep_field", "a photo of galaxies in deep space"),
    ("tissue", "immunohistochemistry", "a microscope image of stained tissue"),
    ("retina", "retina", "a photo of a human retina"),
    ("cameraman", "camera", "a black and white photo of a cameraman"),
    ("coins", "coins", "a black and white photo of old coins"),
    ("moon", "moon", "a black and white photo of the moon surface"),
)

# Crops cover this fraction range of the photograph's short side: from a detail to the whole frame.
_CROP_SCALE = (0.45, 1.0)


def demo_captions() -> list[str]:
    """The caption of each demo class, in class order (e.g. to build a tokenizer vocabulary)."""
    return [caption for _, _, caption in DEMO_CLASSES]


@functools.cache
def _photograph(loader: str) -> Image.Image:
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("The demo dataset needs scikit-image: pip install scikit-image.") from exc
    pixels = np.asarray(getattr(data, loader)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return Image.fromarray(pixels[..., :3].astype(np.uint8)).convert("RGB")


def check_crop_scale(crop_scale: object) -> tuple[float, float]:
    """A (low, high) pair with 0 < low <= high <= 1: the crop side as a fraction of the photograph's short side."""
    try:
        low, high = (float(v) for v in crop_scale)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"crop_scale must be a pair of numbers (low, high), got {crop_scale!r}.") from None
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got ({low}, {high}).")
    return low, high


@functools.lru_cache(maxsize=8)
def _render(
    resolution: int, samples_per_class: int, seed: int, crop_scale: tuple[float, float] = _CROP_SCALE
) -> torch.Tensor:
    """(classes * samples_per_class, 3, R, R) uint8 crops, class-major; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    crops = []
    for _, loader, _ in DEMO_CLASSES:
        photo = _photograph(loader)
        short = min(photo.size)
        for _ in range(samples_per_class):
            side = max(1, int(short * rng.uniform(*crop_scale)))
            x = int(rng.integers(0, photo.width - side + 1))
            y = int(rng.integers(0, photo.height - side + 1))
            crop = adm_center_crop(photo.crop((x, y, x + side, y + side)), resolution)
            crops.append(torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(crops)


@registries.dataset.register("demo", kind="class")
class DemoDataset(Dataset):
    """Class-labelled crops of scikit-image's photographs (10 classes, ``samples_per_class`` each).

    Crop positions and sizes come from ``seed`` only, so the dataset is identical on every machine and run.
    ``crop_scale`` bounds the crop side as a fraction of the photograph's short side (default from a detail
    to the whole frame; ``(1.0, 1.0)`` is the whole photograph's centre square, every crop alike). Returns ``{"image", "raw", "label"}`` samples like the ImageNet folder. ``flip=True`` adds a random
    horizontal flip (torch RNG), off by default as for ImageNet.
    """

    def __init__(
        self,
        resolution: int = 32,
        *,
        samples_per_class: int = 32,
        seed: int = 0,
        flip: bool = False,
        crop_scale: tuple[float, float] = _CROP_SCALE,
    ) -> None:
        self.resolution = check_resolution(resolution)
        if not 8 <= self.resolution <= 512:
            raise ValueError(f"The demo dataset's resolution must lie between 8 and 512 pixels, got {self.resolution}.")
        if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
            raise ValueError(f"samples_per_class must be a positive integer, got {samples_per_class!r}.")
        self.samples_per_class = samples_per_class
        self.seed = int(seed)
        self.flip = bool(flip)
        self.crop_scale = check_crop_scale(crop_scale)
        self.pixels = _render(self.resolution, samples_per_class, self.seed, self.crop_scale)

    @property
    def class_names(self) -> list[str]:
        return [name for name, _, _ in DEMO_CLASSES]

    @property
    def num_classes(self) -> int:
        return len(DEMO_CLASSES)

    def label(self, index: int) -> int:
        return index // self.samples_per_class

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Demo sample index {index} is out of range for {len(self)} samples.")
        index %= len(self)
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return sample_from_uint8(self.pixels[index], flip=flip, **self._target(index))

    def _target(self, index: int) -> dict[str, Any]:
        return {"label": self.label(index)}

    def describe(self) -> str:
        classes = ", ".join(f"{i}={name}" for i, name in enumerate(self.class_names))
        return (
            f"demo dataset: {len(self)} crops of scikit-image photographs at {self.resolution}px, "
            f"{self.num_classes} classes ({classes})"
        )


@registries.dataset.register("demo_captions", kind="text")
class DemoCaptionDataset(DemoDataset):
    """The demo crops with a short caption per class instead of a label (text-to-image demos).

    Returns ``{"image", "raw", "caption"}`` samples; ``captions`` lists the caption of each class.
    """

    @property
    def captions(self) -> list[str]:
        return demo_captions()

    def caption(self, index: int) -> str:
        return self.captions[self.label(index)]

    def _target(self, index: int) -> dict[str, Any]:
        return {"caption": self.caption(index)}

    def describe(self) -> str:
        captions = "; ".join(f'{name}: "{c}"' for name, c in zip(self.class_names, self.captions))
        return f"demo caption dataset: {len(self)} crops at {self.resolution}px, captions {captions}"
