"""CFG condition dropout for training (the path itself lives in :mod:`pixelgen.flow`)."""

from __future__ import annotations

import torch

from ..seeding import draw
from ..utils.checks import check_tensor

__all__ = ["drop_condition"]


def drop_condition(
    cond: torch.Tensor,
    p: float,
    *,
    null_label: int | None = None,
    uncond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace each sample's condition by the unconditional one with probability ``p`` (spec §4.10).

    Class labels (integer (B,)) become ``null_label``; text embeddings (float (B, L, D)) become ``uncond``
    ((L, D), (1, L, D) or (B, L, D), e.g. the embedding of the empty prompt). ``draws``: (B,) uniform numbers
    to use instead of drawing new ones (a sample is dropped when its number is below ``p``).
    """
    check_tensor(cond, "cond")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"The condition dropout probability must lie in [0, 1], got {p!r}.")
    if p == 0.0:
        return cond
    if draws is not None and tuple(draws.shape) != (cond.shape[0],):
        raise ValueError(f"draws must have shape ({cond.shape[0]},), got {tuple(draws.shape)}.")
    drop = (draw("uniform", (cond.shape[0],), cond.device, generator) if draws is None else draws.to(cond.device)) < p
    if not cond.is_floating_point():
        if cond.ndim != 1:
            raise ValueError(f"Class labels must have shape (B,), got {tuple(cond.shape)}.")
        if null_label is None:
            raise ValueError("Dropping class labels needs null_label (the model's num_classes).")
        return torch.where(drop, torch.full_like(cond, null_label), cond)
    if uncond is None:
        raise ValueError("Dropping text conditions needs the unconditional embedding (batch['uncond']).")
    uncond = uncond.to(device=cond.device, dtype=cond.dtype)
    if uncond.ndim == cond.ndim - 1:
        uncond = uncond.unsqueeze(0)
    if uncond.ndim != cond.ndim or uncond.shape[1:] != cond.shape[1:] or uncond.shape[0] not in (1, cond.shape[0]):
        raise ValueError(
            f"The unconditional embedding of shape {tuple(uncond.shape)} does not match conditions of shape {tuple(cond.shape)}."
        )
    return torch.where(drop.reshape(-1, *([1] * (cond.ndim - 1))), uncond.expand_as(cond), cond)
