"""Event counters (corrupt / skipped samples) that DataLoader worker processes can update and the training
loop can read and log."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

__all__ = ["SampleCounters"]


class SampleCounters:
    """Named integer counters in shared memory.

    Each worker process writes only its own row (no lost updates between processes); ``totals()`` in the
    main process sums the rows. Rows are created up front, so counters made before the DataLoader starts
    its workers are seen by all of them.
    """

    max_workers = 256

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = tuple(names)
        self._table = torch.zeros(self.max_workers + 1, len(self.names), dtype=torch.int64).share_memory_()

    def add(self, name: str, count: int = 1) -> None:
        info = get_worker_info()
        row = self.max_workers if info is None else info.id % self.max_workers
        self._table[row, self.names.index(name)] += count

    def totals(self) -> dict[str, int]:
        return dict(zip(self.names, self._table.sum(0).tolist()))
