"""Euler–Maruyama for a reverse-time SDE of the linear path whose marginals equal the ODE's.

For ``x_t = t·x + (1 − t)·ε`` the score follows from the x-prediction: ``∇ log p_t(x) = (t·x̂ − x)/(1 − t)²``
(because E[ε | x_t] = (x_t − t·x̂)/(1 − t)). The original takes it from the t_eps-clamped velocity instead,
``s = (t·v − x)/(1 − t)`` with ``v = (x̂ − x)/max(1 − t, 0.05)``; the two agree wherever 1 − t ≥ 0.05
(:func:`pixelgen.flow.score` and :func:`pixelgen.flow.score_exact`; ``score_from`` chooses). For any diffusion
coefficient g(t), ``dx = [v + ½g²·∇log p_t] dt + g dW`` has the same marginals p_t as the ODE ``dx = v dt``.
With the original's ``w(t) = 1 − t``, the step rules are those of the original's step functions:

======================  ===========================================  ======================  ==============
``step_rule``           update                                       g(t)²                   keeps marginals
======================  ===========================================  ======================  ==============
``"sde"`` (default)     x + (v + w·s)·dt + √(2w·dt)·z                2(1 − t)                yes
``"sde_preserve"``      x + (v + ½w·s)·dt + √(w·dt)·z                1 − t                   yes
``"sde_mean"``          x + (v + w·s)·dt                             (the mean of ``sde``)   no
``"sid2"``              x + v·dt + w·|dt|·z                          (noise ∝ dt)            no
``"ode"``               x + v·dt                                     0                       yes
======================  ===========================================  ======================  ==============
"""

from __future__ import annotations

import torch

from ..flow import score, score_exact, x_to_v
from .base import Sampler, Step, draw_noise
from .guidance import GuidedDenoiser

__all__ = ["EulerMaruyamaSampler", "STEP_RULES", "SCORES"]

STEP_RULES = ("sde", "sde_preserve", "sde_mean", "sid2", "ode")


SCORES = ("velocity", "x_hat")


class EulerMaruyamaSampler(Sampler):
    """Euler–Maruyama (N evaluations) with the step rules of the module docstring; the last step is an ODE step.

    As the original's Euler sampler with a stochastic step function: guidance at step i when
    ``t_min < t_i ≤ t_max`` (applied to x̂, then v and the score both come from the guided x̂); the final
    step into t = 1 is deterministic (``x + v·dt``).
    ``score_from``: ``"velocity"`` (default, the original's: from the clamped v) or ``"x_hat"`` (the exact
    ``(t·x̂ − x)/(1 − t)²``, which differs where 1 − t < t_eps).
    ``exact_final_step``: unclamped v, and the last step returns the guided x̂ at (x_{N−1}, t_{N−1}).
    Noise: ``generator`` (one, or one per sample) feeds the Gaussian increments z.
    """

    name = "euler_maruyama"

    def __init__(self, *args, step_rule: str = "sde", score_from: str = "velocity", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if step_rule not in STEP_RULES:
            raise ValueError(f"Unknown step_rule '{step_rule}'; choose one of {', '.join(STEP_RULES)}.")
        if score_from not in SCORES:
            raise ValueError(f"Unknown score_from '{score_from}'; choose one of {', '.join(SCORES)}.")
        self.step_rule = step_rule
        self.score_from = score_from

    def step(self, model: GuidedDenoiser, x: torch.Tensor, s: Step, state: dict) -> torch.Tensor:
        x_hat = model.prediction(x, s.t, s.guide)
        v = x_to_v(x_hat, x, s.t, model.t_eps)
        rule, t, dt, w = self.step_rule, s.t, s.dt, 1.0 - s.t
        if s.last or rule == "ode":
            return x + dt * v
        if rule == "sid2":
            return x + dt * v + (w * abs(dt)) * draw_noise(x, state["generators"])
        score_ = score(x_hat, x, t, model.t_eps) if self.score_from == "velocity" else score_exact(x_hat, x, t)
        if rule == "sde_mean":
            return x + dt * (v + w * score_)
        if rule == "sde":
            return x + dt * (v + w * score_) + (2.0 * w * dt) ** 0.5 * draw_noise(x, state["generators"])
        return x + dt * (v + 0.5 * w * score_) + (w * dt) ** 0.5 * draw_noise(x, state["generators"])

    def _extra_repr(self) -> str:
        return f"step_rule={self.step_rule!r}, score_from={self.score_from!r}"
