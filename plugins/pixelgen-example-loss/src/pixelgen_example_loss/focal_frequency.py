"""Focal frequency loss as a pixelgen loss term.

Both images go to the frequency domain (orthonormal 2-D FFT per channel). The distance of each frequency is
``|F̂ - F|²``; it is weighted by ``|F̂ - F|^alpha`` normalised to [0, 1] per image and channel and treated as a
constant, so the frequencies the model currently gets most wrong dominate the gradient.
"""

from __future__ import annotations

import torch

from pixelgen.encoders.base import at_least_float32
from pixelgen.losses import LossContext, LossTerm
from pixelgen.utils.checks import check_image_batch, check_same_shape


def focal_frequency_distance(pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Per-sample focal frequency distance (B,) between (B, C, H, W) images."""
    check_image_batch(pred, "pred")
    check_same_shape(pred, target, "pred", "target")
    diff = torch.fft.fft2(at_least_float32(pred), norm="ortho") - torch.fft.fft2(at_least_float32(target), norm="ortho")
    dist = diff.real.pow(2) + diff.imag.pow(2)
    with torch.no_grad():  # in [0, 1]: each value over its image-and-channel maximum
        weight = dist.sqrt().pow(alpha)
        weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (weight * dist).flatten(1).mean(dim=1)


class FocalFrequencyTerm(LossTerm):
    """Focal frequency loss between x̂ and x (both in [-1, 1]); gated and perceptual, like LPIPS."""

    gated = True
    perceptual = True
    default_weight = 0.1

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}.")
        self.alpha = alpha

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        return focal_frequency_distance(ctx.x_hat, ctx.x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
