"""Data pipelines: ImageNet with ADM's centre crop, the built-in demo sets, caption shards and folders, a
distributed resumable epoch sampler and a fast loader.

Datasets are registered in ``registries.dataset``: ``imagenet``, ``demo``, ``demo_captions``,
``webdataset_captions``, ``caption_folder``, ``image_folder_flat``. Every dataset yields dicts with ``image`` (3, S, S) in [-1, 1],
``raw`` (3, S, S) in [0, 1] and ``label`` (int) or ``caption`` (str); :func:`collate` batches them.

Example::

    from pixelgen.data import build_dataset, build_loader

    data = build_dataset("demo", resolution=32)
    loader = build_loader(data, batch_size=16, num_workers=0)   # rank/world from torchrun's environment
    for batch in loader:                                        # the rest of the current epoch
        ...                                                     # batch["image"], batch["raw"], batch["label"]
    state = loader.state_dict()                                 # epoch + position, for checkpoints
"""

from __future__ import annotations

from typing import Any

from pixelgen.registry import registries

from .captions import CAPTION_PREFIXES, CaptionPrefixAugment
from .counters import SampleCounters
from .demo import DEMO_CLASSES, DemoCaptionDataset, DemoDataset, demo_captions
from .flat import FlatImageFolderDataset
from .folders import IMAGE_EXTENSIONS, BadImageLimitError, CaptionFolderDataset, ImageFolderDataset
from .loader import PositionedLoader, build_loader, collate
from .sampler import EpochBatchSampler, rank_and_world_size
from .shards import CaptionShardDataset, expand_shards
from .transforms import AdmCropPlan, adm_center_crop, adm_crop_plan, make_sample, resize_center_crop

__all__ = [
    "AdmCropPlan",
    "BadImageLimitError",
    "CAPTION_PREFIXES",
    "CaptionFolderDataset",
    "CaptionPrefixAugment",
    "CaptionShardDataset",
    "DEMO_CLASSES",
    "DemoCaptionDataset",
    "DemoDataset",
    "EpochBatchSampler",
    "FlatImageFolderDataset",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "PositionedLoader",
    "SampleCounters",
    "adm_center_crop",
    "adm_crop_plan",
    "build_dataset",
    "build_loader",
    "collate",
    "demo_captions",
    "expand_shards",
    "list_datasets",
    "make_sample",
    "rank_and_world_size",
    "resize_center_crop",
]


def build_dataset(name: str, /, **kwargs: Any) -> Any:
    """Build the dataset registered as ``name`` (``imagenet``, ``demo``, ``webdataset_captions`` ...)."""
    return registries.dataset.build(name, **kwargs)


def list_datasets(pattern: str = "*") -> list[str]:
    return registries.dataset.list(pattern)
