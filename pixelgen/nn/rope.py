"""2-D rotary position embeddings: the class-to-image axial variant and the text-to-image variant with
linspace positions.

Both rotate adjacent channel pairs ``(2j, 2j+1)`` of each head by a per-token angle; they differ only in
which angle each pair gets. Tables are computed on the tensor's device at call time (cheap: tokens × head_dim/2
sines), so nothing depends on where the model was built and any grid size works.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RotaryTable", "axial_rope_2d", "linspace_rope_2d", "apply_rotary_pairs"]


class RotaryTable(NamedTuple):
    """Per-token, per-pair rotation: ``cos`` and ``sin`` of shape (tokens, head_dim // 2), float32."""

    cos: torch.Tensor
    sin: torch.Tensor


def _check_head_dim(head_dim: int) -> None:
    if head_dim <= 0 or head_dim % 4:
        raise ValueError(
            f"2-D RoPE needs a head dimension divisible by 4 (two axes of rotation pairs), got {head_dim}."
        )


def axial_rope_2d(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    *,
    theta: float = 10000.0,
    prefix_len: int = 0,
    device: torch.device | str | None = None,
) -> RotaryTable:
    """Class-to-image axial RoPE for a row-major ``grid_h × grid_w`` grid, with ``prefix_len`` identity rows first.

    Pairs ``[0, head_dim/4)`` rotate by ``row · g_m`` and pairs ``[head_dim/4, head_dim/2)`` by ``col · g_m``,
    with integer positions and ``g_m = θ^(−4m/head_dim)``. The identity rows (cos 1, sin 0) are for the
    in-context label tokens, which get no rotation.
    """
    _check_head_dim(head_dim)
    axis_dim = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, device=device)[: axis_dim // 2].float() / axis_dim)
    rows = torch.arange(grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device, dtype=torch.float32).repeat(grid_h)
    angles = torch.cat([rows[:, None] * freqs[None, :], cols[:, None] * freqs[None, :]], dim=1)
    cos, sin = angles.cos(), angles.sin()
    if prefix_len:
        cos = torch.cat([cos.new_ones(prefix_len, cos.shape[1]), cos])
        sin = torch.cat([sin.new_zeros(prefix_len, sin.shape[1]), sin])
    return RotaryTable(cos, sin)


def linspace_rope_2d(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    *,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> RotaryTable:
    """Text-to-image RoPE: pair ``2k`` rotates by ``x · f_k``, pair ``2k+1`` by ``y · f_k``, ``f_k = θ^(−4k/head_dim)``.

    [QUIRK, reproduced] positions are not integers: ``x = linspace(0, grid_h, grid_w)`` (the column coordinate)
    and ``y = linspace(0, grid_w, grid_h)`` (the row coordinate), so the spacing is G/(G−1) and the end-points
    are swapped on non-square grids. That is what the released weights were trained with.
    """
    _check_head_dim(head_dim)
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim)
    x = torch.linspace(0, grid_h, grid_w, device=device, dtype=torch.float32).repeat(grid_h)
    y = torch.linspace(0, grid_w, grid_h, device=device, dtype=torch.float32).repeat_interleave(grid_w)
    angles = torch.stack([x[:, None] * freqs[None, :], y[:, None] * freqs[None, :]], dim=-1).flatten(1)
    return RotaryTable(angles.cos(), angles.sin())


def apply_rotary_pairs(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., tokens, head_dim): ``(a, b) → (a·cos − b·sin, b·cos + a·sin)``.

    Computed in float32 and cast back to ``x``'s dtype. In eager mode each pair is read as the complex number
    ``a + ib`` and multiplied by ``cos + i·sin``: one kernel over the activations instead of seven (a hot spot of
    the eager forward and backward). Under ``torch.compile`` the same products are written as real operations,
    which Inductor fuses (it generates no code for complex tensors). The two agree to float32 rounding.
    """
    tokens, pairs = table.cos.shape
    if x.shape[-2] != tokens or x.shape[-1] != 2 * pairs:
        raise ValueError(f"RoPE table covers {tokens} tokens x {2 * pairs} channels but the input is {tuple(x.shape)}.")
    x32 = x.float().unflatten(-1, (pairs, 2))
    cos, sin = table.cos.to(x.device), table.sin.to(x.device)
    if torch.compiler.is_compiling():
        a, b = x32[..., 0], x32[..., 1]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        out = torch.view_as_real(torch.view_as_complex(_pairs_adjacent(x32)) * torch.complex(cos, sin))
    return out.flatten(-2).to(x.dtype)


def _pairs_adjacent(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., pairs, 2) laid out as complex numbers need (each pair adjacent, even strides and offset); the
    activations of the backbones always are, an odd view is copied."""
    if x.stride(-1) == 1 and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1]):
        return x
    return x.contiguous()
