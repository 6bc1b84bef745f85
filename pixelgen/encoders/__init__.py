"""Frozen networks used by the losses: DINOv2 (timm) and LPIPS, with offline-first weight resolution.

``build_encoder(name, weights=None | "random" | path, dtype=..., device=..., **options)`` builds any
registered encoder (``registries.encoder``): ``dinov2_vits14``/``dinov2_vitb14``/``dinov2_vitl14``/
``dinov2_vitg14`` and ``lpips`` (``net="vgg"|"alex"|"squeeze"``). ``weights=None`` follows the rule of
:mod:`pixelgen.utils.hub` (explicit path -> torch hub cache -> HF cache -> download when online -> a
``WeightsNotFoundError`` naming the file); random weights only when asked with ``weights="random"``.
"""

from __future__ import annotations

import torch

from ..registry import registries
from .base import FrozenEncoder, WeightsSpec, check_pixel_range, load_weight_file
from .dinov2 import DINOV2_VARIANTS, DINOv2Encoder, convert_dinov2_state_dict, dinov2_weight_source
from .lpips_net import LPIPS_TRUNKS, LPIPSEncoder, lpips_weight_source

__all__ = [
    "build_encoder",
    "FrozenEncoder",
    "DINOv2Encoder",
    "LPIPSEncoder",
    "DINOV2_VARIANTS",
    "LPIPS_TRUNKS",
    "convert_dinov2_state_dict",
    "dinov2_weight_source",
    "lpips_weight_source",
    "load_weight_file",
    "check_pixel_range",
]


def build_encoder(
    name: str,
    weights: WeightsSpec = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    **options,
) -> torch.nn.Module:
    """Build the frozen encoder registered as ``name`` (eval mode, no parameter gradients)."""
    if not isinstance(name, str):
        raise TypeError(f"An encoder name must be a string, got {type(name).__name__}.")
    return registries.encoder.build(name, weights=weights, dtype=dtype, device=device, **options)
