"""A flat folder of images (no class sub-folders): one class, for unconditional training on your own images."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

from pixelgen.registry import registries

from .folders import IMAGE_EXTENSIONS, _check_folder, _walk_files
from .transforms import adm_center_crop, check_resolution, load_rgb, make_sample

__all__ = ["FlatImageFolderDataset"]


@registries.dataset.register("image_folder_flat", kind="class")
class FlatImageFolderDataset(Dataset):
    """Every image under ``root`` (recursively, sorted) with label 0, ADM's centre crop as ``imagenet``.

    The single class is named after the folder (``class_names``), so grids and exports say what was learnt.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 256, *, flip: bool = False) -> None:
        self.root = _check_folder(root, "image folder")
        self.resolution = check_resolution(resolution)
        self.flip = bool(flip)
        self.samples = _walk_files(self.root, IMAGE_EXTENSIONS)
        if not self.samples:
            raise ValueError(f"The image folder '{self.root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        self.classes = [self.root.name or "images"]

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.samples[index]
        try:
            image = load_rgb(path)
        except Exception as exc:
            raise OSError(f"Cannot read the image '{path}': {exc}") from exc
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return make_sample(adm_center_crop(image, self.resolution), flip=flip, label=0)

    def describe(self) -> str:
        return f"image folder '{self.root}': {len(self)} images (one class) at {self.resolution}px"
