"""What every frozen network shares: frozen state, dtype/device handling, weight files, input-range checks."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..utils.checks import looks_like_unit_range
from ..utils.hub import WeightSource, resolve_weights
from ..utils.io import CheckpointError, load_safetensors, safe_torch_load

__all__ = [
    "FrozenEncoder",
    "WeightsSpec",
    "resolve_encoder_weights",
    "load_weight_file",
    "parse_dtype",
    "check_pixel_range",
    "check_pixel_ranges",
    "at_least_float32",
]

WeightsSpec = str | os.PathLike | None
"""``None``: follow the resolution rule; ``"random"``: random initialisation; anything else: a file path."""

RANDOM = "random"


class FrozenEncoder(nn.Module):
    """A network used only as a fixed feature extractor inside losses.

    It is always in eval mode (``train()`` is a no-op, so dropout never fires, whatever the enclosing module's
    mode), none of its parameters require gradients, and gradients still flow through it to its *inputs*.
    """

    def freeze(self, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None) -> FrozenEncoder:
        """Cast to ``dtype`` (a torch dtype or its name, see :func:`parse_dtype`) on ``device``; freeze; eval mode."""
        self.to(device=device, dtype=parse_dtype(dtype))
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - frozen networks stay in eval mode
        return super().train(False)

    @staticmethod
    def state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
        """The sorted ``(missing, unexpected, wrong shape)`` keys of ``state`` against ``module``'s own state dict."""
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        return missing, unexpected, wrong

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64: loss arithmetic never runs in half precision, never loses float64."""
    return x if x.dtype == torch.float64 else x.float()


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16`` / ``"bf16"`` / ``"bfloat16"`` / ``None`` (keep float32) -> a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
        "fp64": "float64",
    }
    value = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype or its name (e.g. 'bfloat16'), got {dtype!r}.")
    return value


def resolve_encoder_weights(weights: WeightsSpec, source: WeightSource) -> Path | None:
    """``None`` for ``weights="random"``, else the local path given by the resolution rule of ``utils.hub``."""
    if isinstance(weights, str) and weights == RANDOM:
        return None
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, 'random' or a file path, got {type(weights).__name__}.")
    return resolve_weights(source, weights)


def load_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a .safetensors or torch file (a ``{'state_dict'|'model': ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state: object = load_safetensors(path)
    else:
        state = safe_torch_load(
            path,
            consent="encoder weights are read as tensors only: save them as a state dict of tensors or safetensors",
        )
    if isinstance(state, Mapping) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return dict(state)


def check_pixel_range(x: torch.Tensor, name: str, expected: tuple[float, float], margin: float = 0.5) -> None:
    """Fail when ``x`` leaves ``expected`` by more than ``margin``: the signature of a range mix-up.

    Small excursions are allowed on purpose (network predictions are not clamped).
    """
    check_pixel_ranges([(x, name, expected)], margin)


def check_pixel_ranges(
    checks: Sequence[tuple[torch.Tensor, str, tuple[float, float]]],
    margin: float = 0.5,
    *,
    natural_images: Sequence[str] = (),
) -> None:
    """:func:`check_pixel_range` for several ``(tensor, name, expected)`` on one device, with one host sync in all.

    The checks named in ``natural_images`` hold batches of real images: expected in [-1, 1] but without a single
    negative value, they were given in [0, 1] (the margin alone would let that pass).
    """
    extrema = torch.stack([torch.stack(torch.aminmax(x.detach())).float() for x, _, _ in checks]).tolist()
    for (x, name, (lo, hi)), (mn, mx) in zip(checks, extrema):
        if math.isnan(mn) or math.isnan(mx):
            raise ValueError(f"{name} must hold values in [{lo:g}, {hi:g}], got NaN values.")
        if mn >= lo - margin and mx <= hi + margin:
            if (lo, hi) == (-1.0, 1.0) and name in natural_images and looks_like_unit_range(mn, mx, x.shape[0]):
                raise ValueError(
                    f"{name} must hold values in [-1, 1], got {x.shape[0]} images in [{mn:.4g}, {mx:.4g}] without a "
                    "negative value (it looks like a [0, 1] image: pass image * 2 - 1)."
                )
            continue
        if mx > 2.0 * (hi + margin) and mx > 10:
            guess = " (it looks like 0-255 pixel values)"
        elif (lo, hi) == (0.0, 1.0) and mn < -margin:
            guess = " (it looks like a [-1, 1] image where a [0, 1] one is expected)"
        elif (lo, hi) == (-1.0, 1.0) and mn >= 0.0 and mx > 1.0 + margin:
            guess = " (it looks like unnormalised pixel values)"
        else:
            guess = ""
        raise ValueError(f"{name} must hold values in [{lo:g}, {hi:g}], got values in [{mn:.4g}, {mx:.4g}]{guess}.")
