"""Samplers for x-prediction flow models: Euler, Heun, Adams–Bashforth and Euler–Maruyama, with CFG intervals.

>>> sampler = build_sampler("heun", num_steps=50, timeshift=2.0, guidance=2.25,
...                         guidance_interval_min=0.1, guidance_interval_max=0.9)
>>> x = sampler(denoiser, noise, labels, null_labels)        # denoiser(x, t, cond) -> x̂
>>> sampler.last_stats                                        # {"nfe": 99, "rows": ...}
>>> images = generate(model, labels, sampler=sampler, seed=0)  # uint8 (N, 3, S, S)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from ..registry import registries
from .base import Sampler
from .generate import generate, sample_generator, to_uint8
from .graphs import GraphedDenoiser
from .grids import shift_unwarp, shift_warp, time_grid, uniform_grid, x_hat_to_velocity
from .guidance import GuidanceInterval
from .ode import AdamsSampler, EulerSampler, HeunSampler, adams_coefficients
from .sde import EulerMaruyamaSampler

__all__ = [
    "build_sampler",
    "list_samplers",
    "generate",
    "Sampler",
    "EulerSampler",
    "HeunSampler",
    "AdamsSampler",
    "EulerMaruyamaSampler",
    "GuidanceInterval",
    "GraphedDenoiser",
    "adams_coefficients",
    "time_grid",
    "uniform_grid",
    "shift_warp",
    "shift_unwarp",
    "x_hat_to_velocity",
    "sample_generator",
    "to_uint8",
]

for _cls in (EulerSampler, HeunSampler, AdamsSampler, EulerMaruyamaSampler):
    registries.sampler.register(_cls.name, stochastic=_cls is EulerMaruyamaSampler)(_cls)


def _accepted_parameters(cls: type) -> list[str]:
    """Keyword parameters of a sampler class and its bases (subclasses forward the rest with **kwargs)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names:
                names.append(p.name)
    return names


def build_sampler(name: str, /, **params: Any) -> Any:
    """Build the sampler registered as ``name`` (see :func:`list_samplers`) with the original's parameter names."""
    entry = registries.sampler.get(name)
    if isinstance(entry.builder, type) and issubclass(entry.builder, Sampler):
        accepted = _accepted_parameters(entry.builder)
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; it accepts {', '.join(accepted)}."
                raise TypeError(f"Sampler '{name}' has no parameter '{key}'{hint}")
    return entry.builder(**params)


def list_samplers(pattern: str = "*") -> list[str]:
    """Registered sampler names matching a glob pattern."""
    return registries.sampler.list(pattern)
