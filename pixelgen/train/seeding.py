"""The trainer's uses of the seeding rules (:mod:`pixelgen.seeding` holds the rules themselves).

* Weights: the model and the objective are built under ``seed`` on every rank (identical initial weights).
* Training draws: after building, rank r's global generators are seeded with ``seed + r`` (ranks seeded apart).
* Data order: before each epoch the DataLoader gets its own generator from (seed, rank, epoch), so the global
  stream is untouched by when an iterator happens to be created (a resumed run creates one at another moment).
* Per-sample seeds: with ``per_sample_noise`` sample i of the run draws its t, noise and condition drop from
  :func:`pixelgen.seeding.sample_seeds` (seed, global index i), however a global batch is split.
* Resume on another world size: the saved per-rank streams cannot be mapped, so ranks are re-seeded from
  (seed, rank, step); the run continues correctly but not bit-identically.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..seeding import offset_seed, sample_seeds, seed_only

__all__ = ["seed_everything", "rank_seed", "loader_generator", "reseed_seed", "sample_seeds"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    return offset_seed(seed, (rank, 1))


def loader_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    return seed_only(offset_seed(0, (seed, 1_000_003), (rank, 7919), (epoch, 1)))


def reseed_seed(seed: int, rank: int, step: int) -> int:
    return offset_seed(seed, (rank, 1), (step, 7919))
