"""Datasets read from folders: ImageNet as an ImageFolder and image + caption folders for text-to-image
fine-tuning."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from pixelgen.registry import registries

from .counters import SampleCounters
from .transforms import adm_center_crop, check_resolution, load_rgb, make_sample, resize_center_crop

__all__ = ["IMAGE_EXTENSIONS", "BadImageLimitError", "ImageFolderDataset", "CaptionFolderDataset"]

log = logging.getLogger(__name__)

# torchvision's ImageFolder list, so the same files (and so the same indices) are found.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# A caption folder pairs only these, as the released text-to-image fine-tuning data was read (compared
# case-insensitively, which covers ".JPEG").
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
    """Files under ``folder`` with one of ``extensions`` (any case), in a stable sorted walk order; symlinked
    folders are followed except those that lead back to one of their own ancestors (a loop)."""
    loops = _LoopFreeFiles(folder, extensions)

    def walk():
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if loops._chain(os.path.normpath(os.path.join(dirpath, d))) is not None]
            yield dirpath, filenames

    found = []
    for dirpath, filenames in sorted(walk()):
        found.extend(Path(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions))
    return found


class BadImageLimitError(RuntimeError):
    """More images of a dataset failed to load than its ``max_bad_images`` allows."""


class _LoopFreeFiles:
    """``is_valid_file`` for torchvision's ``make_dataset``: an image extension, and a path that does not pass
    through a symlinked folder leading back to one of its own ancestors (a loop would index the same files again
    at every level until the OS gives up)."""

    def __init__(self, root: Path, extensions: tuple[str, ...]) -> None:
        real_root = Path(os.path.realpath(root))
        self.root = os.path.normpath(root)
        # A link from inside the tree to the root or above it is a loop too.
        self._chains: dict[str, frozenset[str]] = {self.root: frozenset({str(real_root), *map(str, real_root.parents)})}
        self._loops: set[str] = set()
        self.extensions = extensions
        self.skipped = 0

    def _chain(self, folder: str) -> frozenset[str] | None:
        """Real paths of ``folder`` and its ancestors along the walked path; None when it is inside a loop."""
        if folder in self._chains:
            return self._chains[folder]
        if folder in self._loops:
            return None
        parent = os.path.dirname(folder)
        if parent == folder or not folder.startswith(self.root):
            return None
        up = self._chain(parent)
        real = os.path.realpath(folder)
        if up is None or real in up:
            self._loops.add(folder)
            return None
        self._chains[folder] = up | {real}
        return self._chains[folder]

    def __call__(self, path: str) -> bool:
        from torchvision.datasets.folder import has_file_allowed_extension

        if not has_file_allowed_extension(path, self.extensions):
            return False
        if self._chain(os.path.normpath(os.path.dirname(path))) is None:
            self.skipped += 1
            return False
        return True


def _check_limit(value: object, name: str, *, minimum: int = 0, none: bool = True) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer{' or None' if none else ''}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


class RobustImageFiles(Dataset):
    """Image files with labels (``self.samples``: ``[(path, label)]``) read robustly; see :class:`ImageFolderDataset`
    for what happens to unreadable, huge and tiny images."""

    root: Path
    resolution: int
    flip: bool
    samples: list[tuple[Path, int]]

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 256,
        *,
        flip: bool = False,
        max_bad_images: int | None = 100,
        max_pixels: int | None = Image.MAX_IMAGE_PIXELS,
        min_image_size: int | None = None,
    ) -> None:
        self.root = _check_folder(root, "image folder")
        self.resolution = check_resolution(resolution)
        self.flip = bool(flip)
        self._robust_options(max_bad_images, max_pixels, min_image_size)
        self.samples = self._find_samples()
        self._make_flags()

    def _find_samples(self) -> list[tuple[Path, int]]:
        """The ``(path, label)`` pairs under ``self.root``; subclasses say how they are found (and set ``classes``)."""
        raise NotImplementedError

    def _robust_options(self, max_bad_images: object, max_pixels: object, min_image_size: object) -> None:
        self.max_bad_images = _check_limit(max_bad_images, "max_bad_images")
        self.max_pixels = _check_limit(max_pixels, "max_pixels", minimum=1)
        if min_image_size is None:
            min_image_size = max(1, self.resolution // 8)
        self.min_image_size = _check_limit(min_image_size, "min_image_size", none=False)

    def _make_flags(self) -> None:
        # One flag per image in shared memory: every DataLoader worker sees what the others found bad, each bad
        # file is counted once, and it is not read again.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        self._small = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        image = load_rgb(path, max_pixels=self.max_pixels)
        if min(image.size) < self.min_image_size and not self._small[index]:
            self._small[index] = True
            log.warning(
                "The image '%s' is only %dx%d pixels (below min_image_size=%d); it is upscaled to %d px.",
                path,
                *image.size,
                self.min_image_size,
                self.resolution,
            )
        return image

    def _mark_bad(self, index: int, exc: Exception) -> None:
        if not self._bad[index]:
            self._bad[index] = True
            log.warning("Skipping the unreadable image '%s': %s", self.samples[index][0], exc)
        bad = int(self._bad.sum())
        if self.max_bad_images is not None and bad > self.max_bad_images:
            raise BadImageLimitError(
                f"{bad} images under '{self.root}' could not be read, more than max_bad_images="
                f"{self.max_bad_images} allows (the last: '{self.samples[index][0]}': {exc})."
            )

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.samples)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"index must be an integer in [0, {n}), got {index!r}.")
        index %= n
        for step in range(n):
            candidate = (index + step) % n
            if self._bad[candidate]:
                continue
            try:
                image = self._load(candidate)
            except BadImageLimitError:
                raise
            except Exception as exc:  # one bad file must not end the run
                self._mark_bad(candidate, exc)
                continue
            label = self.samples[candidate][1]
            flip = self.flip and bool(torch.rand(()) < 0.5)
            return make_sample(adm_center_crop(image, self.resolution), flip=flip, label=label)
        raise BadImageLimitError(f"None of the {n} images under '{self.root}' could be read.")

    def stats(self) -> dict[str, int]:
        """Images found unreadable and images below ``min_image_size`` so far (all DataLoader workers)."""
        return {"corrupt": int(self._bad.sum()), "small": int(self._small.sum())}


@registries.dataset.register("imagenet", kind="class")
class ImageFolderDataset(RobustImageFiles):
    """ImageNet (or any class-per-folder tree) with ADM's centre crop.

    Classes and files are found by torchvision's ``find_classes`` / ``make_dataset`` (sorted sub-folder names,
    index = position; images found recursively), so labels and order match those of the released class-to-image
    models; files reached through a symlink loop are left out (counted in ``loop_skipped``). No flip by default,
    as they were trained; ``flip=True`` adds a random horizontal flip (drawn from torch's RNG in the process
    that loads the sample).

    An image that cannot be read (corrupt, truncated, more than ``max_pixels`` pixels: a decompression bomb) is
    skipped: the sample at that index is replaced by the next readable image in index order, so no other index
    moves and a resumed run sees exactly the batches it would have seen. Such images are counted once each
    (``stats()["corrupt"]``, summed over DataLoader workers); when more than ``max_bad_images`` have failed
    (``None``: no limit) loading stops with :class:`BadImageLimitError`. An image whose short side is below
    ``min_image_size`` pixels (default: an eighth of ``resolution``) is used but warned about once (it is
    upscaled a lot); ``stats()["small"]`` counts them. 16-bit greyscale images are scaled to 8 bits (a plain
    RGB conversion would saturate them to white).

    Returns ``{"image", "raw", "label"}`` samples (see :mod:`pixelgen.data.transforms`).
    """

    def _find_samples(self) -> list[tuple[Path, int]]:
        from torchvision.datasets.folder import find_classes, make_dataset

        if not any(e.is_dir() for e in os.scandir(self.root)):
            raise ValueError(
                f"The image folder '{self.root}' has no class sub-folders; it must hold one sub-folder of images "
                "per class."
            )
        self.classes, self.class_to_idx = find_classes(str(self.root))
        if set(self.classes) <= _SPLIT_NAMES:
            raise ValueError(
                f"The image folder '{self.root}' holds the splits {', '.join(self.classes)} rather than class "
                "folders; point it at the split to use, e.g. its 'train' folder."
            )
        valid = _LoopFreeFiles(self.root, IMAGE_EXTENSIONS)
        found = make_dataset(str(self.root), self.class_to_idx, is_valid_file=valid, allow_empty=True)
        samples = [(Path(path), label) for path, label in found]
        self.loop_skipped = valid.skipped
        if self.loop_skipped:
            log.warning(
                "%d files under '%s' were reached through a symlink loop and are left out.", valid.skipped, self.root
            )
        if not samples:
            raise ValueError(
                f"The image folder '{self.root}' has {len(self.classes)} class folders but no images "
                f"({', '.join(IMAGE_EXTENSIONS)})."
            )
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in samples})
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise ValueError(f"The image folder '{self.root}' has class folders without images: {shown}.")
        return samples

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        return f"ImageFolder '{self.root}': {len(self)} images in {self.num_classes} classes at {self.resolution}px"


@registries.dataset.register("caption_folder", kind="text")
class CaptionFolderDataset(Dataset):
    """Images paired with a same-stem ``.txt`` caption anywhere under ``root`` (text-to-image fine-tuning data).

    Transform: ``Resize(resolution)`` of the short side, then ``CenterCrop(resolution)``; no
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
