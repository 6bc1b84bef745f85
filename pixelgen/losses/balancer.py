"""The adaptive perceptual weight of late training (spec §4.8), as a module with checkpointed state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Balancer", "balance_parameter"]


def balance_parameter(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter ``name`` of ``model``, looking through DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    inner = model
    while True:
        wrapped = [getattr(inner, a) for a in ("module", "_orig_mod") if isinstance(getattr(inner, a, None), nn.Module)]
        if not wrapped:
            break
        inner = wrapped[0]
    try:
        return inner.get_parameter(name)
    except AttributeError:
        raise AttributeError(
            f"The adaptive perceptual weight needs the backbone parameter '{name}', which {type(inner).__name__} does not have."
        ) from None


class Balancer(nn.Module):
    """VQGAN-style weight that rescales the perceptual terms so their gradient matches flow matching's.

    From ``start_step`` on, every ``every`` steps: ``d = clamp(‖∇_W FM‖ / (‖∇_W P‖ + eps), 0, max_weight)`` with W
    = ``param_name`` of the backbone and P the λ-weighted perceptual sum; then ``w <- momentum·w +
    (1-momentum)·d``. Before that w = 1. ``start_step=None`` disables it (w stays 1).

    Differences from the original, both on purpose (spec §10.1.3): ``d`` is averaged over processes when
    torch.distributed is initialised (``sync=True``), so every rank uses the same weight; and ``w`` is part of the
    state dict (``get_extra_state``), so a resumed run continues with it instead of restarting at 1. As in the
    original, every micro-batch of a qualifying step updates it (gradient accumulation updates it repeatedly).
    """

    def __init__(
        self,
        start_step: int | None = 400_000,
        every: int = 50,
        *,
        max_weight: float = 100.0,
        momentum: float = 0.8,
        eps: float = 1e-4,
        param_name: str = "final_layer.linear.weight",
        sync: bool = True,
    ):
        super().__init__()
        if start_step is not None and (not isinstance(start_step, int) or start_step < 0):
            raise ValueError(f"start_step must be a non-negative integer or None, got {start_step!r}.")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
        self.start_step, self.every = start_step, every
        self.max_weight, self.momentum, self.eps = max_weight, momentum, eps
        self.param_name, self.sync = param_name, sync
        self.weight = 1.0
        self.updates = 0

    def due(self, step: int | None) -> bool:
        return self.start_step is not None and step is not None and step >= self.start_step and step % self.every == 0

    def update(self, model: nn.Module, reference: torch.Tensor, perceptual: torch.Tensor) -> float:
        """Fold in the gradient-norm ratio of ``reference`` (FM) and ``perceptual`` at the balance parameter.

        A perceptual sum without a gradient path (e.g. no sample passed the gate) gives no ratio (the original
        would fail in ``autograd.grad`` there); across processes the ratio is averaged over the ranks that have
        one, and with none the weight is unchanged.
        """
        param = balance_parameter(model, self.param_name)
        grads = [
            torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)[0] if loss.requires_grad else None
            for loss in (reference, perceptual)
        ]
        # (ratio, 1) from a rank that can measure it, (0, 0) otherwise; every rank joins the all-reduce.
        stats = torch.zeros(2, device=param.device)
        if grads[1] is not None:
            ref_norm = torch.zeros((), device=param.device) if grads[0] is None else grads[0].detach().float().norm()
            stats[0] = (ref_norm / (grads[1].detach().float().norm() + self.eps)).clamp(0.0, self.max_weight)
            stats[1] = 1.0
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        total, count = stats.tolist()
        if count == 0:
            return self.weight
        self.weight = self.momentum * self.weight + (1.0 - self.momentum) * total / count
        self.updates += 1
        return self.weight

    def get_extra_state(self) -> dict[str, Any]:
        return {"weight": float(self.weight), "updates": int(self.updates)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "weight" not in state:
            raise ValueError(f"Balancer state must be a dict with a 'weight', got {state!r}.")
        self.weight = float(state["weight"])
        self.updates = int(state.get("updates", 0))

    def extra_repr(self) -> str:
        return f"start_step={self.start_step}, every={self.every}, weight={self.weight:.4g}"
