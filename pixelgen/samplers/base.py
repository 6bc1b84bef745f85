"""The sampling loop, written once: a sampler only says how one step moves x.

>>> class Midpoint(Sampler):                      # a new sampler: one class (or one function, see step_sampler)
...     name = "midpoint"
...     def step(self, model, x, s, state):
...         half = x + 0.5 * s.dt * model.velocity(x, s.t, s.guide)
...         return x + s.dt * model.velocity(half, s.t + 0.5 * s.dt, s.guide)
>>> registries.sampler.register("midpoint")(Midpoint)

:class:`Sampler` owns the parameters every sampler shares (grid, guidance and its interval, t_eps, the exact
final step), the input checks, the guided denoiser, the step loop, the trajectory, the callback, the step index
in error messages and the nfe/rows counts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..flow import T_EPS, time_grid
from ..utils.checks import check_tensor, raise_if_inputs_not_finite
from .guidance import Denoiser, GuidanceInterval, GuidedDenoiser, check_condition, check_guidance

__all__ = ["Sampler", "Step", "Generators", "draw_noise", "step_sampler", "sampler_parameters"]

Generators = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Step:
    """Step ``i`` of the grid: from ``t`` to ``t_next`` (``dt`` subtracted in float32, as the original's grid),
    whether guidance is active (``guide``), whether it is the last step (``last``)."""

    i: int
    t: float
    t_next: float
    dt: float
    guide: bool
    last: bool


class Sampler:
    """Integrates an x-prediction flow model from noise (t = 0) to data (t = 1) on a fixed time grid.

    Parameters (the released configs' names):

    - ``num_steps``: N, the number of intervals of the grid (default 50, the value the released configs set;
      docs/parity.md).
    - ``timeshift``: s of the warp ``t/(t + s(1 − t))``; ``last_step``: width of the final base interval
      (default 1/N); ``timesteps``: a custom grid of N + 1 increasing times in [0, 1] (used unwarped).
    - ``guidance``: CFG scale g in ``v_u + g·(v_c − v_u)``; active only for t inside
      (``guidance_interval_min``, ``guidance_interval_max``] (Euler, Heun, SDE) or (…, …) (Adams), compared in
      the dtype of the noise.
    - ``t_eps``: clamp of the x→v conversion ``v = (x̂ − x)/max(1 − t, t_eps)``; default 0.05 (as trained),
      or 0 when ``exact_final_step`` is set.
    - ``exact_final_step`` (off by default, for parity): the conversion is unclamped (``t_eps`` defaults to 0)
      and the step into t = 1 returns the guided x̂ at the last evaluated point, ``x_N = x̂(x_{N−1}, t_{N−1})``
      (for samplers whose :attr:`final_step_lands` is true).

    Call: ``sampler(denoiser, noise, cond, uncond=None, *, generator=None, return_trajectory=False,
    callback=None)`` with ``denoiser(x, t, cond) -> x̂`` and ``t`` a (B,) tensor. ``cond``/``uncond``: a tensor
    or a mapping of tensors (e.g. ``{"emb": (B, L, D), "mask": (B, L)}``), one row per sample (``uncond`` may
    have one row). Returns x, or ``(x, trajectory)`` with the (N + 1, B, …) stack of the states at the grid
    times. ``callback({"i", "t", "t_next", "x", "x_hat"})`` is called before each update with the state
    x_i at t_i and the guided x̂ there (None where the step did not evaluate at (x_i, t_i)). ``last_stats``:
    ``{"nfe": network calls, "rows": rows pushed through the network}`` of the last call.

    A subclass implements :meth:`step` (and optionally :meth:`setup` for per-call state).
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
            t_eps = 0.0 if exact_final_step else T_EPS
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
    def setup(self) -> dict[str, Any]:
        """Fresh per-call state handed to every :meth:`step` of one call (e.g. a velocity history)."""
        return {}

    def step(self, model: GuidedDenoiser, x: torch.Tensor, step: Step, state: dict[str, Any]) -> torch.Tensor:
        """x_{i+1} from x_i. ``model.velocity(x, t, guide)`` / ``model.prediction(x, t, guide)`` evaluate the
        guided network; ``state["generators"]`` feeds stochastic samplers (see :func:`draw_noise`)."""
        raise NotImplementedError

    @property
    def final_step_lands(self) -> bool:
        """Whether ``exact_final_step`` makes the last step return x̂ at (x_{N−1}, t_{N−1})."""
        return True

    # -- shared ------------------------------------------------------------------------------------------
    def guided_steps(self, dtype: torch.dtype = torch.float32) -> list[bool]:
        """Per step i (at t_i), whether guidance is active: the original's boundary rule for this sampler,
        compared in ``dtype`` (the noise's); a scale of exactly 1 never guides (it would change nothing but
        double the batch)."""
        if self.guidance == 1.0:
            return [False] * self.num_steps
        return [self.interval.contains(t, dtype) for t in self._times[:-1]]

    def __call__(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        cond: Any,
        uncond: Any = None,
        *,
        generator: Generators = None,
        return_trajectory: bool = False,
        callback: Callback | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, t, cond), got {type(denoiser).__name__}.")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable with one dict, got {type(callback).__name__}.")
        noise = check_tensor(noise, "noise", floating=True)
        if noise.ndim < 2:
            raise ValueError(
                f"noise must be a batch (B, ...) with at least 2 dimensions, got shape {tuple(noise.shape)}."
            )
        batch = noise.shape[0]
        cond = check_condition(cond, "cond", batch)
        guided = self.guided_steps(noise.dtype)
        if uncond is not None:
            uncond = check_condition(uncond, "uncond", batch, like=cond)
        elif any(guided):
            raise ValueError(
                f"This sampler guides (guidance {self.guidance} on some steps), so it needs uncond, the "
                "unconditional condition (the null label, or the empty-prompt embedding)."
            )
        state = {"generators": _check_generators(generator, batch), **self.setup()}
        model = GuidedDenoiser(denoiser, cond, uncond, self.guidance, self.t_eps, record=callback is not None)
        trajectory: list[torch.Tensor] | None = [noise] if return_trajectory else None
        times, steps, last = self._times, self._steps, self.num_steps - 1
        x = noise
        try:
            for i in range(self.num_steps):
                s = Step(i, times[i], times[i + 1], steps[i], guided[i], i == last)
                model.begin_step(i, x, s.t)
                if s.last and self.exact_final_step and self.final_step_lands:
                    x_next = model.prediction(x, s.t, s.guide)
                else:
                    x_next = self.step(model, x, s, state)
                if callback is not None:
                    callback({"i": i, "t": s.t, "t_next": s.t_next, "x": x, "x_hat": model.step_x_hat})
                x = x_next
                if trajectory is not None:
                    trajectory.append(x)
            model.raise_if_not_finite()
        except FloatingPointError as exc:  # name a non-finite input rather than blame the denoiser
            raise_if_inputs_not_finite(
                {"noise": noise, **_named_leaves(cond, "cond"), **_named_leaves(uncond, "uncond")}, exc
            )
            raise
        self.last_stats = {"nfe": model.calls, "rows": model.rows}
        if trajectory is not None:
            return x, torch.stack(trajectory)
        return x

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, timeshift={self.timeshift}, guidance={self.guidance}, "
            f"interval=({self.interval.t_min}, {self.interval.t_max}{']' if self.interval.include_max else ')'}, "
            f"t_eps={self.t_eps}, exact_final_step={self.exact_final_step}{', ' + extra if extra else ''})"
        )


def _named_leaves(cond: Any, name: str) -> dict[str, Any]:
    if isinstance(cond, Mapping):
        return {k: v for key, leaf in cond.items() for k, v in _named_leaves(leaf, f"{name}[{key!r}]").items()}
    return {name: cond}


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


# -- samplers from a step function -------------------------------------------------------------------------
def step_sampler(name: str, **metadata: Any) -> Callable[[Callable[..., torch.Tensor]], type[Sampler]]:
    """Register a step function ``fn(model, x, step, state, *, param=default, ...) -> x_next`` as sampler
    ``name``; its keyword parameters become the sampler's parameters (beside the shared ones).

    >>> @step_sampler("ralston")
    ... def ralston(model, x, s, state, *, alpha: float = 2 / 3):
    ...     v = model.velocity(x, s.t, s.guide)
    ...     v2 = model.velocity(x + alpha * s.dt * v, s.t + alpha * s.dt, s.guide)
    ...     return x + s.dt * ((1 - 1 / (2 * alpha)) * v + v2 / (2 * alpha))
    """
    from ..registry import registries

    def decorator(fn: Callable[..., torch.Tensor]) -> type[Sampler]:
        own = {
            p.name: p
            for p in list(inspect.signature(fn).parameters.values())[4:]
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        missing = [n for n, p in own.items() if p.default is p.empty]
        if missing:
            raise TypeError(f"Step function {fn.__name__}: parameters {', '.join(missing)} need defaults.")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.params = {n: kwargs.pop(n, p.default) for n, p in own.items()}
            Sampler.__init__(self, *args, **kwargs)

        def step(self, model, x, s, state):
            return fn(model, x, s, state, **self.params)

        cls = type(
            f"{fn.__name__.title().replace('_', '')}Sampler",
            (Sampler,),
            {
                "name": name,
                "__init__": __init__,
                "step": step,
                "step_function": staticmethod(fn),
                "__doc__": fn.__doc__,
                "__module__": fn.__module__,
                "_extra_repr": lambda self: ", ".join(f"{k}={v!r}" for k, v in self.params.items()),
            },
        )
        registries.sampler.register(name, **metadata)(cls)
        return cls

    return decorator


def _signature_parameters(fn: Callable[..., Any], skip: int) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - annotations that cannot be evaluated stay strings
        signature = inspect.signature(fn)
    return [
        p
        for p in list(signature.parameters.values())[skip:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
    ]


def sampler_parameters(sampler: str | type) -> dict[str, tuple[Any, Any]]:
    """``{parameter: (annotation, default)}`` of a registered sampler (name) or a sampler class, read from the
    signatures of its constructors (subclass first) and, for :func:`step_sampler` samplers, its step function.
    A parameter without a default has ``inspect.Parameter.empty``."""
    if isinstance(sampler, str):
        from ..registry import registries

        sampler = registries.sampler.get(sampler).builder
    out: dict[str, tuple[Any, Any]] = {}
    if not isinstance(sampler, type):
        for p in _signature_parameters(sampler, 0):
            out[p.name] = (p.annotation, p.default)
        return out
    step_function = getattr(sampler, "step_function", None)
    if step_function is not None:
        for p in _signature_parameters(step_function, 4):
            out[p.name] = (p.annotation, p.default)
    for klass in sampler.__mro__:
        init = vars(klass).get("__init__")
        if (
            init is None
            or klass is object
            or getattr(init, "__qualname__", "").endswith("step_sampler.<locals>.__init__")
        ):
            continue
        for p in _signature_parameters(init, 0):
            out.setdefault(p.name, (p.annotation, p.default))
    return out


def check_parameters(name: str, builder: type, params: Mapping[str, Any]) -> None:
    """Refuse a parameter the sampler does not take, with the closest name."""
    import difflib

    accepted = list(sampler_parameters(builder))
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; it accepts {', '.join(accepted)}."
            raise TypeError(f"Sampler '{name}' has no parameter '{key}'{hint}")
