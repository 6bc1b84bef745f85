"""Time grids and the x-prediction → velocity conversion (spec §5.1, §4.3, §5.10).

Convention (spec §4.1): ``x_t = t·x + (1 − t)·ε``; t = 0 is pure noise, t = 1 is clean data, and sampling
integrates t upwards from 0 to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_T_EPS",
    "uniform_grid",
    "shift_warp",
    "shift_unwarp",
    "time_grid",
    "velocity_divisor",
    "x_hat_to_velocity",
    "score_from_x_hat",
]

DEFAULT_T_EPS = 0.05
"""The original's clamp on ``1 − t`` in the x→v conversion, shared by training and sampling."""


def _check_shift(shift: float) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"timeshift must be a finite number > 0, got {shift!r}.")
    return float(shift)


def _check_num_steps(num_steps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    return num_steps


def uniform_grid(num_steps: int, last_step: float | None = None) -> torch.Tensor:
    """The original's base grid: ``linspace(0, 1 − last_step, N)`` followed by 1.0 (N intervals, float32).

    ``last_step`` (default 1/N) is the width of the final interval; the other N − 1 intervals share the rest
    evenly. The grid is built in float32, as the original does, so that it matches its numbers bit for bit.
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


def shift_warp(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``t ↦ t / (t + s·(1 − t))``: s > 1 spends more steps near t = 0 (the noise end); 0 and 1 stay fixed."""
    shift = _check_shift(shift)
    return t / (t + shift * (1.0 - t))


def shift_unwarp(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of :func:`shift_warp`: ``t ↦ s·t / (1 − t + s·t)``."""
    shift = _check_shift(shift)
    return shift * t / (1.0 - t + shift * t)


def time_grid(
    num_steps: int,
    timeshift: float = 1.0,
    last_step: float | None = None,
    timesteps: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampling grid t_0 < … < t_N (float32, CPU).

    Without ``timesteps``: the uniform grid of :func:`uniform_grid` warped by :func:`shift_warp`, as the
    original. With ``timesteps`` (a custom grid): used as given, unwarped; it must be strictly increasing
    inside [0, 1] and have ``num_steps + 1`` points.
    """
    num_steps = _check_num_steps(num_steps)
    if timesteps is None:
        return shift_warp(uniform_grid(num_steps, last_step), timeshift)
    grid = torch.as_tensor(timesteps, dtype=torch.float32).detach().cpu().flatten()
    if grid.numel() != num_steps + 1:
        raise ValueError(f"A custom grid for {num_steps} steps needs {num_steps + 1} time points, got {grid.numel()}.")
    if not torch.isfinite(grid).all() or float(grid.min()) < 0.0 or float(grid.max()) > 1.0:
        raise ValueError("A custom time grid must lie inside [0, 1] (0 = noise, 1 = data).")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("A custom time grid must be strictly increasing (sampling runs from noise t=0 to data t=1).")
    return grid


def velocity_divisor(t: float, t_eps: float) -> float:
    """``max(1 − t, t_eps)``: the divisor of the x→v conversion at a (batch-uniform) time t."""
    return max(1.0 - t, t_eps)


def x_hat_to_velocity(x_hat: torch.Tensor, x: torch.Tensor, t: float, t_eps: float = DEFAULT_T_EPS) -> torch.Tensor:
    """``v = (x̂ − x) / max(1 − t, t_eps)``; with t_eps = 0.05 (default) this truncates steps past t = 0.95 (§5.10)."""
    return (x_hat - x) / velocity_divisor(t, t_eps)


def score_from_x_hat(x_hat: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """∇ log p_t(x) = (t·x̂ − x) / (1 − t)² for the linear path, since E[ε | x_t] = (x_t − t·x̂)/(1 − t)."""
    return (t * x_hat - x) / (1.0 - t) ** 2
