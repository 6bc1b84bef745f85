"""Classifier-free guidance with a time interval, in velocity space (spec §5.2).

The original doubles the batch on every evaluation, even with guidance 1. Here a step runs the doubled batch
only when guidance is active at that step; otherwise it pushes the conditional rows alone. When it doubles,
the halves are ordered (unconditional, conditional) exactly as the original, in one batched call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .grids import velocity_divisor

__all__ = ["GuidanceInterval", "GuidedDenoiser", "Denoiser", "check_guidance"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def check_guidance(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance must be a finite number, got {scale!r}.")
    return float(scale)


@dataclass(frozen=True)
class GuidanceInterval:
    """Times at which guidance applies: ``t_min < t ≤ t_max`` (``include_max``) or ``t_min < t < t_max``.

    The original's rule per sampler: Euler and Heun include ``t_max``; Adams excludes it. Both exclude
    ``t_min``, so with the default interval starting at 0 the first step (t = 0) is never guided.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    include_max: bool = True

    def __post_init__(self) -> None:
        for name, value in (("guidance_interval_min", self.t_min), ("guidance_interval_max", self.t_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
        if self.t_min >= self.t_max:
            raise ValueError(
                f"The guidance interval is empty: guidance_interval_min ({self.t_min}) must be below "
                f"guidance_interval_max ({self.t_max})."
            )

    def contains(self, t: float) -> bool:
        """Compared in float32, as the original compares its float32 time tensor with the Python bounds
        (so a grid time of float32(0.2) is *not* above a bound of 0.2)."""
        t, lo, hi = np.float32(t), np.float32(self.t_min), np.float32(self.t_max)
        upper_ok = t <= hi if self.include_max else t < hi
        return bool(lo < t and upper_ok)


class GuidedDenoiser:
    """Wraps ``denoiser(x, t, cond) -> x̂`` for one sampling call: guidance, x→v, call/row counts, NaN check.

    Per-step decisions (guided or not, from :meth:`Sampler.guided_steps`; the divisor ``max(1 − t, t_eps)``)
    are host-side scalars taken from the grid, so the loop needs no device→host synchronisation. On CPU the
    output is checked for NaN right away; on other devices each evaluation records a device-side flag that
    :meth:`raise_if_not_finite` inspects once after the loop.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cond: Any,
        uncond: Any,
        scale: float,
        t_eps: float,
    ) -> None:
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.scale = scale
        self.t_eps = t_eps
        self.calls = 0
        self.rows = 0
        self.step = 0
        self._both_conds: Any = None
        self._finite_flags: list[tuple[int, float, torch.Tensor]] = []

    def _call(self, x: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        # float32 as the original, or wider when x is (float64 for numerical tests).
        times = torch.full((x.shape[0],), t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        out = self.denoiser(x, times, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"The denoiser must return x̂ with the input's shape {tuple(x.shape)}, got {got}.")
        self.calls += 1
        self.rows += x.shape[0]
        finite = _all_finite(out)
        if x.device.type == "cpu":
            if not bool(finite):
                self._raise_not_finite(self.step, t)
        else:
            self._finite_flags.append((self.step, t, finite))
        return out.to(x.dtype)

    def x_hats(self, x: torch.Tensor, t: float, guide: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x̂ conditional, x̂ unconditional or None): one call of B rows, or one call of 2B rows when guided."""
        if not guide:
            return self._call(x, t, self.cond), None
        if self._both_conds is None:
            self._both_conds = torch.cat([self.uncond, self.cond])
        x_hat = self._call(torch.cat([x, x]), t, self._both_conds)
        x_hat_uncond, x_hat_cond = x_hat.chunk(2)
        return x_hat_cond, x_hat_uncond

    def velocity(self, x: torch.Tensor, t: float, guide: bool) -> torch.Tensor:
        """The guided velocity ``v_u + g·(v_c − v_u)`` (or ``v_c``), each ``v = (x̂ − x)/max(1 − t, t_eps)``."""
        x_hat_cond, x_hat_uncond = self.x_hats(x, t, guide)
        divisor = velocity_divisor(t, self.t_eps)
        v_cond = (x_hat_cond - x) / divisor
        if x_hat_uncond is None:
            return v_cond
        v_uncond = (x_hat_uncond - x) / divisor
        return v_uncond + self.scale * (v_cond - v_uncond)

    def prediction(self, x: torch.Tensor, t: float, guide: bool) -> torch.Tensor:
        """The guided x̂ ``x̂_u + g·(x̂_c − x̂_u)`` (CFG on x̂ equals CFG on v: v is affine in x̂)."""
        x_hat_cond, x_hat_uncond = self.x_hats(x, t, guide)
        if x_hat_uncond is None:
            return x_hat_cond
        return x_hat_uncond + self.scale * (x_hat_cond - x_hat_uncond)

    def raise_if_not_finite(self) -> None:
        """Check the flags recorded on accelerators (one synchronisation, after the loop)."""
        if not self._finite_flags:
            return
        flags = torch.stack([flag for _, _, flag in self._finite_flags]).cpu()
        if not bool(flags.all()):
            step, t, _ = self._finite_flags[int((~flags).nonzero()[0])]
            self._raise_not_finite(step, t)

    @staticmethod
    def _raise_not_finite(step: int, t: float) -> None:
        raise FloatingPointError(f"The denoiser returned NaN or infinite values at step {step} (t = {t:.6g}).")


def _all_finite(values: torch.Tensor) -> torch.Tensor:
    """0-dim bool: whether every value is finite. One reduction pass: ``aminmax`` propagates NaN and keeps ±inf,
    while ``isfinite(values).all()`` makes several full passes and allocations (on one CPU thread, 4.7 ms
    against 0.45 ms for a guided batch of 8 at 256 px)."""
    if values.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=values.device)
    low, high = torch.aminmax(values)
    return torch.isfinite(low) & torch.isfinite(high)
