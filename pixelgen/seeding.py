"""Seeding: one rule to make a random stream from a seed and integer keys.

``generator(seed, *keys)`` is a CPU ``torch.Generator`` whose state depends on (seed, keys) alone, mixed by
numpy's ``SeedSequence`` so that neighbouring keys give unrelated streams. pixelgen uses it wherever a draw must
not depend on how work is batched or split: sample i of a generation run uses ``generator(seed, i)``.

Named rules that keep other behaviour reproducible:

- :func:`seed_only`: ``torch.Generator().manual_seed(seed)``, the original's rule for its evaluation noise
  (every prompt's image k starts from the same noise) and for per-sample training draws from explicit seeds;
- :func:`sample_seeds`: the trainer's 62-bit per-sample seeds from (run seed, global sample index);
- :func:`offset_seed`: ``seed + Σ weight·key``, the integer mixes of the trainer's and the loaders' streams
  (rank, epoch, step), kept so that existing runs resume onto the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "generator",
    "derive_seed",
    "seed_only",
    "offset_seed",
    "sample_seeds",
    "NOISE_RULES",
    "noise_generators",
    "draw",
]


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed that depends on (seed, *keys) only."""
    entropy = [_check_int(seed, "seed")] + [_check_int(k, "key") for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by :func:`derive_seed` of (seed, *keys)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def seed_only(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """``torch.Generator().manual_seed(seed)``: the stream of a bare seed (the original's evaluation noise)."""
    return torch.Generator(device=device).manual_seed(_check_int(seed, "seed"))


def offset_seed(seed: int, *weighted_keys: tuple[int, int]) -> int:
    """``seed + Σ weight·key`` for (key, weight) pairs: the integer mixes of existing training streams."""
    return int(seed) + sum(int(k) * int(w) for k, w in weighted_keys)


_SEED_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / golden ratio as int64: consecutive indices land far apart


def sample_seeds(seed: int, first_index: int, count: int) -> torch.Tensor:
    """One 62-bit seed per global sample index ``first_index .. first_index + count − 1`` (int64, pure)."""
    idx = torch.arange(first_index, first_index + count, dtype=torch.int64)
    return ((idx + 1) * _SEED_MIX + seed) & ((1 << 62) - 1)


NOISE_RULES: dict[str, Callable[[int, int], torch.Generator]] = {
    "per_index": lambda seed, key: generator(seed, key),
    "seed_only": lambda seed, key: seed_only(key),
}
"""How item ``key`` of a generation run gets its noise stream: ``per_index`` from (seed, key); ``seed_only``
from the key alone (the key *is* the seed, as in the original's evaluation sets)."""


def noise_generators(rule: str, seed: int, keys: Sequence[int]) -> list[torch.Generator]:
    """One generator per key under a named rule of :data:`NOISE_RULES`."""
    if rule not in NOISE_RULES:
        raise ValueError(f"Unknown noise rule {rule!r}; choose one of {', '.join(NOISE_RULES)}.")
    return [NOISE_RULES[rule](seed, k) for k in keys]


def draw(
    kind: str, shape: tuple[int, ...], device: torch.device | str | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard-normal (``"normal"``) or uniform float32 numbers, drawn on the generator's device (so seeded
    runs agree across devices), then moved to ``device``."""
    where = generator.device if generator is not None else device
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=where, dtype=torch.float32).to(device)
