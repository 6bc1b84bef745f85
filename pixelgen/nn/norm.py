"""RMSNorm with float32 statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight``, computed in float32 and cast back to the input dtype.

    Keeping the statistics in float32 matters under bf16/fp16 autocast: squaring fp16 activations of a few
    hundred already overflows, and bf16 means lose several digits.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm needs a positive dimension, got {dim}.")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm over {self.dim} channels got an input whose last dimension is {x.shape[-1]}.")
        # F.rms_norm is this formula; on CUDA it runs as one fused kernel instead of six elementwise passes.
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), (self.dim,), weight, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"
