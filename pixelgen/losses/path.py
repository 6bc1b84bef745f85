"""CFG condition dropout for training (the path itself lives in :mod:`pixelgen.flow`)."""

from __future__ import annotations

from collections.abc import Mapping

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
    """Replace each sample's condition by the unconditional one with probability ``p`` (CFG training).

    Class labels (integer (B,)) become ``null_label``; text embeddings (float (B, L, D)) become ``uncond``
    ((L, D), (1, L, D) or (B, L, D), e.g. the embedding of the empty prompt). ``draws``: (B,) uniform numbers
    to use instead of drawing new ones (a sample is dropped when its number is below ``p``). A structured
    condition (a mapping such as ``{"emb": (B, L, D), "mask": (B, L)}``) needs ``uncond`` of the same keys: every
    leaf of a dropped sample is replaced by the unconditional leaf (so the mask follows its embeddings).
    """
    if isinstance(cond, Mapping):
        return _drop_structured(cond, p, uncond, generator, draws)
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


def _drop_structured(cond: Mapping, p: float, uncond, generator, draws) -> dict:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"The condition dropout probability must lie in [0, 1], got {p!r}.")
    if not isinstance(uncond, Mapping) or set(uncond) != set(cond):
        raise ValueError(
            f"Dropping a structured condition needs uncond with the same keys ({', '.join(sorted(cond))})."
        )
    leaves = {k: check_tensor(v, f"cond[{k!r}]") for k, v in cond.items()}
    first = next(iter(leaves.values()))
    batch = first.shape[0] if first.ndim else 0
    if any(v.ndim == 0 or v.shape[0] != batch for v in leaves.values()):
        raise ValueError("Every leaf of a structured condition must have one row per sample.")
    if p == 0.0:
        return dict(cond)
    if draws is not None and tuple(draws.shape) != (batch,):
        raise ValueError(f"draws must have shape ({batch},), got {tuple(draws.shape)}.")
    drop = (draw("uniform", (batch,), first.device, generator) if draws is None else draws.to(first.device)) < p
    out = {}
    for key, leaf in leaves.items():
        other = check_tensor(uncond[key], f"uncond[{key!r}]").to(device=leaf.device, dtype=leaf.dtype)
        if other.ndim == leaf.ndim - 1:
            other = other.unsqueeze(0)
        if other.shape[1:] != leaf.shape[1:] or other.shape[0] not in (1, batch):
            raise ValueError(
                f"uncond[{key!r}] of shape {tuple(other.shape)} does not match cond[{key!r}] of shape {tuple(leaf.shape)}."
            )
        out[key] = torch.where(drop.reshape(-1, *([1] * (leaf.ndim - 1))), other.expand_as(leaf), leaf)
    return out
