"""Deterministic samplers of the probability-flow ODE dx/dt = v: Euler (§5.3), Heun (§5.4), Adams–Bashforth (§5.5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .base import Generators, Sampler
from .guidance import GuidedDenoiser

__all__ = ["EulerSampler", "HeunSampler", "AdamsSampler", "adams_coefficients", "TIME_TRANSFORMS"]


class EulerSampler(Sampler):
    """Euler: ``x_{i+1} = x_i + (t_{i+1} − t_i)·v(x_i, t_i)``; N evaluations (spec §5.3).

    Guidance at step i when ``t_min < t_i ≤ t_max``. ``exact_final_step``: velocities are unclamped and the
    last step returns the guided x̂ at (x_{N−1}, t_{N−1}), which is what the unclamped Euler step into t = 1
    computes, without its rounding.
    """

    name = "euler"

    def _integrate(
        self, model: GuidedDenoiser, x: torch.Tensor, generators: Generators, trajectory: list[torch.Tensor] | None
    ) -> torch.Tensor:
        times, steps, guided = self._times, self._steps, self.guided_steps()
        for i, (t, dt) in enumerate(zip(times[:-1], steps)):
            model.step = i
            if self.exact_final_step and i == self.num_steps - 1:
                x = model.prediction(x, t, guided[i])
            else:
                x = x + dt * model.velocity(x, t, guided[i])
            if trajectory is not None:
                trajectory.append(x)
        return x


class HeunSampler(Sampler):
    """Heun (spec §5.4): predictor ``x̃ = x_i + dt·v``, corrector ``x_{i+1} = x_i + dt·(v + v(x̃, t_{i+1}))/2``.

    - ``exact_henu=True`` (the original's flag name; default): v is evaluated at (x_i, t_i) every step,
      2N − 1 evaluations. ``False`` ("lazy"): v reuses the previous corrector's evaluation (made at x̃, not
      at the corrected x_i), N evaluations.
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

    def _integrate(
        self, model: GuidedDenoiser, x: torch.Tensor, generators: Generators, trajectory: list[torch.Tensor] | None
    ) -> torch.Tensor:
        times, steps, guided = self._times, self._steps, self.guided_steps()
        last = self.num_steps - 1
        v: torch.Tensor | None = None
        for i, (t, dt) in enumerate(zip(times[:-1], steps)):
            model.step = i
            if i == last and self.exact_final_step and self.exact_henu:
                x = model.prediction(x, t, guided[i])
            else:
                if v is None or self.exact_henu:
                    v = model.velocity(x, t, guided[i])
                if i == last:
                    x = x + dt * v
                else:
                    v_next = model.velocity(x + dt * v, times[i + 1], guided[i])
                    x = x + dt * (v + v_next) / 2
                    v = v_next
            if trajectory is not None:
                trajectory.append(x)
        return x

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", exact_henu={self.exact_henu})"


# -- Adams–Bashforth ---------------------------------------------------------------------------------------
_T_CLIP = 1e-4
"""Times are clipped to [_T_CLIP, 1 − _T_CLIP] before an SNR transform so that t = 0 and t = 1 stay finite."""


def _snr(t: float) -> float:
    t = min(max(t, _T_CLIP), 1.0 - _T_CLIP)
    return (t / (1.0 - t)) ** 2


TIME_TRANSFORMS: dict[str, Callable[[float], float]] = {
    "nop": lambda t: t,
    "snr": _snr,
    "log_snr": lambda t: math.log(_snr(t)),
    "inverse_snr": lambda t: 1.0 / _snr(t),
}
"""Re-parametrisations of time for the Adams coefficients; SNR = α²/σ² = t²/(1 − t)² for the linear path."""


def _lagrange_integral(nodes: list, j: int, lo, hi, dtype) -> object:
    """∫_lo^hi of the j-th Lagrange basis polynomial through ``nodes``, every operation rounded to ``dtype``.

    The antiderivative is evaluated as Σ a_k·τ^(k+1)/(k+1), highest power first, at both ends and
    subtracted: the closed form the original evaluates, with the same rounding behaviour in float32.
    """
    others = [n for k, n in enumerate(nodes) if k != j]
    poly = [dtype(1.0)]  # ascending coefficients of prod_k (τ − node_k)
    for root in others:
        poly = [dtype(a - root * b) for a, b in zip([dtype(0.0)] + poly, poly + [dtype(0.0)])]
    denominator = dtype(1.0)
    for root in others:
        denominator = dtype(denominator * (nodes[j] - root))

    def antiderivative(tau):
        total = dtype(0.0)
        for k in reversed(range(len(poly))):
            total = dtype(total + dtype(poly[k] * tau ** dtype(k + 1)) / dtype(k + 1))
        return total

    return dtype((antiderivative(hi) - antiderivative(lo)) / denominator)


def adams_coefficients(points: Sequence[float], target: float, *, stable: bool = False) -> list[float]:
    """Weights c_j of ``x_{i+1} = x_i + h·Σ c_j v_j`` for velocities known at ``points`` (the last is t_i).

    c_j is the integral of the j-th Lagrange basis polynomial through ``points`` over [t_i, target],
    normalised so that the weights sum to 1 (as the original).

    - ``stable=False`` (parity): as the original, the closed-form integral is evaluated in absolute time in
      float32. Its cancellation grows as steps shrink (relative error ≈ 1e-7/h^(q−1) before normalisation);
      for the golden order-3 case the original's sample sits 1.2e-5 away from the exact weights' sample.
    - ``stable=True``: the integral is taken in float64 in the variable s = (τ − t_i)/(target − t_i), which is
      well conditioned for any step size.
    """
    points = [float(p) for p in points]
    if not points or len(set(points)) != len(points) or target in points:
        raise ValueError("Adams coefficients need at least one point and distinct time points.")
    if stable:
        dtype, origin, span = np.float64, points[-1], target - points[-1]
        nodes, lo, hi = [dtype((p - origin) / span) for p in points], dtype(0.0), dtype(1.0)
    else:
        dtype = np.float32
        nodes, lo, hi = [dtype(p) for p in points], dtype(points[-1]), dtype(target)
    weights = [_lagrange_integral(nodes, j, lo, hi, dtype) for j in range(len(nodes))]
    total = dtype(sum(weights, dtype(0.0)))
    return [float(dtype(w / total)) for w in weights]


class AdamsSampler(Sampler):
    """Variable-step Adams–Bashforth of order 1–4 (spec §5.5); N evaluations, no special last step.

    At step i the order is q = min(order, i + 1); the weights are :func:`adams_coefficients` of the last q
    grid times (after ``lms_transform_fn``: ``"nop"`` (default), ``"snr"``, ``"log_snr"``, ``"inverse_snr"``
    or a callable float → float). Order 2 is ``c_{i−1} = −h/(2h')``, ``c_i = 1 + h/(2h')``. By default the
    weights are computed as the original does, in float32 and absolute time; ``stable_coefficients=True``
    computes them in a well-conditioned float64 form instead (see :func:`adams_coefficients`).
    Guidance when ``t_min < t_i < t_max`` (strict on both sides, as the original).

    The original advances t by accumulating dt in float32; that reproduces the grid to within a few ulp,
    below the 1e-5 agreement of its outputs, so the grid times are used directly.
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
        taus = [float(transform(t)) for t in self._times]
        if not all(math.isfinite(tau) for tau in taus) or len(set(taus)) != len(taus):
            raise ValueError("lms_transform_fn must map the time grid to distinct finite values.")
        self.coefficients = [
            adams_coefficients(taus[max(0, i + 1 - order) : i + 1], taus[i + 1], stable=stable_coefficients)
            for i in range(self.num_steps)
        ]

    def _integrate(
        self, model: GuidedDenoiser, x: torch.Tensor, generators: Generators, trajectory: list[torch.Tensor] | None
    ) -> torch.Tensor:
        times, steps, guided = self._times, self._steps, self.guided_steps()
        history: list[torch.Tensor] = []
        for i, (t, dt) in enumerate(zip(times[:-1], steps)):
            model.step = i
            if self.exact_final_step and i == self.num_steps - 1:
                x = model.prediction(x, t, guided[i])
            else:
                history = (history + [model.velocity(x, t, guided[i])])[-self.order :]
                combined = sum(c * v for c, v in zip(self.coefficients[i], history))
                x = x + dt * combined
            if trajectory is not None:
                trajectory.append(x)
        return x

    def __repr__(self) -> str:
        return (
            super().__repr__()[:-1]
            + f", order={self.order}, lms_transform_fn={self.lms_transform_fn!r}, stable_coefficients={self.stable_coefficients})"
        )
