"""Probability path, time sampling, x->v conversion and CFG condition dropout (spec §4.1-4.3, §4.10).

Convention: ``x_t = t·x + (1-t)·ε``; t = 0 is pure noise, t = 1 is clean data.
"""

from __future__ import annotations

import torch

from ..utils.checks import check_tensor, check_timesteps

__all__ = ["TIME_DISTRIBUTIONS", "sample_t", "time_shift", "interpolate", "x_to_v", "drop_condition"]

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")


def _draw(
    kind: str, shape: tuple[int, ...], device: torch.device | str | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Random numbers drawn on the generator's device (so seeded runs agree across devices), then moved."""
    where = generator.device if generator is not None else device
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``t / (t + shift·(1-t))``: shift > 1 moves mass towards noise (small t); 1 is the identity."""
    return t / (t + shift * (1.0 - t))


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
    if not isinstance(batch_size, int) or batch_size < 1:
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
        n = _draw("normal", (batch_size,), device, generator) if draws is None else draws.float().to(device)
        t = torch.sigmoid(n * p_std + p_mean)
    else:
        t = _draw("uniform", (batch_size,), device, generator) if draws is None else draws.float().to(device)
    return t if shift == 1.0 else time_shift(t, shift)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t·x + (1-t)·noise`` with one t per sample."""
    if x.shape != noise.shape:
        raise ValueError(f"x and noise must have the same shape, got {tuple(x.shape)} and {tuple(noise.shape)}.")
    check_timesteps(t, x.shape[0])
    return _interpolate(x, noise, t)


def _interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:func:`interpolate` without its checks, for callers whose ``t`` is valid by construction (no host syncs)."""
    tt = _per_sample(t, x)
    return tt * x + (1.0 - tt) * noise


def x_to_v(x_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_eps: float = 0.05) -> torch.Tensor:
    """Velocity implied by an x-prediction: ``(x_pred - x_t) / max(1 - t, t_eps)`` per sample (spec §4.3)."""
    if not 0.0 < t_eps <= 1.0:
        raise ValueError(f"t_eps must lie in (0, 1], got {t_eps!r}.")
    return (x_pred - x_t) / _per_sample((1.0 - t).clamp_min(t_eps), x_pred)


def drop_condition(
    cond: torch.Tensor,
    p: float,
    *,
    null_label: int | None = None,
    uncond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace each sample's condition by the unconditional one with probability ``p`` (spec §4.10).

    Class labels (integer (B,)) become ``null_label``; text embeddings (float (B, L, D)) become ``uncond``
    ((L, D), (1, L, D) or (B, L, D), e.g. the embedding of the empty prompt). ``draws``: (B,) uniform numbers
    to use instead of drawing new ones (a sample is dropped when its number is below ``p``).
    """
    check_tensor(cond, "cond")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"The condition dropout probability must lie in [0, 1], got {p!r}.")
    if p == 0.0:
        return cond
    if draws is not None and tuple(draws.shape) != (cond.shape[0],):
        raise ValueError(f"draws must have shape ({cond.shape[0]},), got {tuple(draws.shape)}.")
    drop = (_draw("uniform", (cond.shape[0],), cond.device, generator) if draws is None else draws.to(cond.device)) < p
    if not cond.is_floating_point():
        if cond.ndim != 1:
            raise ValueError(f"Class labels must have shape (B,), got {tuple(cond.shape)}.")
        if null_label is None:
            raise ValueError("Dropping class labels needs null_label (the model's num_classes).")
        return torch.where(drop, torch.full_like(cond, null_label), cond)
    if uncond is None:
        raise ValueError("Dropping text conditions needs the unconditional embedding (batch['uncond']).")
    uncond = uncond.to(device=cond.device, dtype=cond.dtype)
    if uncond.ndim == cond.ndim - 1:
        uncond = uncond.unsqueeze(0)
    if uncond.ndim != cond.ndim or uncond.shape[1:] != cond.shape[1:] or uncond.shape[0] not in (1, cond.shape[0]):
        raise ValueError(
            f"The unconditional embedding of shape {tuple(uncond.shape)} does not match conditions of shape {tuple(cond.shape)}."
        )
    return torch.where(drop.reshape(-1, *([1] * (cond.ndim - 1))), uncond.expand_as(cond), cond)
