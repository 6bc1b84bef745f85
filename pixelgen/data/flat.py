"""A flat folder of images (no class sub-folders): one class, for unconditional training on your own images."""

from __future__ import annotations

from pathlib import Path

from pixelgen.registry import registries

from .folders import IMAGE_EXTENSIONS, RobustImageFiles, _walk_files

__all__ = ["FlatImageFolderDataset"]


@registries.dataset.register("image_folder_flat", kind="class")
class FlatImageFolderDataset(RobustImageFiles):
    """Every image under ``root`` (recursively, sorted) with label 0, ADM's centre crop as ``imagenet``.

    The single class is named after the folder (``class_names``), so grids and exports say what was learnt.
    Unreadable, huge and tiny images are handled as by ``imagenet`` (``max_bad_images``, ``max_pixels``,
    ``min_image_size``).
    """

    def _find_samples(self) -> list[tuple[Path, int]]:
        samples = [(path, 0) for path in _walk_files(self.root, IMAGE_EXTENSIONS)]
        if not samples:
            raise ValueError(f"The image folder '{self.root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        self.classes = [self.root.name or "images"]
        return samples

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return 1

    def describe(self) -> str:
        return f"image folder '{self.root}': {len(self)} images (one class) at {self.resolution}px"
