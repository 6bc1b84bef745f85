"""Fixed 2-D sin-cos position table and the sinusoidal timestep embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sincos_2d_table", "timestep_features", "TimestepEmbedder"]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim): ``[sin(pos·ω_k)]_k ++ [cos(pos·ω_k)]_k`` with ``ω_k = 10000^(−k/(dim/2))``."""
    half = dim // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_table(
    dim: int,
    grid_h: int,
    grid_w: int | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The MAE-style fixed table of shape (grid_h·grid_w, dim) for a row-major patch grid.

    Channels ``[0, dim/2)`` encode the **column** index and ``[dim/2, dim)`` the **row** index (the order the
    released checkpoints were trained with). Computed in float64, then cast, so tables for any grid are
    reproducible to the last bit.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if dim % 4:
        raise ValueError(f"The 2-D sin-cos table needs a dimension divisible by 4, got {dim}.")
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"The 2-D sin-cos table needs a non-empty grid, got {grid_h}x{grid_w}.")
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    table = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return table.to(dtype)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B, dim) float32 features ``[cos(t·f_k)]_k ++ [sin(t·f_k)]_k`` with ``f_k = max_period^(−k/(dim/2))``.

    Cosine comes first (unlike most DiT code). ``t`` is used as given: PixelGen never scales it by 1000.
    """
    if t.ndim != 1:
        raise ValueError(f"Timesteps must be a 1-D tensor (B,), got shape {tuple(t.shape)}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


def _autocast_enabled(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # device types without autocast (meta)
        return False


class TimestepEmbedder(nn.Module):
    """Sinusoidal features followed by ``Linear(dim→H), SiLU, Linear(H→H)`` (parameters ``mlp.0``, ``mlp.2``).

    ``max_period``: 1e4 for the class-to-image JiT, 10 for the text-to-image JiT.
    ``cast_features_to_input``: the text-to-image model casts the float32 features to ``t``'s dtype before the
    MLP; the class-to-image model feeds them as float32.
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_dim: int = 256,
        max_period: float = 10000.0,
        cast_features_to_input: bool = False,
    ):
        super().__init__()
        if max_period <= 1.0:
            raise ValueError(f"max_period must be larger than 1, got {max_period}.")
        self.frequency_dim = frequency_dim
        self.max_period = float(max_period)
        self.cast_features_to_input = cast_features_to_input
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.frequency_dim, self.max_period)
        if self.cast_features_to_input:
            features = features.to(t.dtype)
        elif features.dtype != self.mlp[0].weight.dtype and not _autocast_enabled(features.device):
            # float32 features feed the MLP as they are (autocast casts them, as in training); a model cast to
            # another dtype (bf16 inference, float64 checks) needs them in its own dtype.
            features = features.to(self.mlp[0].weight.dtype)
        return self.mlp(features)
