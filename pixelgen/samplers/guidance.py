"""Classifier-free guidance with a time interval, in velocity space, over structured conditions.

A step runs the doubled batch only when guidance is active at that step; otherwise it pushes the conditional
rows alone (half the work, same result). When it doubles, the halves are ordered (unconditional, conditional)
in one batched call, so the numbers match the original's.

A condition is a tensor (class labels (B,), text embeddings (B, L, D)) or a mapping of conditions (e.g.
``{"emb": (B, L, D), "mask": (B, L)}``): doubling concatenates leaf by leaf, so whatever rides along with the
condition (a padding mask) reaches the denoiser batched like it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..flow import velocity_divisor

__all__ = [
    "GuidanceInterval",
    "GuidedDenoiser",
    "Denoiser",
    "check_guidance",
    "check_condition",
    "cat_conditions",
    "slice_condition",
    "map_condition",
]

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

    def contains(self, t: float, dtype: torch.dtype = torch.float32) -> bool:
        """Compared in ``dtype`` (the noise's), as the original compares its time tensor, which has the noise's
        dtype, with the Python bounds: in float32 a grid time of float32(0.2) is *not* above a bound of 0.2."""
        t, lo, hi = (torch.tensor(v, dtype=dtype) for v in (t, self.t_min, self.t_max))
        upper_ok = t <= hi if self.include_max else t < hi
        return bool(lo < t and upper_ok)


# -- structured conditions --------------------------------------------------------------------------------
def map_condition(fn: Callable[[torch.Tensor], torch.Tensor], cond: Any) -> Any:
    """``fn`` applied to every tensor leaf of a condition (a tensor or a mapping of conditions)."""
    if isinstance(cond, Mapping):
        return {k: map_condition(fn, v) for k, v in cond.items()}
    return fn(cond)


def slice_condition(cond: Any, rows: slice | torch.Tensor) -> Any:
    """Rows of a condition (every leaf indexed alike)."""
    return map_condition(lambda c: c[rows], cond)


def cat_conditions(first: Any, second: Any) -> Any:
    """Two conditions of the same structure concatenated along the batch, leaf by leaf."""
    if isinstance(first, Mapping):
        return {k: cat_conditions(first[k], second[k]) for k in first}
    return torch.cat([first, second])


def check_condition(cond: Any, name: str, batch: int, like: Any = None) -> Any:
    """A tensor or mapping of tensors with ``batch`` rows per leaf (``uncond``: or one row, broadcast). With
    ``like`` (the conditional condition), the structure and per-sample shapes must match it."""
    if isinstance(cond, Mapping):
        if not cond:
            raise ValueError(f"{name} is an empty mapping; a structured condition needs at least one tensor.")
        if like is not None and (not isinstance(like, Mapping) or set(like) != set(cond)):
            raise ValueError(
                f"{name} must have the keys of cond ({', '.join(sorted(like)) if isinstance(like, Mapping) else 'a tensor'})."
            )
        return {
            k: check_condition(v, f"{name}[{k!r}]", batch, None if like is None else like[k]) for k, v in cond.items()
        }
    if not isinstance(cond, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor (class labels (B,), text embeddings (B, L, D)) or a mapping of tensors, "
            f"got {type(cond).__name__}."
        )
    if like is not None and not isinstance(like, torch.Tensor):
        raise ValueError(f"{name} must have the structure of cond (a mapping), got a tensor.")
    rows = cond.shape[0] if cond.ndim else 0
    if rows != batch and not (like is not None and rows == 1):
        raise ValueError(f"{name} has {rows} rows but the noise batch has {batch}.")
    if like is not None:
        if cond.shape[1:] != like.shape[1:]:
            raise ValueError(
                f"{name} must match cond's shape per sample, got {tuple(cond.shape)} for cond {tuple(like.shape)}."
            )
        if rows == 1 and batch != 1:
            cond = cond.expand(batch, *cond.shape[1:])
    return cond


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
        *,
        record: bool = False,
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
        self.record = record
        self.step_x_hat: torch.Tensor | None = None
        self._step_point: tuple[torch.Tensor, float] | None = None

    def begin_step(self, i: int, x: torch.Tensor, t: float) -> None:
        """Step ``i`` starts at (x, t): errors name it, and with ``record`` its guided x̂ there is kept."""
        self.step = i
        self.step_x_hat = None
        self._step_point = (x, t) if self.record else None

    def _keep(self, x: torch.Tensor, t: float, cond: torch.Tensor, uncond: torch.Tensor | None) -> None:
        point = self._step_point
        if point is not None and self.step_x_hat is None and x is point[0] and t == point[1]:
            self.step_x_hat = cond if uncond is None else uncond + self.scale * (cond - uncond)

    def _call(self, x: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        # float32 as the original, or wider when x is (float64 for numerical tests).
        times = torch.full((x.shape[0],), t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        out = self.denoiser(x, times, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"The denoiser must return x̂ with the input's shape {tuple(x.shape)}, got {got} at step {self.step} "
                f"(t = {t:.6g})."
            )
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
            x_hat_cond, x_hat_uncond = self._call(x, t, self.cond), None
        else:
            if self._both_conds is None:
                self._both_conds = cat_conditions(self.uncond, self.cond)
            x_hat_uncond, x_hat_cond = self._call(torch.cat([x, x]), t, self._both_conds).chunk(2)
        self._keep(x, t, x_hat_cond, x_hat_uncond)
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
