"""The shared part of every sampler: parameters, input checks, guidance set-up, statistics, trajectory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..utils.checks import check_tensor, raise_if_inputs_not_finite
from .grids import DEFAULT_T_EPS, time_grid
from .guidance import Denoiser, GuidanceInterval, GuidedDenoiser, check_guidance

__all__ = ["Sampler", "Generators", "draw_noise"]

Generators = torch.Generator | Sequence[torch.Generator] | None


class Sampler:
    """Integrates an x-prediction flow model from noise (t = 0) to data (t = 1) on a fixed time grid.

    Parameters use the original's names (spec §5):

    - ``num_steps``: N, the number of intervals of the grid.
    - ``timeshift``: s of the warp ``t/(t + s(1 − t))``; ``last_step``: width of the final base interval
      (default 1/N); ``timesteps``: a custom grid of N + 1 increasing times in [0, 1] (used unwarped).
    - ``guidance``: CFG scale g in ``v_u + g·(v_c − v_u)``; active only for t inside
      (``guidance_interval_min``, ``guidance_interval_max``] (Euler, Heun, SDE) or (…, …) (Adams).
    - ``t_eps``: clamp of the x→v conversion ``v = (x̂ − x)/max(1 − t, t_eps)``; default 0.05 (the original),
      or 0 when ``exact_final_step`` is set.
    - ``exact_final_step`` (a fix of spec §5.10, off by default for parity): the conversion is unclamped
      (``t_eps`` defaults to 0) and the step into t = 1 returns the guided x̂ at the last evaluated point,
      ``x_N = x̂(x_{N−1}, t_{N−1})``. Each sampler's docstring says what this changes for it.

    Call: ``sampler(denoiser, noise, cond, uncond=None, *, generator=None, return_trajectory=False)`` with
    ``denoiser(x, t, cond) -> x̂`` and ``t`` a (B,) float32 tensor. Returns x, or ``(x, trajectory)`` where
    ``trajectory`` is the (N + 1, B, …) stack of the states at the grid times. ``last_stats`` holds
    ``{"nfe": network calls, "rows": rows pushed through the network}`` of the last call.
    """

    name = "sampler"
    guidance_includes_max = True

    def __init__(
        self,
        num_steps: int = 50,
        timeshift: float = 1.0,
        guidance: float = 1.0,
        guidance_interval_min: float = 0.0,
        guidance_interval_max: float = 1.0,
        last_step: float | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        t_eps: float | None = None,
        exact_final_step: bool = False,
    ) -> None:
        self.timesteps = time_grid(num_steps, timeshift, last_step, timesteps)
        self.num_steps = num_steps
        self.timeshift = timeshift
        self.last_step = last_step
        self.guidance = check_guidance(guidance)
        self.interval = GuidanceInterval(guidance_interval_min, guidance_interval_max, self.guidance_includes_max)
        if not isinstance(exact_final_step, bool):
            raise TypeError(f"exact_final_step must be True or False, got {exact_final_step!r}.")
        self.exact_final_step = exact_final_step
        if t_eps is None:
            t_eps = 0.0 if exact_final_step else DEFAULT_T_EPS
        if (
            isinstance(t_eps, bool)
            or not isinstance(t_eps, (int, float))
            or not 0.0 <= t_eps < 1.0
            or math.isnan(t_eps)
        ):
            raise ValueError(f"t_eps must be a number in [0, 1), got {t_eps!r}.")
        self.t_eps = float(t_eps)
        # Host-side copies for the loop: grid times, and step sizes t_{i+1} − t_i subtracted in float32 as the
        # original subtracts its float32 grid.
        self._times: list[float] = self.timesteps.tolist()
        self._steps: list[float] = (self.timesteps[1:] - self.timesteps[:-1]).tolist()
        self.last_stats: dict[str, int] = {"nfe": 0, "rows": 0}

    # -- what a subclass provides ----------------------------------------------------------------------
    def _integrate(
        self, model: GuidedDenoiser, x: torch.Tensor, generators: Generators, trajectory: list[torch.Tensor] | None
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------
    def guided_steps(self) -> list[bool]:
        """Per step i (at t_i), whether guidance is active: the original's boundary rule for this sampler; a
        scale of exactly 1 never guides (it would change nothing but double the batch)."""
        return [self.guidance != 1.0 and self.interval.contains(t) for t in self._times[:-1]]

    def __call__(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        cond: Any,
        uncond: Any = None,
        *,
        generator: Generators = None,
        return_trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, t, cond), got {type(denoiser).__name__}.")
        noise = check_tensor(noise, "noise", floating=True)
        if noise.ndim < 2:
            raise ValueError(
                f"noise must be a batch (B, ...) with at least 2 dimensions, got shape {tuple(noise.shape)}."
            )
        batch = noise.shape[0]
        cond = _check_condition(cond, "cond", batch)
        needs_uncond = any(self.guided_steps())
        if uncond is not None:
            uncond = _check_condition(uncond, "uncond", batch)
            if isinstance(cond, torch.Tensor) and cond.shape[1:] != uncond.shape[1:]:
                raise ValueError(
                    f"uncond must match cond's shape per sample, got {tuple(uncond.shape)} for cond {tuple(cond.shape)}."
                )
            uncond = uncond.expand_as(cond) if uncond.shape[0] == 1 else uncond
        elif needs_uncond:
            raise ValueError(
                f"This sampler guides (guidance {self.guidance} on some steps), so it needs uncond, the "
                "unconditional condition (the null label, or the empty-prompt embedding)."
            )
        generators = _check_generators(generator, batch)
        model = GuidedDenoiser(denoiser, cond, uncond, self.guidance, self.t_eps)
        trajectory: list[torch.Tensor] | None = [noise] if return_trajectory else None
        try:
            x = self._integrate(model, noise, generators, trajectory)
            model.raise_if_not_finite()
        except FloatingPointError as exc:  # name a non-finite input rather than blame the denoiser
            raise_if_inputs_not_finite({"noise": noise, "cond": cond, "uncond": uncond}, exc)
            raise
        self.last_stats = {"nfe": model.calls, "rows": model.rows}
        if trajectory is not None:
            return x, torch.stack(trajectory)
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, timeshift={self.timeshift}, guidance={self.guidance}, "
            f"interval=({self.interval.t_min}, {self.interval.t_max}{']' if self.interval.include_max else ')'}, "
            f"t_eps={self.t_eps}, exact_final_step={self.exact_final_step})"
        )


def _check_condition(c: Any, name: str, batch: int) -> Any:
    if not isinstance(c, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor (class labels (B,) or text embeddings (B, L, D)), got {type(c).__name__}."
        )
    if c.ndim == 0 or (c.shape[0] != batch and not (name == "uncond" and c.shape[0] == 1)):
        raise ValueError(f"{name} has {c.shape[0] if c.ndim else 0} rows but the noise batch has {batch}.")
    return c


def _check_generators(generator: Generators, batch: int) -> Generators:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != batch or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(f"generator must be one torch.Generator or a sequence of {batch} (one per sample).")
    return generators


def draw_noise(like: torch.Tensor, generators: Generators) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: from one generator, or row i from generator i.

    Noise is drawn on the generator's device and moved to ``like``'s device, so per-sample CPU generators
    give the same numbers whatever the batch composition or device.
    """
    if generators is None or isinstance(generators, torch.Generator):
        device = generators.device if generators is not None else like.device
        return torch.randn(like.shape, generator=generators, device=device, dtype=like.dtype).to(like.device)
    rows = [torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype) for g in generators]
    return torch.stack(rows).to(like.device)
