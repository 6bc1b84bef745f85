"""Batching: the collate function and a fast DataLoader that keeps the epoch sampler's position."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .sampler import EpochBatchSampler

__all__ = ["collate", "PositionedLoader", "build_loader"]


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack sample dicts into a batch dict: tensors are stacked, ``label`` (and other integers) become a
    long tensor, floats a float tensor, and strings such as ``caption`` stay a list."""
    if not samples:
        raise ValueError("Cannot collate an empty list of samples.")
    keys = list(samples[0])
    for s in samples[1:]:
        if list(s) != keys:
            raise ValueError(f"Samples in a batch must share their keys, got {keys} and {list(s)}.")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool) or not isinstance(first, (int, float)):
            batch[key] = values
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = torch.tensor(values, dtype=torch.float32)
    return batch


class PositionedLoader:
    """A DataLoader over an :class:`EpochBatchSampler` that advances the sampler's position each time a batch
    reaches the caller, so ``state_dict()`` always names the next batch the loop will get.

    Iterating it runs the rest of the current epoch; iterate again for the next one.
    """

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler) -> None:
        self.loader = loader
        self.sampler = sampler

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            self.sampler.advance()
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: EpochBatchSampler | None = None,
    num_workers: int = 4,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int = 8,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = collate,
) -> PositionedLoader | DataLoader:
    """A fast loader: ``num_workers`` worker processes (4, prefetch 8), pinned memory when
    CUDA is available, workers kept alive across epochs.

    A map-style dataset gets an :class:`EpochBatchSampler` (``sampler`` or one made from ``seed``, ``rank``,
    ``world_size``, ``drop_last``) and comes back as a :class:`PositionedLoader`. An ``IterableDataset`` (the
    caption shards) splits itself across ranks and workers and comes back as a plain ``DataLoader``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}.")
    workers = {}
    if num_workers > 0:
        workers = {
            "persistent_workers": True if persistent_workers is None else persistent_workers,
            "prefetch_factor": prefetch_factor,
        }
    common = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        "collate_fn": collate_fn,
        **workers,
    }
    if isinstance(dataset, IterableDataset):
        if sampler is not None:
            raise ValueError("An IterableDataset splits itself across ranks and workers; do not pass a sampler.")
        return DataLoader(dataset, batch_size=batch_size, **common)
    if sampler is None:
        sampler = EpochBatchSampler(
            len(dataset), batch_size, rank=rank, world_size=world_size, seed=seed, drop_last=drop_last
        )
    elif sampler.num_samples != len(dataset) or sampler.batch_size != batch_size:
        raise ValueError(
            f"The sampler was made for {sampler.num_samples} samples in batches of {sampler.batch_size}, but the "
            f"dataset has {len(dataset)} samples and batch_size is {batch_size}."
        )
    return PositionedLoader(DataLoader(dataset, batch_sampler=sampler, **common), sampler)
