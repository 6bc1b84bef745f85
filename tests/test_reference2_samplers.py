"""Samplers against the second reference set of the original (Adams weights and time transforms, SDE score,
time sampling), the named options that keep pixelgen's earlier choices, and the sampler contract over the
registry (built-in samplers and a plugin's)."""

from __future__ import annotations

import json
import math
import pathlib
import textwrap
from fractions import Fraction

import pytest
import torch
from plugin_utils import on_path, write_dist_info
from safetensors.torch import load_file

from pixelgen import flow
from pixelgen.samplers import (
    Sampler,
    adams_coefficients,
    build_sampler,
    list_samplers,
    list_sampling_presets,
    sampler_parameters,
    sampling_preset,
)
from pixelgen.samplers import sde as sde_module
from pixelgen.samplers.ode import TIME_TRANSFORMS

DATA = pathlib.Path(__file__).parent / "data"
META = json.loads((DATA / "upstream_reference2.json").read_text())
SAMPLER_CASES = sorted(k for k, v in META.items() if isinstance(v, dict) and v.get("kind") == "sampler")


@pytest.fixture(scope="module")
def ref():
    return load_file(str(DATA / "upstream_reference2.safetensors"))


def toy(e: torch.Tensor):
    """The reference set's stand-in network: x̂ = tanh(0.5·x + 0.3·t + e[y])."""
    return lambda x, t, y: torch.tanh(0.5 * x + 0.3 * t.view(-1, 1, 1, 1).to(x.dtype) + e[y].to(x.dtype))


def run_case(ref, case, monkeypatch, **overrides):
    """(sampler, output) of a reference case; the SDE's Gaussian increments are the stored ones, in order."""
    info = META[case]
    draws = iter([ref[f"{case}/draws/{k}"] for k in range(info.get("num_draws", 0))])
    monkeypatch.setattr(sde_module, "draw_noise", lambda like, generators: next(draws).to(like.dtype))
    sampler = build_sampler(info["sampler"], **{**info["params"], **overrides})
    y = ref[f"{case}/in/y"]
    with torch.no_grad():
        out = sampler(
            toy(ref[f"{case}/toy/e"]), ref[f"{case}/in/noise"].clone(), y, torch.full_like(y, info["null_class"])
        )
    return sampler, out


def tolerance(case, reference: torch.Tensor) -> float:
    tol = META[case]["tol"]
    return tol["atol"] + tol["rtol"] * float(reference.abs().max())


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# -- every sampler case of the reference set -----------------------------------------------------------------
def test_reference_cases_cover_every_kind():
    assert {META[c]["sampler"] for c in SAMPLER_CASES} == {"euler", "heun", "adams", "euler_maruyama"}


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_reproduces_the_original(ref, case, monkeypatch):
    sampler, out = run_case(ref, case, monkeypatch)
    reference = ref[f"{case}/out/x"]
    assert max_error(out, reference) <= tolerance(case, reference)
    assert torch.equal(sampler.timesteps, ref[f"{case}/timesteps"])
    assert sampler.last_stats["rows"] <= META[case]["upstream_net_rows"]
    if META[case]["sampler"] == "adams":  # the weights themselves, bit for bit
        ours = torch.tensor([c for row in sampler.coefficients for c in row], dtype=torch.float32)
        assert torch.equal(ours, ref[f"{case}/coeffs"])
        assert [len(row) for row in sampler.coefficients] == META[case]["coeff_lengths"]


# -- misc cases ------------------------------------------------------------------------------------------------
def test_adams_weights_are_the_originals_bit_for_bit(ref):
    info = META["m_adams_coeffs"]
    flat, lengths = ref["m_adams_coeffs/out"].tolist(), iter(info["lengths"])
    position = exact = total = 0
    for order, steps, shift, last_step in info["configs"]:
        sampler = build_sampler("adams", order=order, num_steps=steps, timeshift=shift, last_step=last_step)
        for row in sampler.coefficients:
            k = next(lengths)
            exact += row == flat[position : position + k]
            position, total = position + k, total + 1
    assert (exact, total) == (total, 1080) and position == len(flat)


def test_time_transforms_are_the_originals(ref):
    t = ref["m_lms_transforms/in/t"]
    for theirs, ours in META["m_lms_transforms"]["names"].items():
        expected = ref[f"m_lms_transforms/out/{theirs}"].double()
        got = torch.tensor([float(TIME_TRANSFORMS[ours](v)) for v in t], dtype=torch.float64)
        assert float(((got - expected).abs() / expected.abs()).max()) <= META["m_lms_transforms"]["tol"]["rtol"]


def test_training_times_are_the_originals(ref):
    n = ref["m_time/in/n"]
    assert torch.equal(flow.sample_t(n.numel(), draws=n), ref["m_time/out/t"])
    assert torch.equal(flow.sample_t(n.numel(), draws=n, shift=3.0), ref["m_time/out/t_shift3"])


# -- one test per point, and the options that keep the earlier behaviour ---------------------------------------
def _exact_adams(points: list[float], target: float) -> list[Fraction]:
    """Normalised Lagrange-basis integrals in exact rational arithmetic (for float inputs taken exactly)."""
    nodes, a, b = [Fraction(p) for p in points], Fraction(points[-1]), Fraction(target)
    weights = []
    for j, node in enumerate(nodes):
        poly = [Fraction(1)]
        denominator = Fraction(1)
        for k, root in enumerate(nodes):
            if k != j:
                poly = [lo - root * hi for lo, hi in zip([Fraction(0)] + poly, poly + [Fraction(0)])]
                denominator *= node - root
        weights.append(sum(c * (b ** (i + 1) - a ** (i + 1)) / (i + 1) for i, c in enumerate(poly)) / denominator)
    total = sum(weights)
    return [w / total for w in weights]


def test_adams_parity_weights_are_float32_closed_forms_and_stable_option_is_exact():
    """Order 4 at 25 steps: the original's float32 closed forms are far (up to ~4e-2) from the exact weights;
    ``stable_coefficients=True`` (pixelgen's float64 form) is exact to 1e-9."""
    parity = build_sampler("adams", order=4, num_steps=25)
    stable = build_sampler("adams", order=4, num_steps=25, stable_coefficients=True)
    grid = parity.timesteps.tolist()
    worst_parity = worst_stable = 0.0
    for i in range(3, 25):
        exact = _exact_adams(grid[i - 3 : i + 1], grid[i + 1])
        worst_parity = max(worst_parity, max(abs(float(w - e)) for w, e in zip(parity.coefficients[i], exact)))
        worst_stable = max(worst_stable, max(abs(float(w - e)) for w, e in zip(stable.coefficients[i], exact)))
    assert worst_stable < 1e-9 < 1e-3 < worst_parity
    # Order 2 closed form: 0.5/(t1 − t2)·((e − t2)² − (s − t2)²), evaluated on float32 0-d tensors, normalised.
    t1, t2, s, e = (torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.3, 0.3, 0.45))
    w1 = 0.5 / (t1 - t2) * ((e - t2) ** 2 - (s - t2) ** 2)
    w2 = 0.5 / (t2 - t1) * ((e - t1) ** 2 - (s - t1) ** 2)
    assert adams_coefficients([0.1, 0.3], 0.45) == [float(w1 / (w1 + w2)), float(w2 / (w1 + w2))]


def test_adams_time_transforms_are_not_squared_and_the_squared_ones_are_options():
    assert float(TIME_TRANSFORMS["snr"](0.75)) == pytest.approx(3.0, rel=1e-6)  # t/(1 − t), not (t/(1 − t))²
    assert float(TIME_TRANSFORMS["inverse_snr"](0.75)) == pytest.approx(1 / 3, rel=1e-6)
    assert float(TIME_TRANSFORMS["log_snr"](0.0)) == pytest.approx(math.log(1e-3 / (1 + 1e-3)), rel=1e-6)
    assert float(TIME_TRANSFORMS["snr"](1.0)) == pytest.approx(1e8, rel=1e-6)  # no upper clip at t = 1
    assert TIME_TRANSFORMS["squared_snr"](0.75) == pytest.approx(9.0)
    assert TIME_TRANSFORMS["log_squared_snr"](0.75) == pytest.approx(math.log(9.0))
    assert TIME_TRANSFORMS["inverse_squared_snr"](1.0) == pytest.approx(((1e-4) / (1 - 1e-4)) ** 2)
    ours = build_sampler("adams", num_steps=10, timeshift=1.5, lms_transform_fn="log_snr").coefficients
    squared = build_sampler("adams", num_steps=10, timeshift=1.5, lms_transform_fn="log_squared_snr").coefficients
    assert max(abs(a - b) for r, q in zip(ours, squared) for a, b in zip(r, q)) > 1e-3  # different clipping


def test_sde_score_comes_from_the_clamped_velocity(ref, monkeypatch):
    """``s = (t·v − x)/(1 − t)`` with ``v = (x̂ − x)/max(1 − t, 0.05)``; the exact score is ``score_from="x_hat"``."""
    x_hat, x = torch.randn(2, 3), torch.randn(2, 3)
    for t in (0.3, 0.94, 0.96, 0.99):
        v = (x_hat - x) / max(1 - t, 0.05)
        torch.testing.assert_close(flow.score(x_hat, x, t), (t * v - x) / (1 - t))
        exact = flow.score_exact(x_hat, x, t)
        assert torch.allclose(flow.score(x_hat, x, t), exact, atol=1e-5) == (1 - t >= 0.05)
    case = "s_sde_n50"  # shift 1: the step from t = 0.96 has 1 − t < 0.05
    reference = ref[f"{case}/out/x"]
    _, default = run_case(ref, case, monkeypatch)
    _, exact_score = run_case(ref, case, monkeypatch, score_from="x_hat")
    assert max_error(default, reference) <= tolerance(case, reference) < max_error(exact_score, reference)
    with pytest.raises(ValueError, match="Unknown score_from"):
        build_sampler("euler_maruyama", score_from="exact")


class Rows:
    """A denoiser that records the rows and times of each call."""

    def __init__(self):
        self.calls: list[tuple[int, float]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], float(t[0])))
        return torch.tanh(x + t.view(-1, *[1] * (x.ndim - 1)).to(x.dtype))


def test_guidance_interval_is_compared_in_the_noise_dtype():
    """float32(0.2) is not above the bound 0.2 in float32, but it is in float64 (as the original compares)."""
    sampler = build_sampler("euler", num_steps=2, timesteps=[0.0, 0.2, 1.0], guidance=2.0, guidance_interval_min=0.2)
    guided = {}
    for dtype in (torch.float32, torch.float64):
        den = Rows()
        sampler(den, torch.zeros(1, 2, dtype=dtype), torch.tensor([1]), torch.tensor([0]))
        guided[dtype] = [rows == 2 for rows, _ in den.calls]
    assert guided == {torch.float32: [False, False], torch.float64: [False, True]}
    assert sampler.guided_steps(torch.float64) == [False, True]


def test_constructor_defaults_are_documented():
    """pixelgen keeps 50 steps and exact Heun by default (the original's constructors: 250 and exact_henu=False;
    every config of the original sets both)."""
    params = sampler_parameters("heun")
    assert params["num_steps"][1] == 50 and params["exact_henu"][1] is True
    parity = (pathlib.Path(__file__).parents[1] / "docs" / "parity.md").read_text()
    assert "250" in parity and "exact_henu" in parity


# -- sampling presets --------------------------------------------------------------------------------------------
def test_paper_presets_are_registered_once():
    assert {"xl_cfg", "xl_nocfg", "l_euler50", "t2i_default", "t2i_validation"} <= set(list_sampling_presets())
    xl = sampling_preset("xl_cfg")
    assert xl.sampler == "heun" and xl.num == 50_000 and xl.per_class == 50
    assert dict(xl.params) == {
        "num_steps": 50, "exact_henu": True, "guidance": 2.25,
        "guidance_interval_min": 0.1, "guidance_interval_max": 0.9, "timeshift": 2.0,
    }  # fmt: skip
    t2i = sampling_preset("t2i_default").build()
    assert (type(t2i).__name__, t2i.order, t2i.num_steps, t2i.guidance, t2i.timeshift) == (
        "AdamsSampler", 2, 25, 4.0, 3.0,
    )  # fmt: skip
    assert sampling_preset("xl_cfg").build(num_steps=10).num_steps == 10
    with pytest.raises(TypeError):
        xl.params["guidance"] = 1.0  # presets are read-only


# -- the sampler contract, over the registry ---------------------------------------------------------------------
def check_sampler_contract(name: str) -> None:
    """What every registered sampler promises: shape, nfe/rows counts, trajectory, callback, exact final step."""
    sampler = build_sampler(name, num_steps=4, guidance=2.0, guidance_interval_min=0.3)
    assert isinstance(sampler, Sampler)
    noise, cond, uncond = torch.randn(3, 2, 4, 4), torch.tensor([0, 1, 2]), torch.tensor([9])
    den, seen = Rows(), []
    x, path = sampler(
        den, noise, cond, uncond, generator=torch.Generator().manual_seed(0), return_trajectory=True,
        callback=seen.append,
    )  # fmt: skip
    assert x.shape == noise.shape and torch.isfinite(x).all()
    assert path.shape == (5, *noise.shape) and torch.equal(path[0], noise) and torch.equal(path[-1], x)
    assert sampler.last_stats == {"nfe": len(den.calls), "rows": sum(rows for rows, _ in den.calls)}
    assert {rows for rows, _ in den.calls} <= {3, 6}
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
    assert [c["t"] for c in seen] == sampler.timesteps[:-1].tolist()
    for c, state in zip(seen, path[:-1]):
        assert torch.equal(c["x"], state)
        assert c["x_hat"] is None or c["x_hat"].shape == noise.shape
    exact = build_sampler(name, num_steps=4, exact_final_step=True)
    last = []
    x = exact(Rows(), noise, cond, generator=torch.Generator().manual_seed(0), callback=last.append)
    if exact.final_step_lands:
        assert last[-1]["x_hat"] is not None and torch.equal(x, last[-1]["x_hat"])


@pytest.mark.parametrize("name", list_samplers())
def test_every_registered_sampler_keeps_the_contract(name):
    check_sampler_contract(name)


def test_errors_name_the_step():
    sampler = build_sampler("heun", num_steps=3)
    calls = []

    def bad(x, t, cond):
        calls.append(1)
        return x if len(calls) < 4 else x[:1]

    with pytest.raises(ValueError, match=r"got \(1, 2\) at step 1 \(t = "):
        sampler(bad, torch.zeros(2, 2), torch.tensor([0, 1]))


def test_sampler_parameters_come_from_the_signatures():
    params = sampler_parameters("adams")
    assert params["order"] == (int, 2) and params["stable_coefficients"] == (bool, False)
    assert params["num_steps"] == (int, 50) and "guidance_interval_max" in params
    assert sampler_parameters("euler_maruyama")["score_from"] == (str, "velocity")
    with pytest.raises(TypeError, match="did you mean 'score_from'"):
        build_sampler("euler_maruyama", score_form="x_hat")


PLUGIN = """
import pixelgen
from pixelgen.samplers import step_sampler


@pixelgen.hookimpl
def pixelgen_register(registries):
    @step_sampler("toy_ralston")
    def ralston(model, x, s, state, *, alpha: float = 2 / 3):
        '''Ralston's second-order method: one extra evaluation at t + alpha·dt.'''
        v = model.velocity(x, s.t, s.guide)
        if s.last:
            return x + s.dt * v
        v2 = model.velocity(x + alpha * s.dt * v, s.t + alpha * s.dt, s.guide)
        return x + s.dt * ((1 - 1 / (2 * alpha)) * v + v2 / (2 * alpha))
"""


def test_a_plugin_sampler_is_held_to_the_contract(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXELGEN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("PIXELGEN_PLUGINS", raising=False)
    (tmp_path / "toy_sampler_pkg").mkdir()
    (tmp_path / "toy_sampler_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    write_dist_info(tmp_path, "toy-sampler", {"toy_sampler": "toy_sampler_pkg"})
    with on_path(tmp_path, modules=("toy_sampler_pkg",)):
        assert "toy_ralston" in list_samplers()
        check_sampler_contract("toy_ralston")
        assert sampler_parameters("toy_ralston")["alpha"] == (float, 2 / 3)
        sampler = build_sampler("toy_ralston", num_steps=5, alpha=0.5)
        assert sampler.params == {"alpha": 0.5} and "alpha=0.5" in repr(sampler)
        x = sampler(Rows(), torch.zeros(2, 3), torch.tensor([0, 1]))
        assert x.shape == (2, 3) and sampler.last_stats["nfe"] == 2 * 5 - 1
        with pytest.raises(TypeError, match="did you mean 'alpha'"):
            build_sampler("toy_ralston", alpah=0.5)
    assert "toy_ralston" not in list_samplers()
