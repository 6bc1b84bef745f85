"""Samplers: parity with the original's outputs, guidance cost and boundaries, grids, input checks."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixelgen
from pixelgen.flow import time_grid, time_shift, time_unshift, uniform_grid
from pixelgen.registry import registries
from pixelgen.samplers import (
    AdamsSampler,
    GuidanceInterval,
    adams_coefficients,
    build_sampler,
    list_samplers,
)
from pixelgen.samplers.ode import TIME_TRANSFORMS

META = json.loads((pathlib.Path(__file__).parent / "data" / "upstream_reference.json").read_text())
SAMPLER_CASES = sorted(k for k, v in META.items() if isinstance(v, dict) and v.get("kind") == "sampler")


def toy_denoiser(e: torch.Tensor):
    """The golden README's stand-in network: x̂ = tanh(0.5·x + 0.3·t + e[y])."""
    return lambda x, t, y: torch.tanh(0.5 * x + 0.3 * t.view(-1, 1, 1, 1) + e[y])


class Recorder:
    """A denoiser that records each call (rows, t, conditions) and returns a fixed function of its input."""

    def __init__(self):
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], t.clone(), cond.clone()))
        return torch.tanh(x + t.view(-1, *[1] * (x.ndim - 1)) + cond.view(-1, *[1] * (x.ndim - 1)).float())


def test_golden_cases_exist():
    assert {META[c]["sampler"] for c in SAMPLER_CASES} == {"euler", "heun", "adams"}


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_reproduces_original_samples_with_fewer_rows(golden, case):
    tensors, meta = golden
    info = meta[case]
    sampler = build_sampler(info["sampler"], **info["params"])
    assert torch.allclose(sampler.timesteps, tensors[f"{case}/timesteps"], atol=1e-7, rtol=0)

    y = tensors[f"{case}/in/y"]
    null = torch.full_like(y, info["null_class"])
    x = sampler(toy_denoiser(tensors[f"{case}/toy/e"]), tensors[f"{case}/in/noise"], y, null)
    assert (x - tensors[f"{case}/out/x"]).abs().max().item() <= 1e-5

    stats = sampler.last_stats
    assert stats["nfe"] == info["upstream_net_calls"]
    assert stats["rows"] <= info["upstream_net_rows"]
    if not all(sampler.guided_steps()):  # some step runs unguided: no doubled batch there
        assert stats["rows"] < info["upstream_net_rows"]


def test_guided_step_is_one_call_with_unconditional_half_first():
    sampler = build_sampler("euler", num_steps=4, guidance=3.0, guidance_interval_min=0.0, guidance_interval_max=1.0)
    rec = Recorder()
    cond, uncond = torch.tensor([1, 2]), torch.tensor([9, 9])
    sampler(rec, torch.zeros(2, 3), cond, uncond)
    # t = 0 is outside (0, 1] (strict lower bound): conditional rows only; the other steps double.
    assert [rows for rows, _, _ in rec.calls] == [2, 4, 4, 4]
    assert torch.equal(rec.calls[1][2], torch.tensor([9, 9, 1, 2]))
    assert sampler.last_stats == {"nfe": 4, "rows": 14}


def test_guidance_one_never_doubles_and_needs_no_uncond():
    sampler = build_sampler("heun", num_steps=6, guidance=1.0)
    rec = Recorder()
    sampler(rec, torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    assert {rows for rows, _, _ in rec.calls} == {3}
    assert sampler.last_stats == {"nfe": 11, "rows": 33}


def test_guidance_matches_cfg_formula():
    """One guided Euler step from t_0 = 0.25: x_1 = x_0 + dt·(v_u + g·(v_c − v_u))."""
    sampler = build_sampler("euler", num_steps=1, timesteps=[0.25, 0.5], guidance=2.5)
    x0 = torch.randn(2, 4)
    rec = Recorder()
    x1 = sampler(rec, x0, torch.tensor([1, 2]), torch.tensor([0, 0]))
    den = Recorder()
    t = torch.full((2,), 0.25)
    v_c = (den(x0, t, torch.tensor([1, 2])) - x0) / 0.75
    v_u = (den(x0, t, torch.tensor([0, 0])) - x0) / 0.75
    torch.testing.assert_close(x1, x0 + 0.25 * (v_u + 2.5 * (v_c - v_u)))


def _guided_times(rec: Recorder, batch: int) -> list[float]:
    return [round(float(t[0]), 6) for rows, t, _ in rec.calls if rows == 2 * batch]


def test_interval_boundaries_per_sampler():
    grid = [0.0, 0.2, 0.5, 0.8, 1.0]
    common = dict(num_steps=4, timesteps=grid, guidance=2.0, guidance_interval_min=0.2, guidance_interval_max=0.8)
    cond, uncond = torch.tensor([1]), torch.tensor([0])
    # Euler: t_min < t <= t_max.
    rec = Recorder()
    build_sampler("euler", **common)(rec, torch.zeros(1, 2), cond, uncond)
    assert _guided_times(rec, 1) == [0.5, 0.8]
    # Adams: strict on both sides.
    rec = Recorder()
    build_sampler("adams", **common)(rec, torch.zeros(1, 2), cond, uncond)
    assert _guided_times(rec, 1) == [0.5]
    # Heun: the corrector at t_{i+1} follows the predictor's t_i: at step 1 (t_i = 0.2, outside) the
    # corrector at t = 0.5 is unguided; at step 2 (t_i = 0.5) the corrector at 0.8 is guided; the last
    # step (t_i = 0.8, inside) is Euler with no corrector.
    rec = Recorder()
    build_sampler("heun", **common)(rec, torch.zeros(1, 2), cond, uncond)
    evaluated = [(rows, round(float(t[0]), 6)) for rows, t, _ in rec.calls]
    assert evaluated == [(1, 0.0), (1, 0.2), (1, 0.2), (1, 0.5), (2, 0.5), (2, 0.8), (2, 0.8)]


def test_denoiser_receives_batch_of_grid_times():
    sampler = build_sampler("adams", num_steps=5, timeshift=3.0, order=3)
    rec = Recorder()
    sampler(rec, torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
    for (rows, t, _), expected in zip(rec.calls, sampler.timesteps[:-1]):
        assert t.shape == (rows,) and t.dtype == torch.float32
        assert torch.all(t == expected)


def test_default_clamp_truncates_last_step_and_exact_final_step_lands_on_prediction():
    """The t_eps clamp: Euler-50 (shift 1) moves the last step 0.4 of the way to x̂; exact_final_step lands on it."""
    target = torch.full((1, 3), 0.7)
    constant = lambda x, t, c: target.expand_as(x)  # noqa: E731
    x0 = torch.zeros(1, 3)
    clamped = build_sampler("euler", num_steps=50)
    rec_x, trajectory = clamped(constant, x0, torch.tensor([0]), return_trajectory=True)
    before_last = trajectory[-2]
    progress = (rec_x - before_last) / (target - before_last)
    torch.testing.assert_close(progress, torch.full_like(progress, 0.4))
    for name in ("euler", "heun", "adams", "euler_maruyama"):
        exact = build_sampler(name, num_steps=50, exact_final_step=True)
        assert exact.t_eps == 0.0
        assert torch.equal(exact(constant, x0, torch.tensor([0])), target)


def test_trajectory_holds_every_grid_state():
    sampler = build_sampler("heun", num_steps=7, exact_henu=False)
    noise = torch.randn(2, 3)
    x, trajectory = sampler(Recorder(), noise, torch.tensor([0, 1]), return_trajectory=True)
    assert trajectory.shape == (8, 2, 3)
    assert torch.equal(trajectory[0], noise) and torch.equal(trajectory[-1], x)


def test_lazy_heun_costs_n_calls_and_exact_costs_2n_minus_1():
    for exact, nfe in ((True, 2 * 9 - 1), (False, 9)):
        sampler = build_sampler("heun", num_steps=9, exact_henu=exact)
        sampler(Recorder(), torch.zeros(1, 1), torch.tensor([0]))
        assert sampler.last_stats["nfe"] == nfe


def test_paper_xl_setting_guides_38_of_50_steps():
    sampler = build_sampler(
        "heun",
        num_steps=50,
        timeshift=2.0,
        guidance=2.25,
        guidance_interval_min=0.1,
        guidance_interval_max=0.9,
        exact_henu=True,
    )
    assert sum(sampler.guided_steps()) == 38
    rec = Recorder()
    sampler(rec, torch.zeros(1, 1), torch.tensor([1]), torch.tensor([0]))
    assert sampler.last_stats["nfe"] == 99
    assert sampler.last_stats["rows"] < 198  # the original's rows per image


# -- Euler–Maruyama -----------------------------------------------------------------------------------------
def test_sde_ode_rule_equals_euler():
    noise = torch.randn(2, 3, 4, 4)
    e = torch.randn(4, 3, 1, 1)
    y = torch.tensor([1, 2])
    euler = build_sampler("euler", num_steps=6, timeshift=2.0)(toy_denoiser(e), noise, y)
    sde = build_sampler("euler_maruyama", num_steps=6, timeshift=2.0, step_rule="ode")(toy_denoiser(e), noise, y)
    torch.testing.assert_close(sde, euler, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rule", ["sde", "sde_preserve", "sid2"])
def test_sde_noise_is_reproducible_and_per_sample(rule):
    e = torch.randn(3, 3, 1, 1)
    noise = torch.randn(3, 3, 2, 2)
    y = torch.tensor([0, 1, 2])
    sampler = build_sampler("euler_maruyama", num_steps=5, step_rule=rule)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    full = sampler(toy_denoiser(e), noise, y, generator=gens())
    again = sampler(toy_denoiser(e), noise, y, generator=gens())
    assert torch.equal(full, again)
    # Row 2 alone with its own generator gives the same sample: noise never depends on the batch.
    alone = sampler(toy_denoiser(e), noise[2:], y[2:], generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(alone[0], full[2], atol=1e-6, rtol=0)
    other = sampler(toy_denoiser(e), noise, y, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(other, full)


# -- grids and coefficients (properties) ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.floats(0.05, 20.0), st.one_of(st.none(), st.floats(1e-3, 0.99)))
def test_grid_is_increasing_from_0_to_1(num_steps, shift, last_step):
    grid = time_grid(num_steps, shift, last_step)
    assert grid.shape == (num_steps + 1,) and grid.dtype == torch.float32
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert bool((grid[1:] > grid[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.05, 20.0))
def test_time_unshift_inverts_time_shift(t, shift):
    t = torch.tensor(t, dtype=torch.float64)
    assert abs(time_unshift(time_shift(t, shift), shift).item() - t.item()) < 1e-12


def test_grid_matches_spec_examples():
    grid = time_grid(50, 2.0)
    torch.testing.assert_close(grid[:3], torch.tensor([0.0, 0.0101, 0.0204]), atol=1e-4, rtol=0)
    torch.testing.assert_close(grid[-3:], torch.tensor([0.9231, 0.9608, 1.0]), atol=1e-4, rtol=0)
    grid = time_grid(25, 3.0)
    torch.testing.assert_close(grid[[1, -3, -2]], torch.tensor([0.0137, 0.7931, 0.8889]), atol=1e-4, rtol=0)
    base = uniform_grid(4, last_step=0.4)
    torch.testing.assert_close(base, torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4),
    st.floats(0.01, 1.0),
    st.booleans(),
)
def test_adams_weights_sum_to_one(gaps, last_gap, stable):
    points = [sum(gaps[:k]) for k in range(len(gaps))]
    target = points[-1] + last_gap
    weights = adams_coefficients(points, target, stable=stable)
    assert len(weights) == len(points)
    # Weights can be large with uneven steps; their sum is exact up to rounding of that size.
    scale = max(1.0, sum(abs(w) for w in weights))
    assert abs(sum(weights) - 1.0) < (1e-12 if stable else 1e-6) * scale


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_adams_order_2_is_variable_step_ab2(h_prev, h):
    c_prev, c_cur = adams_coefficients([0.0, h_prev], h_prev + h, stable=True)
    assert math.isclose(c_prev, -h / (2 * h_prev), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(c_cur, 1 + h / (2 * h_prev), rel_tol=1e-9)


def test_adams_constant_step_weights_are_classical():
    classical = {
        1: [1.0],
        2: [-1 / 2, 3 / 2],
        3: [5 / 12, -16 / 12, 23 / 12],
        4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24],
    }
    for order, expected in classical.items():
        points = [0.1 * k for k in range(order)]
        for stable, tol in ((True, 1e-12), (False, 1e-4)):
            got = adams_coefficients(points, 0.1 * order, stable=stable)
            assert all(abs(a - b) < tol for a, b in zip(got, expected)), (order, stable, got)


@pytest.mark.parametrize("transform", sorted(TIME_TRANSFORMS))
def test_adams_time_transforms_give_finite_weights(transform):
    sampler = AdamsSampler(num_steps=10, order=3, lms_transform_fn=transform, timeshift=3.0)
    for weights in sampler.coefficients:
        assert all(math.isfinite(w) for w in weights) and abs(sum(weights) - 1) < 1e-4
    assert sampler.coefficients[0] == [1.0]
    x = sampler(Recorder(), torch.zeros(2, 3), torch.tensor([0, 1]))
    assert torch.isfinite(x).all()


def test_registry_and_package_exports():
    assert list_samplers() == ["adams", "euler", "euler_maruyama", "heun"]
    assert list_samplers("euler*") == ["euler", "euler_maruyama"]
    assert isinstance(registries.sampler.build("euler", num_steps=3), pixelgen.samplers.EulerSampler)
    assert pixelgen.build_sampler is build_sampler


# -- input checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "error", "match"),
    [
        ("eulr", {}, KeyError, "did you mean 'euler'"),
        ("euler", {"num_steps": 0}, ValueError, "num_steps must be an integer >= 1"),
        ("euler", {"num_steps": 2.5}, ValueError, "num_steps must be an integer"),
        ("euler", {"guidance_interval_min": 0.5, "guidance_interval_max": 0.5}, ValueError, "interval is empty"),
        ("heun", {"guidance_interval_min": 0.9, "guidance_interval_max": 0.1}, ValueError, "interval is empty"),
        ("euler", {"guidance_interval_max": 1.5}, ValueError, r"guidance_interval_max must be a number in \[0, 1\]"),
        ("euler", {"guidance_interval_min": -0.1}, ValueError, r"guidance_interval_min must be a number in \[0, 1\]"),
        ("adams", {"order": 5}, ValueError, "order must be an integer from 1 to 4"),
        ("adams", {"order": 0}, ValueError, "order must be an integer from 1 to 4"),
        ("adams", {"lms_transform_fn": "snrr"}, ValueError, "Unknown lms_transform_fn"),
        ("euler", {"timeshift": 0.0}, ValueError, "timeshift must be a finite number > 0"),
        ("euler", {"guidance": float("nan")}, ValueError, "guidance must be a finite number"),
        ("euler", {"last_step": 1.0}, ValueError, r"last_step must lie in \(0, 1\)"),
        ("euler", {"t_eps": -0.1}, ValueError, "t_eps must be a number"),
        ("euler", {"num_steps": 2, "timesteps": [0.0, 0.6, 0.5]}, ValueError, "strictly increasing"),
        ("euler", {"num_steps": 3, "timesteps": [0.0, 0.5, 1.0]}, ValueError, "needs 4 time points"),
        ("euler", {"num_steps": 1, "timesteps": [0.0, 1.2]}, ValueError, r"inside \[0, 1\]"),
        ("euler", {"exact_henu": True}, TypeError, "Sampler 'euler' has no parameter 'exact_henu'"),
        ("heun", {"exact_heun": True}, TypeError, "did you mean 'exact_henu'"),
        ("euler_maruyama", {"step_rule": "langevin"}, ValueError, "Unknown step_rule"),
    ],
)
def test_invalid_parameters_fail_with_one_sentence(name, params, error, match):
    with pytest.raises(error, match=match):
        build_sampler(name, **params)


def test_interval_rejects_bad_values_directly():
    with pytest.raises(ValueError, match="interval is empty"):
        GuidanceInterval(0.3, 0.2)


def test_call_checks():
    sampler = build_sampler("euler", num_steps=3, guidance=2.0)
    den = Recorder()
    with pytest.raises(ValueError, match="cond has 2 rows but the noise batch has 3"):
        sampler(den, torch.zeros(3, 2), torch.tensor([0, 1]), torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match="uncond has 2 rows but the noise batch has 3"):
        sampler(den, torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="needs uncond"):
        sampler(den, torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        sampler(den, torch.zeros(3, 2, dtype=torch.long), torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]))
    with pytest.raises(TypeError, match="denoiser must be callable"):
        sampler("net", torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match="one per sample"):
        sampler(den, torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.tensor([5]), generator=[torch.Generator()])
    with pytest.raises(ValueError, match="must return x̂ with the input's shape"):
        sampler(lambda x, t, c: x[:, :1], torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.tensor([5]))
    # a single unconditional row is broadcast to the batch
    sampler(den, torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.tensor([5]))


def test_nan_names_step_and_time():
    sampler = build_sampler("heun", num_steps=4)

    def breaks_late(x, t, c):
        return torch.full_like(x, float("nan")) if float(t[0]) > 0.5 else torch.zeros_like(x)

    with pytest.raises(FloatingPointError, match=r"at step 2 \(t = 0\.75\)"):
        sampler(breaks_late, torch.zeros(2, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_value_anywhere_is_caught(bad):
    sampler = build_sampler("euler", num_steps=3)

    def one_bad_value(x, t, c):
        out = torch.zeros_like(x)
        if float(t[0]) > 0.5:
            out[-1, -1] = bad
        return out

    with pytest.raises(FloatingPointError, match="at step 2"):
        sampler(one_bad_value, torch.zeros(2, 5), torch.tensor([0, 1]))
    assert torch.equal(
        sampler(lambda x, t, c: torch.zeros_like(x), torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)),
        torch.zeros(0, 5),
    )
