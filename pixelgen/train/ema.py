"""Exponential moving average of the model weights.

``ema ← decay·ema + (1 − decay)·θ`` over every parameter, in fp32, once per optimiser step, with
``torch._foreach_*`` kernels. No warm-up and no bias correction; buffers are not averaged. By default
the frozen sin-cos ``pos_embed`` is averaged too: float32 rounding of ``0.9999·x + 1e-4·x`` moves some of its
entries by an ulp now and then, so the released EMA weights carry a slightly drifted table, and models load
and use the stored table as it is. ``average_frozen=False`` averages only the trainable parameters (the
frozen ones keep their initial values exactly).

The average lives in a full copy of the model (``ema.model``), which is what sample grids and exports use.
Under FSDP2 the copy is sharded like the model, so each rank averages its own shards locally.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Keeps ``model``'s fp32 exponential moving average in ``self.model`` (eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, average_frozen: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}.")
        if not isinstance(average_frozen, bool):
            raise TypeError(f"average_frozen must be True or False, got {average_frozen!r}.")
        self.decay = float(decay)
        self.average_frozen = average_frozen
        self.model = copy.deepcopy(model)
        self.model.to(torch.float32).eval().requires_grad_(False)
        self.track(model)

    def track(self, model: nn.Module) -> None:
        """(Re)pair the averaged parameters with ``model``'s; call again after anything that replaces the
        model's parameter objects (FSDP2's ``fully_shard`` does)."""
        self._pairs = self._match(model)

    def _match(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ema_params = dict(self.model.named_parameters())
        live, avg = [], []
        for name, p in model.named_parameters():
            if name not in ema_params:
                raise KeyError(f"The EMA copy has no parameter {name!r}; it must be a copy of the trained model.")
            if p.requires_grad or self.average_frozen:
                live.append(p)
                avg.append(ema_params[name])
        return live, avg

    @torch.no_grad()
    def update(self, where: torch.Tensor | None = None) -> None:
        """One EMA step; call once per optimiser step (not per micro-batch).

        ``where``: a 0-d bool tensor on the device; where it is False the average is left as it is (a step the
        trainer skipped on the device), without reading the flag back to the host.
        """
        live, avg = self._pairs
        if not live:
            return
        if where is not None:
            keep = torch.where(where, self.decay, 1.0).to(device=avg[0].device, dtype=torch.float32)
            torch._foreach_mul_(avg, keep)
            torch._foreach_add_(avg, torch._foreach_mul(live, (1.0 - keep).to(live[0].dtype)))
            return
        torch._foreach_mul_(avg, self.decay)
        # The live weights go in as they are (no per-step detach/cast list): under no_grad nothing is recorded,
        # and a low-precision weight is promoted to fp32 by the in-place add itself.
        torch._foreach_add_(avg, live, alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
