"""Deterministic samplers of the probability-flow ODE dx/dt = v: Euler, Heun, Adams–Bashforth."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .base import Sampler, Step
from .guidance import GuidedDenoiser

__all__ = ["EulerSampler", "HeunSampler", "AdamsSampler", "adams_coefficients", "TIME_TRANSFORMS"]


class EulerSampler(Sampler):
    """Euler: ``x_{i+1} = x_i + (t_{i+1} − t_i)·v(x_i, t_i)``; N evaluations.

    Guidance at step i when ``t_min < t_i ≤ t_max``. ``exact_final_step``: velocities are unclamped and the
    last step returns the guided x̂ at (x_{N−1}, t_{N−1}), which is what the unclamped Euler step into t = 1
    computes, without its rounding.
    """

    name = "euler"

    def step(self, model: GuidedDenoiser, x: torch.Tensor, s: Step, state: dict) -> torch.Tensor:
        return x + s.dt * model.velocity(x, s.t, s.guide)


class HeunSampler(Sampler):
    """Heun: predictor ``x̃ = x_i + dt·v``, corrector ``x_{i+1} = x_i + dt·(v + v(x̃, t_{i+1}))/2``.

    - ``exact_henu=True`` (the released configs' flag name and value, pixelgen's default; docs/parity.md): v is
      evaluated at (x_i, t_i) every step, 2N − 1 evaluations. ``False`` ("lazy"): v reuses the previous corrector's evaluation (made at x̃, not at the corrected x_i),
      N evaluations.
    - The last step is plain Euler (no corrector at t = 1).
    - Guidance at step i when ``t_min < t_i ≤ t_max``; the corrector uses the predictor's t_i for this test.
    - ``exact_final_step``: velocities are unclamped; with ``exact_henu`` the last step returns the guided x̂
      at (x_{N−1}, t_{N−1}); the lazy variant keeps its Euler step with the reused (now unclamped) velocity,
      so it lands on x̂ only up to the lazy reuse error, and spends no extra evaluation.
    """

    name = "heun"

    def __init__(self, *args, exact_henu: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(exact_henu, bool):
            raise TypeError(f"exact_henu must be True or False, got {exact_henu!r}.")
        self.exact_henu = exact_henu

    @property
    def final_step_lands(self) -> bool:
        return self.exact_henu

    def step(self, model: GuidedDenoiser, x: torch.Tensor, s: Step, state: dict) -> torch.Tensor:
        v = state.get("v")
        if v is None or self.exact_henu:
            v = model.velocity(x, s.t, s.guide)
        if s.last:
            return x + s.dt * v
        state["v"] = v_next = model.velocity(x + s.dt * v, s.t_next, s.guide)
        return x + s.dt * (v + v_next) / 2

    def _extra_repr(self) -> str:
        return f"exact_henu={self.exact_henu}"


# -- Adams–Bashforth ---------------------------------------------------------------------------------------
def _f32(t: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float32)


def _snr(t):
    """The original's t → SNR: ``max(t, 1e-8)/(1 − t + 1e-8)`` (the ratio α/σ, not squared; no upper clip)."""
    t = _f32(t)
    return t.clamp_min(1e-8) / (1.0 - t + 1e-8)


def _log_snr(t):
    """The original's t → log-SNR: ``log(max(t, 1e-3)/(1 − t + 1e-3))``."""
    t = _f32(t)
    return torch.log(t.clamp_min(1e-3) / (1.0 - t + 1e-3))


def _inverse_snr(t):
    """The original's t → 1/SNR."""
    return 1.0 / _snr(t)


_T_CLIP = 1e-4


def _squared_snr(t):
    """α²/σ² = t²/(1 − t)² of the linear path, t clipped to [1e-4, 1 − 1e-4] (pixelgen's earlier variable)."""
    t = min(max(float(t), _T_CLIP), 1.0 - _T_CLIP)
    return (t / (1.0 - t)) ** 2


TIME_TRANSFORMS: dict[str, Callable[[float], object]] = {
    "nop": lambda t: _f32(t),
    "snr": _snr,
    "log_snr": _log_snr,
    "inverse_snr": _inverse_snr,
    "squared_snr": _squared_snr,
    "log_squared_snr": lambda t: math.log(_squared_snr(t)),
    "inverse_squared_snr": lambda t: 1.0 / _squared_snr(t),
}
"""Re-parametrisations of time for the Adams weights. ``snr``, ``log_snr``, ``inverse_snr``: the original's, in
float32; ``squared_snr`` and its log / inverse: the true SNR α²/σ² of the linear path, in float64."""


def _closed_form_weights(nodes: list[torch.Tensor], start: torch.Tensor, end: torch.Tensor) -> list[torch.Tensor]:
    """∫_start^end of each Lagrange basis polynomial through ``nodes`` (oldest first), by the original's closed
    forms on 0-d tensors (float32 in parity): the antiderivative of ``Π (τ − other)`` in expanded form,
    evaluated at both ends, subtracted and divided by ``Π (node − other)``."""
    q = len(nodes)
    if q == 1:
        return [end - start]
    weights = []
    for j, a in enumerate(nodes):
        b, *rest = [n for k, n in enumerate(nodes) if k != j]
        if q == 2:
            weights.append(0.5 / (a - b) * ((end - b) ** 2 - (start - b) ** 2))
        elif q == 3:
            (c,) = rest

            def antiderivative(tau, b=b, c=c):
                return 1 / 3 * tau**3 - 1 / 2 * (b + c) * tau**2 + (b * c) * tau

            weights.append((antiderivative(end) - antiderivative(start)) / ((a - b) * (a - c)))
        else:
            c, d = rest

            def antiderivative(tau, b=b, c=c, d=d):
                pairs = c * d + b * c + b * d
                return 1 / 4 * tau**4 - 1 / 3 * (b + c + d) * tau**3 + 1 / 2 * pairs * tau**2 - (b * c * d) * tau

            weights.append((antiderivative(end) - antiderivative(start)) / ((a - b) * (a - c) * (a - d)))
    return weights


def _stable_weights(points: list[float], target: float) -> list[float]:
    """The same integrals in float64 in the variable s = (τ − t_i)/(target − t_i) ∈ [0, 1] (well conditioned)."""
    origin, span = points[-1], target - points[-1]
    nodes = [(p - origin) / span for p in points]
    weights = []
    for j, a in enumerate(nodes):
        poly = [1.0]  # ascending coefficients of Π (s − other)
        denominator = 1.0
        for k, root in enumerate(nodes):
            if k != j:
                poly = [lo - root * hi for lo, hi in zip([0.0] + poly, poly + [0.0])]
                denominator *= a - root
        weights.append(sum(c / (k + 1) for k, c in enumerate(poly)) / denominator)
    return weights


def adams_coefficients(points: Sequence[float], target: float, *, stable: bool = False) -> list[float]:
    """Weights c_j of ``x_{i+1} = x_i + h·Σ c_j v_j`` for velocities known at ``points`` (oldest first; the last
    is t_i), normalised to sum to 1 (as the original).

    c_j is the integral of the j-th Lagrange basis polynomial through ``points`` over [t_i, target].

    - ``stable=False`` (parity): the original's closed forms on float32 0-d tensors in absolute time, then
      divided by their sum. Their cancellation grows as steps shrink (order 4 at 25 steps: weights up to 4e-2
      away from the exact ones).
    - ``stable=True``: the integrals in float64 in the variable s = (τ − t_i)/(target − t_i), well conditioned
      for any step size.
    """
    if isinstance(points, torch.Tensor):
        points = points.tolist()
    values = [float(p) for p in points]
    target_value = float(target)
    if not values or len(set(values)) != len(values) or target_value in values or len(values) > 4:
        raise ValueError("Adams coefficients need one to four distinct time points, all different from the target.")
    if stable:
        weights = _stable_weights(values, target_value)
        total = sum(weights)
        return [w / total for w in weights]
    nodes = [_f32(p) for p in points]
    weights = _closed_form_weights(nodes, nodes[-1], _f32(target))
    total = weights[0]
    for w in weights[1:]:
        total = total + w
    return [float(w / total) for w in weights]


class AdamsSampler(Sampler):
    """Variable-step Adams–Bashforth of order 1–4; N evaluations, no special last step.

    At step i the order is q = min(order, i + 1); the weights are :func:`adams_coefficients` of the last q
    grid times (after ``lms_transform_fn``: ``"nop"`` (default), the original's ``"snr"``, ``"log_snr"``,
    ``"inverse_snr"``, pixelgen's ``"squared_snr"``, ``"log_squared_snr"``, ``"inverse_squared_snr"``, or a
    callable float → float). Order 2 is ``c_{i−1} = −h/(2h')``, ``c_i = 1 + h/(2h')``. By default the weights
    are computed as the original does (float32 closed forms); ``stable_coefficients=True`` computes them in a
    well-conditioned float64 form instead (see :func:`adams_coefficients`).
    Guidance when ``t_min < t_i < t_max`` (strict on both sides, as the original).

    The original advances t by accumulating dt in float32; that reproduces the grid to within one ulp on a few
    steps, below the agreement of its outputs, so the grid times are used directly.
    ``exact_final_step``: velocities are unclamped and the last step returns the guided x̂ at
    (x_{N−1}, t_{N−1}) instead of the multistep update. That final step is first order, like the first
    (startup) step, so it does not lower the global order, which the startup already holds at ≤ 2.
    """

    name = "adams"
    guidance_includes_max = False

    def __init__(
        self,
        *args,
        order: int = 2,
        lms_transform_fn: str | Callable[[float], float] = "nop",
        stable_coefficients: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
            raise ValueError(f"order must be an integer from 1 to 4, got {order!r}.")
        if isinstance(lms_transform_fn, str):
            if lms_transform_fn not in TIME_TRANSFORMS:
                raise ValueError(
                    f"Unknown lms_transform_fn '{lms_transform_fn}'; choose one of {', '.join(TIME_TRANSFORMS)} or pass a callable."
                )
            transform = TIME_TRANSFORMS[lms_transform_fn]
        elif callable(lms_transform_fn):
            transform = lms_transform_fn
        else:
            raise TypeError(f"lms_transform_fn must be a name or a callable, got {type(lms_transform_fn).__name__}.")
        if not isinstance(stable_coefficients, bool):
            raise TypeError(f"stable_coefficients must be True or False, got {stable_coefficients!r}.")
        self.order = order
        self.stable_coefficients = stable_coefficients
        self.lms_transform_fn = lms_transform_fn
        taus = [transform(t) for t in self.timesteps]
        values = [float(tau) for tau in taus]
        if not all(math.isfinite(v) for v in values) or len(set(values)) != len(values):
            raise ValueError("lms_transform_fn must map the time grid to distinct finite values.")
        self.coefficients = [
            adams_coefficients(taus[max(0, i + 1 - order) : i + 1], taus[i + 1], stable=stable_coefficients)
            for i in range(self.num_steps)
        ]

    def step(self, model: GuidedDenoiser, x: torch.Tensor, s: Step, state: dict) -> torch.Tensor:
        history = state["history"] = (state.get("history", []) + [model.velocity(x, s.t, s.guide)])[-self.order :]
        return x + s.dt * sum(c * v for c, v in zip(self.coefficients[s.i], history))

    def _extra_repr(self) -> str:
        return (
            f"order={self.order}, lms_transform_fn={self.lms_transform_fn!r}, "
            f"stable_coefficients={self.stable_coefficients}"
        )
