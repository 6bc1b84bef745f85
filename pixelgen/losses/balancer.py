"""The adaptive perceptual weight of late training, as a module with checkpointed state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones.base import backbone_of

__all__ = ["Balancer", "balance_parameter", "NO_GRADIENT"]

# What a balancer update does when the perceptual sum has no gradient at the balance parameter.
NO_GRADIENT = ("original", "keep")


def balance_parameter(model: nn.Module, name: str | None = None) -> torch.Tensor:
    """The parameter the balancer measures: ``model.balance_parameter()`` (the backbone protocol), or the
    parameter called ``name``; DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers are looked through."""
    inner = backbone_of(model)
    if name is not None:
        try:
            return inner.get_parameter(name)
        except AttributeError:
            raise AttributeError(
                f"The adaptive perceptual weight needs the backbone parameter '{name}', which {type(inner).__name__} does not have."
            ) from None
    method = getattr(inner, "balance_parameter", None)
    param = method() if callable(method) else None
    if not isinstance(param, torch.Tensor) or not param.requires_grad:
        raise AttributeError(
            f"The adaptive perceptual weight needs {type(inner).__name__}.balance_parameter() to return a trainable "
            f"parameter (the backbone protocol in pixelgen.backbones.base), got {type(param).__name__}."
        )
    return param


class Balancer(nn.Module):
    """VQGAN-style weight that rescales the perceptual terms so their gradient matches flow matching's.

    From ``start_step`` on, every ``every`` steps: ``d = clamp(‖∇_W FM‖ / (‖∇_W P‖ + eps), 0, max_weight)`` with W
    the backbone's balance parameter (``model.balance_parameter()``, the final linear layer's weight for JiT;
    ``param_name`` names another) and P the λ-weighted perceptual sum; then ``w <- momentum·w +
    (1-momentum)·d``, in float32 on the model's device (no host sync). Before that w = 1. ``start_step=None``
    disables it (w stays 1).

    ``no_gradient``: when P has no gradient at W (no sample passed the noise gate), ``"original"`` (default)
    takes the ratio against a zero gradient, as the original does with its mask-multiplied terms: d is clamped
    to ``max_weight`` and w jumps towards it; ``"keep"`` leaves w unchanged when that gradient is absent or
    zero (such a batch says nothing about the perceptual gradient).

    ``d`` is averaged over processes when torch.distributed is initialised (``sync=True``), so every rank uses
    the same weight, and ``w`` is part of the state dict (``get_extra_state``), so a resumed run continues with
    it (both listed in docs/parity.md). Every micro-batch of a qualifying step updates it (gradient
    accumulation updates it repeatedly).
    """

    def __init__(
        self,
        start_step: int | None = 400_000,
        every: int = 50,
        *,
        max_weight: float = 100.0,
        momentum: float = 0.8,
        eps: float = 1e-4,
        param_name: str | None = None,
        no_gradient: str = "original",
        sync: bool = True,
    ):
        super().__init__()
        if start_step is not None and (not isinstance(start_step, int) or start_step < 0):
            raise ValueError(f"start_step must be a non-negative integer or None, got {start_step!r}.")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
        if no_gradient not in NO_GRADIENT:
            raise ValueError(f"no_gradient must be one of {', '.join(NO_GRADIENT)}, got {no_gradient!r}.")
        self.start_step, self.every = start_step, every
        self.max_weight, self.momentum, self.eps = max_weight, momentum, eps
        self.param_name, self.no_gradient, self.sync = param_name, no_gradient, sync
        # Device tensors, moved by .to() and saved through get_extra_state; reading them is the only host sync.
        # Not buffers: DDP would broadcast buffers from rank 0 at every forward.
        self.value = torch.ones((), dtype=torch.float32)
        self.count = torch.zeros((), dtype=torch.int64)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.value, self.count = fn(self.value), fn(self.count)
        return self

    @property
    def weight(self) -> float:
        """The current weight as a Python float (one host sync; the objective uses ``value``)."""
        return float(self.value)

    @property
    def updates(self) -> int:
        """How many ratios have been folded in (one host sync)."""
        return int(self.count)

    def due(self, step: int | None) -> bool:
        return self.start_step is not None and step is not None and step >= self.start_step and step % self.every == 0

    def update(self, model: nn.Module, reference: torch.Tensor, perceptual: torch.Tensor) -> torch.Tensor:
        """Fold in the gradient-norm ratio of ``reference`` (FM) and ``perceptual``; returns ``value``.

        Across processes the ratio is averaged over the ranks that have one (with ``no_gradient="keep"`` a
        rank without a perceptual gradient has none; with none anywhere the weight is unchanged).
        """
        param = balance_parameter(model, self.param_name)
        grads = [
            torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)[0] if loss.requires_grad else None
            for loss in (reference, perceptual)
        ]
        zero = torch.zeros((), device=param.device)
        ref_norm = zero if grads[0] is None else grads[0].detach().float().norm()
        percept_norm = zero if grads[1] is None else grads[1].detach().float().norm()
        ratio = (ref_norm / (percept_norm + self.eps)).clamp(0.0, self.max_weight)
        # "keep": a zero gradient (a masked-out graph) counts as none, so both gating computations agree
        has_ratio = (percept_norm > 0).float() if self.no_gradient == "keep" else torch.ones_like(ratio)
        stats = torch.stack([ratio * has_ratio, has_ratio])  # (ratio, 1) from a rank that has one, else (0, 0)
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        total, ranks = stats[0], stats[1]
        new = self.momentum * self.value + (1.0 - self.momentum) * (total / ranks.clamp_min(1.0))
        self.value.copy_(torch.where(ranks > 0, new, self.value))
        self.count.add_((ranks > 0).long())
        return self.value

    def get_extra_state(self) -> dict[str, Any]:
        return {"weight": self.weight, "updates": self.updates}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "weight" not in state:
            raise ValueError(f"Balancer state must be a dict with a 'weight', got {state!r}.")
        self.value.fill_(float(state["weight"]))
        self.count.fill_(int(state.get("updates", 0)))

    def extra_repr(self) -> str:
        return f"start_step={self.start_step}, every={self.every}, no_gradient={self.no_gradient!r}"
