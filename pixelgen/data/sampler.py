"""A distributed, resumable epoch sampler that shows every sample exactly once per epoch.

Layout of an epoch (the same on every rank, so no communication is needed):

* the order is ``torch.randperm(N)`` from a generator seeded with ``seed + epoch`` (with one rank and no
  remainder this is the order of ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)``);
* the order is cut into *global* batches of ``world_size * batch_size`` consecutive indices, and global batch
  ``i`` is split into ``world_size`` contiguous parts, rank ``r`` taking part ``r``. A global batch therefore
  holds the same samples whatever the world size, which is what makes a 2-rank run match a 1-rank run with
  the doubled batch;
* **remainder** (``N`` not a multiple of the global batch): every rank must take the same number of steps
  (DDP), and every sample must be seen exactly once, so the last, short global batch is shared out as evenly
  as possible (parts differ by at most one sample: some ranks get a smaller final batch). If it has fewer
  samples than there are ranks, it is merged into the previous global batch instead (some ranks then get
  ``batch_size + 1`` samples in that step), so that no rank ever gets an empty batch. ``drop_last=True``
  drops the short global batch instead (equal batches everywhere; those samples wait for a later epoch's
  order). Padding the epoch by repeating samples, as ``DistributedSampler`` does, would show some samples twice
  (see docs/parity.md).

Position: ``epoch`` and ``consumed`` (global samples of this epoch already delivered to the training loop).
:class:`PositionedLoader` (see :func:`pixelgen.data.build_loader`) advances it as batches reach the loop, so
``state_dict()`` saved at any step lets ``load_state_dict()`` continue with exactly the batches the run would
have seen next; the epoch rolls over by itself after its last batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from ..seeding import offset_seed, seed_only

__all__ = ["EpochBatchSampler", "rank_and_world_size"]


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size: from ``torch.distributed`` when initialised, else from the
    ``RANK``/``WORLD_SIZE`` variables torchrun sets, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    return value


class EpochBatchSampler:
    """Batches of dataset indices for one rank (use as a DataLoader's ``batch_sampler``).

    Args:
        num_samples: dataset length ``N`` (or pass the dataset itself).
        batch_size: samples per rank per step.
        rank, world_size: default from :func:`rank_and_world_size`.
        seed: the per-epoch permutation uses ``seed + epoch``; identical on all ranks.
        shuffle: ``False`` keeps the dataset order (still split across ranks).
        drop_last: drop the short last global batch (see the module docstring for the default).
    """

    def __init__(
        self,
        num_samples: Any,
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(num_samples, int) and hasattr(num_samples, "__len__"):
            num_samples = len(num_samples)
        self.num_samples = _check_int(num_samples, "num_samples", 1)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        default_rank, default_world = rank_and_world_size()
        self.world_size = _check_int(default_world if world_size is None else world_size, "world_size", 1)
        self.rank = _check_int(default_rank if rank is None else rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be below world_size {self.world_size}, got {self.rank}.")
        self.seed = _check_int(seed, "seed", 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        global_batch = self.world_size * self.batch_size
        if self.drop_last and self.num_samples < global_batch:
            raise ValueError(
                f"With drop_last the dataset needs at least world_size x batch_size = {global_batch} samples, "
                f"but it has {self.num_samples}."
            )
        if self.num_samples < self.world_size:
            raise ValueError(
                f"The dataset has {self.num_samples} samples, fewer than the {self.world_size} ranks, so some rank "
                "would get no data."
            )
        self.epoch = 0
        self.consumed = 0

    # -- layout --------------------------------------------------------------------------------------
    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's global order of dataset indices (identical on every rank)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = seed_only(offset_seed(self.seed, (epoch, 1)))
        return torch.randperm(self.num_samples, generator=g)

    def _layout(self, start: int) -> tuple[range, int]:
        """The global batches from position ``start`` to the epoch end: their first positions in the epoch
        order, and where the last one ends (batch ``i`` runs up to the next one's start). O(1): ``advance``
        asks on every step."""
        gb, n = self.global_batch_size, self.num_samples
        begins = range(start, n, gb)
        if begins and n - begins[-1] < gb:  # a short last global batch
            if self.drop_last:
                return begins[:-1], begins[-1]
            if n - begins[-1] < self.world_size and len(begins) > 1:  # too short to give every rank a sample
                return begins[:-1], n  # merged into the previous batch
        return begins, n

    def __len__(self) -> int:
        """Steps left in the current epoch from the current position (a whole epoch when at its start)."""
        return len(self._layout(self.consumed)[0])

    def __iter__(self) -> Iterator[list[int]]:
        # Materialised now, so that later calls to advance() cannot change an iteration in progress.
        order = self.order(self.epoch)
        begins, end = self._layout(self.consumed)
        ends = [*begins[1:], end]
        return iter([torch.tensor_split(order[b:e], self.world_size)[self.rank].tolist() for b, e in zip(begins, ends)])

    # -- position ------------------------------------------------------------------------------------
    def advance(self) -> None:
        """Record that this step's batch reached the training loop (rolls to the next epoch at its end)."""
        begins, end = self._layout(self.consumed)
        if not begins:
            raise RuntimeError("advance() was called past the end of the epoch.")
        if len(begins) == 1:  # that was the epoch's last step
            self.epoch += 1
            self.consumed = 0
        else:
            self.consumed = begins[1]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (the ``DistributedSampler`` idiom)."""
        self.epoch = _check_int(epoch, "epoch", 0)
        self.consumed = 0

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position. A different world size or batch size is allowed: the run then
        continues from the same place in the same order (each remaining sample still exactly once), but the
        batches are cut differently from the ones the uninterrupted run would have seen."""
        for key in ("epoch", "consumed"):
            if key not in state:
                raise KeyError(f"The sampler state has no '{key}' entry; it is not an EpochBatchSampler state.")
        if state.get("num_samples", self.num_samples) != self.num_samples:
            raise ValueError(
                f"The saved sampler position is for a dataset of {state['num_samples']} samples, but this one has "
                f"{self.num_samples}."
            )
        if state.get("seed", self.seed) != self.seed or state.get("shuffle", self.shuffle) != self.shuffle:
            raise ValueError("The saved sampler position was made with a different seed or shuffle setting.")
        consumed = _check_int(state["consumed"], "consumed", 0)
        if consumed >= self.num_samples:
            raise ValueError(f"The saved position {consumed} lies past the end of a {self.num_samples}-sample epoch.")
        self.epoch = _check_int(state["epoch"], "epoch", 0)
        self.consumed = consumed
        if not self._layout(consumed)[0]:  # only drop_last samples were left under the new batch layout
            self.set_epoch(self.epoch + 1)
