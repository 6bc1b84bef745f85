"""The probability path of pixelgen, for training and sampling alike.

Convention: ``x_t = t·x + (1 − t)·ε``; t = 0 is pure noise, t = 1 is clean data; sampling integrates t upwards.
The network predicts x̂ (the clean image); velocity and score follow from it:

- velocity ``v = (x̂ − x_t) / max(1 − t, t_eps)`` with ``t_eps = T_EPS = 0.05``, the clamp the original uses in
  training and sampling (near t = 1 it shortens the last steps of a sampler);
- score ``s = (t·v − x_t) / (1 − t)`` from that clamped velocity (what the original's SDE steps use), or the
  unclamped ``(t·x̂ − x_t) / (1 − t)²`` (:func:`score_exact`);
- time shift ``t ↦ t / (t + s·(1 − t))`` (s > 1 spends more time near the noise end);
- training times: logit-normal ``sigmoid(p_std·n + p_mean)`` (or uniform), then shifted;
- sampling grids: ``linspace(0, 1 − last_step, N)`` followed by 1, then shifted (float32, as the original).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .seeding import draw
from .utils.checks import check_timesteps

__all__ = [
    "T_EPS",
    "TIME_DISTRIBUTIONS",
    "interpolate",
    "x_to_v",
    "velocity_divisor",
    "score",
    "score_exact",
    "time_shift",
    "time_unshift",
    "sample_t",
    "uniform_grid",
    "time_grid",
]

T_EPS = 0.05
"""The clamp on ``1 − t`` in the x→v conversion (training and sampling)."""

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")


def _per_sample(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
    return t


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t·x + (1 − t)·noise`` with one t per sample ((B,) in [0, 1])."""
    if x.shape != noise.shape:
        raise ValueError(f"x and noise must have the same shape, got {tuple(x.shape)} and {tuple(noise.shape)}.")
    check_timesteps(t, x.shape[0])
    return _interpolate(x, noise, t)


def _interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:func:`interpolate` without its checks, for callers whose ``t`` is valid by construction (no host syncs)."""
    tt = _per_sample(t, x)
    return tt * x + (1.0 - tt) * noise


def _check_t_eps(t_eps: float) -> float:
    if isinstance(t_eps, bool) or not isinstance(t_eps, (int, float)) or not 0.0 <= t_eps <= 1.0 or math.isnan(t_eps):
        raise ValueError(f"t_eps must be a number in [0, 1], got {t_eps!r}.")
    return float(t_eps)


def velocity_divisor(t: float, t_eps: float = T_EPS) -> float:
    """``max(1 − t, t_eps)`` for a batch-uniform time (a host-side float: no device sync in sampling loops)."""
    return max(1.0 - t, t_eps)


def x_to_v(x_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | float, t_eps: float = T_EPS) -> torch.Tensor:
    """The velocity implied by an x-prediction: ``(x̂ − x_t) / max(1 − t, t_eps)``.

    ``t``: a float (one time for the batch, as in sampling) or a (B,) tensor (one per sample, as in training).
    """
    t_eps = _check_t_eps(t_eps)
    if isinstance(t, torch.Tensor):
        return (x_hat - x_t) / _per_sample((1.0 - t).clamp_min(t_eps), x_hat)
    return (x_hat - x_t) / velocity_divisor(float(t), t_eps)


def score(x_hat: torch.Tensor, x_t: torch.Tensor, t: float, t_eps: float = T_EPS) -> torch.Tensor:
    """The score the original's SDE steps use: ``(t·v − x_t)/(1 − t)`` with the clamped ``v`` of :func:`x_to_v`.

    It equals :func:`score_exact` wherever ``1 − t ≥ t_eps``; t < 1.
    """
    return (t * x_to_v(x_hat, x_t, t, t_eps) - x_t) / (1.0 - t)


def score_exact(x_hat: torch.Tensor, x_t: torch.Tensor, t: float) -> torch.Tensor:
    """∇ log p_t(x) = (t·x̂ − x_t)/(1 − t)² for the linear path (E[ε | x_t] = (x_t − t·x̂)/(1 − t)); t < 1."""
    return (t * x_hat - x_t) / (1.0 - t) ** 2


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"timeshift must be a finite number > 0, got {shift!r}.")
    return float(shift)


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``t ↦ t / (t + s·(1 − t))``: s > 1 moves time towards the noise end (t = 0); 0, 1 and s = 1 are fixed."""
    shift = _check_shift(shift)
    return t / (t + shift * (1.0 - t))


def time_unshift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of :func:`time_shift`: ``t ↦ s·t / (1 − t + s·t)``."""
    shift = _check_shift(shift)
    return shift * t / (1.0 - t + shift * t)


def sample_t(
    batch_size: int,
    *,
    distribution: str = "logit_normal",
    p_mean: float = -0.8,
    p_std: float = 0.8,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training times (B,) in float32: ``sigmoid(p_std·n + p_mean)`` (or U(0,1)), then :func:`time_shift`.

    PixelGen: logit-normal with P_mean −0.8, P_std 0.8 and shift 1 (median t ≈ 0.31, P(t ≥ 0.3) ≈ 0.524).
    ``draws``: (B,) standard-normal (logit-normal) or uniform numbers to transform instead of drawing new ones.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(TIME_DISTRIBUTIONS)}, got {distribution!r}.")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift!r}.")
    if draws is not None and tuple(draws.shape) != (batch_size,):
        raise ValueError(f"draws must have shape ({batch_size},), got {tuple(draws.shape)}.")
    if distribution == "logit_normal":
        if not p_std > 0:
            raise ValueError(f"p_std must be positive, got {p_std!r}.")
        n = draw("normal", (batch_size,), device, generator) if draws is None else draws.float().to(device)
        t = torch.sigmoid(n * p_std + p_mean)
    else:
        t = draw("uniform", (batch_size,), device, generator) if draws is None else draws.float().to(device)
    return t if shift == 1.0 else time_shift(t, shift)


def _check_num_steps(num_steps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    return num_steps


def uniform_grid(num_steps: int, last_step: float | None = None) -> torch.Tensor:
    """The base grid: ``linspace(0, 1 − last_step, N)`` followed by 1.0 (N intervals, float32).

    ``last_step`` (default 1/N) is the width of the final interval; the other N − 1 intervals share the rest
    evenly. Built in float32, as the original, so that it matches its numbers bit for bit.
    """
    num_steps = _check_num_steps(num_steps)
    if last_step is None:
        last_step = 1.0 / num_steps
    # With one step the base grid is just [0, 1] and last_step = 1 (its default) is fine.
    upper = 1.0 if num_steps == 1 else math.nextafter(1.0, 0.0)
    if isinstance(last_step, bool) or not isinstance(last_step, (int, float)) or not 0.0 < last_step <= upper:
        raise ValueError(f"last_step must lie in (0, 1) (or be 1 with a single step), got {last_step!r}.")
    base = torch.linspace(0.0, 1.0 - float(last_step), num_steps, dtype=torch.float32)
    return torch.cat([base, torch.ones(1, dtype=torch.float32)])


def time_grid(
    num_steps: int,
    timeshift: float = 1.0,
    last_step: float | None = None,
    timesteps: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampling grid t_0 < … < t_N (float32, CPU).

    Without ``timesteps``: :func:`uniform_grid` warped by :func:`time_shift`, as the original. With
    ``timesteps`` (a custom grid): used as given, unwarped; strictly increasing inside [0, 1], ``num_steps + 1``
    points.
    """
    num_steps = _check_num_steps(num_steps)
    if timesteps is None:
        return time_shift(uniform_grid(num_steps, last_step), timeshift)
    grid = torch.as_tensor(timesteps, dtype=torch.float32).detach().cpu().flatten()
    if grid.numel() != num_steps + 1:
        raise ValueError(f"A custom grid for {num_steps} steps needs {num_steps + 1} time points, got {grid.numel()}.")
    if not torch.isfinite(grid).all() or float(grid.min()) < 0.0 or float(grid.max()) > 1.0:
        raise ValueError("A custom time grid must lie inside [0, 1] (0 = noise, 1 = data).")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("A custom time grid must be strictly increasing (sampling runs from noise t=0 to data t=1).")
    return grid
