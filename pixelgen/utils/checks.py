"""Input checks shared by every public entry point: each failure is one clear sentence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_tensor",
    "check_image_batch",
    "check_finite",
    "check_labels",
    "check_timesteps",
    "check_same_shape",
]


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(x: object, name: str, *, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {_shape(x)}.")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    if floating is False and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}.")
    return x


def check_image_batch(
    x: object,
    name: str = "x",
    *,
    channels: int | None = None,
    size: int | Sequence[int] | None = None,
    multiple_of: int | None = None,
) -> torch.Tensor:
    """A (B, C, H, W) floating tensor with the expected channels / size / divisibility."""
    x = check_tensor(x, name, ndim=4, floating=True)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels, got shape {_shape(x)} (expected (B, {channels}, H, W))."
        )
    h, w = x.shape[-2:]
    if size is not None:
        hs, ws = (size, size) if isinstance(size, int) else tuple(size)
        if (h, w) != (hs, ws):
            raise ValueError(f"{name} must be {hs}x{ws} pixels for this model, got {h}x{w}.")
    if multiple_of is not None and (h % multiple_of or w % multiple_of):
        raise ValueError(f"{name} is {h}x{w} pixels, which is not a multiple of the patch size {multiple_of}.")
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise FloatingPointError(f"{name} contains {bad} NaN or infinite value(s).")
    return x


def _min_max(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor with a single device-to-host transfer (NaN propagates into both)."""
    low, high = torch.aminmax(x.detach())
    return tuple(torch.stack([low, high]).tolist())


def check_labels(
    y: object, num_classes: int, name: str = "y", *, allow_null: bool = True, batch: int | None = None
) -> torch.Tensor:
    """Integer labels in [0, num_classes) (or == num_classes, the null class, when allowed)."""
    y = check_tensor(y, name, ndim=1, floating=False)
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"{name} has {y.shape[0]} labels but the batch has {batch} images.")
    hi = num_classes if allow_null else num_classes - 1
    if not y.numel():
        return y
    low, high = _min_max(y)
    if low < 0 or high > hi:
        raise ValueError(
            f"{name} must be class indices in [0, {hi}]"
            + (f" ({num_classes} is the null class)" if allow_null else "")
            + f", got values in [{low}, {high}]."
        )
    return y


def check_timesteps(t: object, batch: int, name: str = "t") -> torch.Tensor:
    t = check_tensor(t, name, floating=True)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) (one time per image), got {_shape(t)}.")
    if not t.numel():
        return t
    low, high = _min_max(t)
    if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
        got = "NaN" if math.isnan(low) else f"values in [{low:.4g}, {high:.4g}]"
        raise ValueError(f"{name} must lie in [0, 1] (0 = noise, 1 = data), got {got}.")
    return t


def check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {_shape(a)} and {_shape(b)}.")
