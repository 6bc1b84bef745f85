"""Datasets read from folders: ImageNet as an ImageFolder (spec §6.8) and image + caption folders for
text-to-image fine-tuning (spec §6.9, SFT)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from pixelgen.registry import registries

from .counters import SampleCounters
from .transforms import adm_center_crop, check_resolution, load_rgb, make_sample, resize_center_crop

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "CaptionFolderDataset"]

log = logging.getLogger(__name__)

# torchvision's ImageFolder list, so the same files (and so the same indices) are found.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The original's caption folder pairs only these (compared case-insensitively, which covers its ".JPEG").
CAPTION_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Sub-folder names that mean "dataset root given instead of a split" rather than classes.
_SPLIT_NAMES = {"train", "val", "validation", "test"}


def _check_folder(root: object, what: str) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"The {what} must be a path, got {type(root).__name__}.")
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"The {what} '{path}' does not exist.")
    if not path.is_dir():
        raise NotADirectoryError(f"The {what} '{path}' is not a folder.")
    return path


def _walk_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` with one of ``extensions`` (any case), in a stable sorted walk order."""
    found = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        found.extend(Path(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions))
    return found


@registries.dataset.register("imagenet", kind="class")
class ImageFolderDataset(Dataset):
    """ImageNet (or any class-per-folder tree) with ADM's centre crop.

    Classes are the sorted sub-folder names (index = position), images are found recursively as
    torchvision's ImageFolder finds them, so labels and order match the original's ``PixImageNet``.
    No flip by default, as the original; ``flip=True`` adds a random horizontal flip (drawn from torch's
    RNG in the process that loads the sample).

    Returns ``{"image", "raw", "label"}`` samples (see :mod:`pixelgen.data.transforms`).
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 256, *, flip: bool = False) -> None:
        self.root = _check_folder(root, "image folder")
        self.resolution = check_resolution(resolution)
        self.flip = bool(flip)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise ValueError(
                f"The image folder '{self.root}' has no class sub-folders; it must hold one sub-folder of images "
                "per class."
            )
        if set(self.classes) <= _SPLIT_NAMES:
            raise ValueError(
                f"The image folder '{self.root}' holds the splits {', '.join(self.classes)} rather than class "
                "folders; point it at the split to use, e.g. its 'train' folder."
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        empty = []
        for name in self.classes:
            files = _walk_files(self.root / name, IMAGE_EXTENSIONS)
            if not files:
                empty.append(name)
            self.samples.extend((f, self.class_to_idx[name]) for f in files)
        if not self.samples:
            raise ValueError(
                f"The image folder '{self.root}' has {len(self.classes)} class folders but no images "
                f"({', '.join(IMAGE_EXTENSIONS)})."
            )
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise ValueError(f"The image folder '{self.root}' has class folders without images: {shown}.")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except Exception as exc:
            raise OSError(f"Cannot read the image '{path}': {exc}") from exc
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return make_sample(adm_center_crop(image, self.resolution), flip=flip, label=label)

    def describe(self) -> str:
        return f"ImageFolder '{self.root}': {len(self)} images in {self.num_classes} classes at {self.resolution}px"


@registries.dataset.register("caption_folder", kind="text")
class CaptionFolderDataset(Dataset):
    """Images paired with a same-stem ``.txt`` caption anywhere under ``root`` (the original's SFT data).

    Transform as the original: ``Resize(resolution)`` of the short side, then ``CenterCrop(resolution)``; no
    size filter and no caption augmentation. Images without a caption file are left out (counted in
    ``unpaired``). A corrupt image is skipped, counted in ``stats()["corrupt"]`` and replaced by the next
    readable one, so a bad file never stops a run.

    Returns ``{"image", "raw", "caption"}`` samples.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 512) -> None:
        self.root = _check_folder(root, "caption folder")
        self.resolution = check_resolution(resolution)
        self.samples: list[tuple[Path, Path]] = []
        self.unpaired = 0
        for image_path in _walk_files(self.root, CAPTION_IMAGE_EXTENSIONS):
            caption_path = image_path.with_suffix(".txt")
            if caption_path.is_file():
                self.samples.append((image_path, caption_path))
            else:
                self.unpaired += 1
        if not self.samples:
            raise ValueError(
                f"The caption folder '{self.root}' has no image ({', '.join(CAPTION_IMAGE_EXTENSIONS)}) with a "
                "caption file of the same name ending in .txt."
            )
        if self.unpaired:
            log.warning("%d images under '%s' have no .txt caption and are left out.", self.unpaired, self.root)
        self.counters = SampleCounters(("corrupt",))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.samples)):
            image_path, caption_path = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_rgb(image_path)
                caption = caption_path.read_text(encoding="utf-8").strip()
            except Exception as exc:  # a bad file must not stop the run
                self.counters.add("corrupt")
                log.warning("Skipping unreadable caption sample '%s': %s", image_path, exc)
                continue
            return make_sample(resize_center_crop(image, self.resolution), caption=caption)
        raise OSError(f"No image under the caption folder '{self.root}' could be read.")

    def stats(self) -> dict[str, int]:
        """Samples skipped so far (summed over DataLoader workers)."""
        return self.counters.totals()

    def describe(self) -> str:
        return f"caption folder '{self.root}': {len(self)} image-caption pairs at {self.resolution}px"
