"""Backbones: the class-to-image and text-to-image JiT, their presets, and building by name.

from pixelgen import build_model, list_models
model = build_model("pixelgen_xl_16")                 # a preset
model = build_model("jit", hidden_size=256, depth=4)  # the generic builder, original argument names
meta = build_model("pixelgen_xl_16", device="meta")   # no memory: parameter counts, shapes
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pixelgen.registry import registries
from pixelgen.utils.checks import check_device

from .base import Backbone, backbone_of
from .common import values_checked_by_caller
from .jit import JIT_PRESETS, JiT, build_jit
from .jit_t2i import JIT_T2I_PRESETS, JiTT2I, build_jit_t2i

__all__ = [
    "Backbone",
    "backbone_of",
    "JIT_PRESETS",
    "JIT_T2I_PRESETS",
    "JiT",
    "JiTT2I",
    "build_jit",
    "build_jit_t2i",
    "build_model",
    "list_models",
    "register_model",
    "values_checked_by_caller",
]

register_model = registries.backbone.register
"""Register a backbone builder: ``@register_model("my_net")`` (same as ``registries.backbone.register``)."""


def build_model(
    name: str,
    /,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the backbone registered as ``name`` with keyword ``overrides`` (original argument names).

    ``device="meta"`` builds without allocating memory (parameter counts, shapes). ``dtype`` casts the
    floating-point parameters after building.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
    if device is not None and str(device) != "meta":
        device = check_device(device)
    if device is None:
        model = registries.backbone.build(name, **overrides)
    else:
        with torch.device(device):
            model = registries.backbone.build(name, **overrides)
    if not isinstance(model, nn.Module):
        raise TypeError(f"Backbone builder '{name}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model if dtype is None else model.to(dtype)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered backbones (built-in and from plugins) matching a glob pattern."""
    return registries.backbone.list(pattern)
