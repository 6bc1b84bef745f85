"""SwiGLU feed-forward layer shared by the class-to-image and text-to-image JiT blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwiGLU", "swiglu_hidden_size"]


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float) -> int:
    """The class-to-image hidden width: ``int(int(H·mlp_ratio)·2/3)`` (B 2048, L 2730, XL 3072, H 3413).

    The 2/3 factor keeps the parameter count of a gated FFN close to that of a plain ``mlp_ratio`` MLP.
    """
    return int(int(hidden_size * mlp_ratio) * 2 / 3)


class SwiGLU(nn.Module):
    """``w3(dropout(silu(a) · b))`` with ``(a, b)`` the two halves of one fused projection ``w12``.

    Class-to-image: ``hidden = swiglu_hidden_size(H, 4)``, biases, dropout ``proj_drop``.
    Text-to-image: ``hidden = 4H``, no biases, no dropout.
    """

    def __init__(self, dim: int, hidden: int, *, bias: bool = True, drop: float = 0.0):
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"SwiGLU needs positive sizes, got dim={dim}, hidden={hidden}.")
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.drop = nn.Dropout(drop)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(a) * b))
