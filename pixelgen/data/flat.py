"""A flat folder of images (no class sub-folders): one class, for unconditional training on your own images."""

from __future__ import annotations

import os

from PIL import Image

from pixelgen.registry import registries

from .folders import IMAGE_EXTENSIONS, RobustImageFiles, _check_folder, _walk_files
from .transforms import check_resolution

__all__ = ["FlatImageFolderDataset"]


@registries.dataset.register("image_folder_flat", kind="class")
class FlatImageFolderDataset(RobustImageFiles):
    """Every image under ``root`` (recursively, sorted) with label 0, ADM's centre crop as ``imagenet``.

    The single class is named after the folder (``class_names``), so grids and exports say what was learnt.
    Unreadable, huge and tiny images are handled as by ``imagenet`` (``max_bad_images``, ``max_pixels``,
    ``min_image_size``).
    """

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
        self.samples = [(path, 0) for path in _walk_files(self.root, IMAGE_EXTENSIONS)]
        if not self.samples:
            raise ValueError(f"The image folder '{self.root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        self.classes = [self.root.name or "images"]
        self._make_flags()

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return 1

    def describe(self) -> str:
        return f"image folder '{self.root}': {len(self)} images (one class) at {self.resolution}px"
