"""Convergence on a problem with a known answer: Gaussian data N(μ, diag(s²)).

For x ~ N(μ, s²) per dimension and x_t = t·x + (1 − t)·ε, the ideal x-predictor is
E[x | x_t] = μ + t·s²/(t²s² + (1 − t)²)·(x_t − t·μ), the marginal p_t is N(t·μ, t²s² + (1 − t)²), and the
probability-flow ODE maps the noise x_0 monotonically onto x_1 = μ + s·x_0 (the affine transport
between the Gaussian marginals).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelgen.samplers import build_sampler

MU = torch.tensor([[-0.5, 0.0, 0.3, 1.0]], dtype=torch.float64)
STD = torch.tensor([[0.3, 0.6, 1.0, 1.5]], dtype=torch.float64)
STEPS = [8, 16, 32, 64, 128]


def ideal_x_predictor(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, 1)
    return MU + t * STD**2 / (t**2 * STD**2 + (1 - t) ** 2) * (x - t * MU)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, MU.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def final_errors(name: str, **params) -> list[float]:
    x0 = noise(32)
    exact = MU + STD * x0
    labels = torch.zeros(x0.shape[0], dtype=torch.long)
    errors = []
    for n in STEPS:
        sampler = build_sampler(name, num_steps=n, **params)
        errors.append((sampler(ideal_x_predictor, x0, labels) - exact).abs().max().item())
    return errors


def fitted_order(errors: list[float]) -> float:
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


@pytest.mark.parametrize(
    ("name", "params", "order"),
    [
        ("euler", {"timeshift": 1.0}, 1.0),
        ("euler", {"timeshift": 2.0}, 1.0),
        ("heun", {"exact_henu": True}, 2.0),
        ("heun", {"exact_henu": True, "timeshift": 2.0}, 2.0),
        ("heun", {"exact_henu": False}, 2.0),
        ("adams", {"order": 2}, 2.0),
    ],
)
def test_exact_final_step_converges_at_the_method_order(name, params, order):
    errors = final_errors(name, exact_final_step=True, **params)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert abs(fitted_order(errors) - order) < 0.2, errors


def test_default_clamp_does_not_converge_to_the_ode_solution():
    """With t_eps = 0.05 the steps past t = 0.95 solve a different ODE (the clamp): the error levels off."""
    errors = final_errors("euler")
    assert errors[-1] > 0.1 and fitted_order(errors) < 0.7, errors


@pytest.mark.parametrize("rule", ["sde", "sde_preserve", "ode"])
def test_sde_samples_match_the_data_distribution(rule):
    n = 8_000
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, MU.shape[1], dtype=torch.float64, generator=generator)
    sampler = build_sampler("euler_maruyama", num_steps=400, step_rule=rule, exact_final_step=True)
    x = sampler(ideal_x_predictor, x0, torch.zeros(n, dtype=torch.long), generator=generator)
    # Standard errors of the sample mean and variance of n Gaussian draws; 4 of them is a generous band
    # (the Euler–Maruyama bias at 400 steps is about 1% of the variance, half a standard error).
    mean_z = (x.mean(0) - MU) / (STD / n**0.5)
    var_z = (x.var(0) - STD**2) / (STD**2 * (2 / n) ** 0.5)
    assert mean_z.abs().max() < 4 and var_z.abs().max() < 4, (mean_z, var_z)


def test_sde_mean_rule_does_not_keep_the_marginals():
    """``sde_mean`` is the SDE's drift without its noise: it collapses the variance (documented)."""
    n = 4_000
    x0 = noise(n, seed=2)
    sampler = build_sampler("euler_maruyama", num_steps=100, step_rule="sde_mean", exact_final_step=True)
    x = sampler(ideal_x_predictor, x0, torch.zeros(n, dtype=torch.long))
    assert (x.var(0) < 0.5 * STD**2).all()
