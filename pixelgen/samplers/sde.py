"""Euler–Maruyama for a reverse-time SDE of the linear path whose marginals equal the ODE's (spec §5.6).

For ``x_t = t·x + (1 − t)·ε`` the score follows from the x-prediction:
``∇ log p_t(x) = (t·x̂ − x)/(1 − t)²`` (because E[ε | x_t] = (x_t − t·x̂)/(1 − t)). For any diffusion
coefficient g(t), ``dx = [v + ½g²·∇log p_t] dt + g dW`` has the same marginals p_t as the ODE ``dx = v dt``
(the extra drift and the diffusion cancel in the Fokker–Planck equation). With the original's
``w(t) = 1 − t`` (``LinearScheduler.w``), the step rules below are those of the original's step functions:

======================  ===========================================  ======================  ==============
``step_rule``           update                                       g(t)²                   keeps marginals
======================  ===========================================  ======================  ==============
``"sde"`` (default)     x + (v + w·s)·dt + √(2w·dt)·z                2(1 − t)                yes
``"sde_preserve"``      x + (v + ½w·s)·dt + √(w·dt)·z                1 − t                   yes
``"sde_mean"``          x + (v + w·s)·dt                             (the mean of ``sde``)   no
``"sid2"``              x + v·dt + w·|dt|·z                          (noise ∝ dt)            no
``"ode"``               x + v·dt                                     0                       yes
======================  ===========================================  ======================  ==============

Our default, g² = 2(1 − t), makes the score drift ``w·s = (t·x̂ − x)/(1 − t)`` the same size as v, so the
stochastic steps stay as stable as the ODE steps all the way to t → 1.
"""

from __future__ import annotations

import torch

from .base import Generators, Sampler, draw_noise
from .grids import score_from_x_hat, velocity_divisor
from .guidance import GuidedDenoiser

__all__ = ["EulerMaruyamaSampler", "STEP_RULES"]

STEP_RULES = ("sde", "sde_preserve", "sde_mean", "sid2", "ode")


class EulerMaruyamaSampler(Sampler):
    """Euler–Maruyama (N evaluations) with the step rules of the module docstring; the last step is an ODE step.

    As the original's Euler sampler with a stochastic step function: guidance at step i when
    ``t_min < t_i ≤ t_max`` (applied to x̂, then v and the score both come from the guided x̂); the final
    step into t = 1 is deterministic (``x + v·dt``). The score is taken from x̂ exactly; the original
    derived it from the t_eps-clamped v, which differs only where 1 − t < t_eps.
    ``exact_final_step``: unclamped v, and the last step returns the guided x̂ at (x_{N−1}, t_{N−1}).
    Noise: ``generator`` (one, or one per sample) feeds the Gaussian increments z.
    """

    name = "euler_maruyama"

    def __init__(self, *args, step_rule: str = "sde", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if step_rule not in STEP_RULES:
            raise ValueError(f"Unknown step_rule '{step_rule}'; choose one of {', '.join(STEP_RULES)}.")
        self.step_rule = step_rule

    def _integrate(
        self, model: GuidedDenoiser, x: torch.Tensor, generators: Generators, trajectory: list[torch.Tensor] | None
    ) -> torch.Tensor:
        times, steps, guided = self._times, self._steps, self.guided_steps()
        last = self.num_steps - 1
        for i, (t, dt) in enumerate(zip(times[:-1], steps)):
            model.step = i
            x_hat = model.prediction(x, t, guided[i])
            if i == last and self.exact_final_step:
                x = x_hat
            else:
                v = (x_hat - x) / velocity_divisor(t, model.t_eps)
                x = x + dt * v if i == last else self._stochastic_step(x, x_hat, v, t, dt, generators)
            if trajectory is not None:
                trajectory.append(x)
        return x

    def _stochastic_step(
        self, x: torch.Tensor, x_hat: torch.Tensor, v: torch.Tensor, t: float, dt: float, generators: Generators
    ) -> torch.Tensor:
        w = 1.0 - t
        rule = self.step_rule
        if rule == "ode":
            return x + dt * v
        if rule == "sid2":
            return x + dt * v + (w * abs(dt)) * draw_noise(x, generators)
        score = score_from_x_hat(x_hat, x, t)
        if rule == "sde_mean":
            return x + dt * (v + w * score)
        if rule == "sde":
            return x + dt * (v + w * score) + (2.0 * w * dt) ** 0.5 * draw_noise(x, generators)
        return x + dt * (v + 0.5 * w * score) + (w * dt) ** 0.5 * draw_noise(x, generators)  # sde_preserve

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", step_rule={self.step_rule!r})"
