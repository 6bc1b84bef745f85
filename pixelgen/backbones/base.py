"""The backbone protocol: what the objective, the trainer and the samplers read from any backbone family.

A family states these once, on its class (``Backbone`` subclasses inherit the defaults):

* ``arch`` (registry name of its generic builder), ``cond_kind`` (``"class"`` or ``"text"``), ``config``;
* ``hidden_size``: width of the tokens ``forward(..., return_layer=k)`` returns (the REPA projector's input);
* ``patch_size``: pixels per token side (the frozen encoders' token grid and LPIPS's resize rule follow it);
* ``input_size`` and ``in_channels``;
* :meth:`Backbone.balance_parameter`: the weight at which the adaptive perceptual weight compares gradient
  norms (the last layer before pixels: the final linear layer's weight for JiT).

:func:`backbone_of` looks through DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, so the
objective can be built from, and run with, a wrapped model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Backbone", "backbone_of", "backbone_facts"]


class Backbone(nn.Module):
    """Base class of backbone families (see the module doc for the attributes a family states)."""

    arch: str
    cond_kind: str
    config: dict[str, Any]
    hidden_size: int
    patch_size: int
    input_size: int
    in_channels: int

    def balance_parameter(self) -> torch.Tensor:
        """The parameter whose gradient norms the adaptive perceptual weight compares (override per family)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its balance_parameter().")


def backbone_of(model: nn.Module) -> nn.Module:
    """``model`` with DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers removed."""
    inner = model
    while True:
        wrapped = [getattr(inner, a) for a in ("module", "_orig_mod") if isinstance(getattr(inner, a, None), nn.Module)]
        if not wrapped:
            return inner
        inner = wrapped[0]


def backbone_facts(model: nn.Module) -> dict[str, Any]:
    """``hidden_size`` and ``patch_size`` of ``model`` (wrappers removed), checked to be positive integers."""
    inner = backbone_of(model)
    facts = {}
    for name in ("hidden_size", "patch_size"):
        value = getattr(inner, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(
                f"The objective reads {name} from the backbone, but {type(inner).__name__}.{name} is {value!r}; "
                f"a backbone family states hidden_size, patch_size and balance_parameter() (pixelgen.backbones.base)."
            )
        facts[name] = value
    return facts
