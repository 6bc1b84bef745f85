"""DINOv2 features for FD-DINOv2 (the Fréchet distance in DINOv2 feature space, Stein et al. 2023).

The protocol of the FD-DINOv2 reference implementation (dgm-eval): images resized bicubically (antialiased) to
224 x 224, ImageNet-normalised, and the final-norm CLS token of DINOv2 as the feature. We run it on the frozen
DINOv2 of :mod:`pixelgen.encoders` (``dinov2_vitb14`` by default, the network REPA and P-DINO use; dgm-eval
uses ``dinov2_vitl14``, so compare numbers only with numbers made with the same variant, which the results
JSON records through the extractor's ``tag``). Position embeddings are interpolated as the hub model does,
through the encoder's own rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelgen.eval.inception import check_uint8_images, weights_digest

__all__ = ["DinoV2Features", "build_dinov2_features"]


class DinoV2Features(nn.Module):
    """uint8 (B, 3, H, W) → ``{"dinov2": (B, D)}``: the final-norm CLS token at ``resolution`` px.

    ``encoder``: a :class:`pixelgen.encoders.DINOv2Encoder`; ``tag`` names the weights (statistic caches).
    """

    def __init__(self, encoder: nn.Module, tag: str, resolution: int = 224):
        super().__init__()
        patch = int(getattr(encoder, "patch_size", 14))
        if resolution % patch:
            raise ValueError(f"resolution must be a multiple of the DINOv2 patch size {patch}, got {resolution}.")
        self.encoder = encoder
        self.tag = tag
        self.resolution = resolution

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_uint8_images(images)
        enc = self.encoder
        x = images.to(enc.mean.device).float() / 255.0
        x = F.interpolate(
            x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
        x = ((x - enc.mean) / enc.std).to(enc.dtype)
        (tokens,) = enc.normed_tokens(x, [len(enc.backbone.blocks) - 1])
        return {"dinov2": tokens[:, 0].float()}


def build_dinov2_features(
    name: str = "dinov2_vitb14",
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    resolution: int = 224,
    model_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> DinoV2Features:
    """FD-DINOv2 features from ``pixelgen.build_encoder(name, ...)``; ``weights`` as for the encoder
    (``None``: offline-first resolution, a path, or ``"random"``: weights drawn with ``seed``, for tests)."""
    from pixelgen.encoders import build_encoder
    from pixelgen.encoders.dinov2 import dinov2_weight_source
    from pixelgen.utils.hub import resolve_weights

    options = {"model_overrides": dict(model_overrides)} if model_overrides else {}
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, so the tag names the same weights every time
            torch.manual_seed(seed)
            encoder = build_encoder(name, "random", device=device, **options)
        config = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
        tag = f"{name}-random{seed}-{config}"
    else:
        path = resolve_weights(dinov2_weight_source(name), weights)
        encoder = build_encoder(name, path, device=device, **options)
        tag = f"{name}-{weights_digest(Path(path))}"
    return DinoV2Features(encoder, f"{tag}-cls{resolution}", resolution)
