"""Samplers for x-prediction flow models: Euler, Heun, Adams–Bashforth and Euler–Maruyama, with CFG intervals.

>>> sampler = build_sampler("heun", num_steps=50, timeshift=2.0, guidance=2.25,
...                         guidance_interval_min=0.1, guidance_interval_max=0.9)
>>> x = sampler(denoiser, noise, labels, null_labels)        # denoiser(x, t, cond) -> x̂
>>> sampler.last_stats                                        # {"nfe": 99, "rows": ...}
>>> sampler = sampling_preset("xl_cfg").build()               # the paper's settings, registered once
>>> sampler_parameters("adams")                               # {"order": (int, 2), ...}
"""

from __future__ import annotations

from typing import Any

from ..registry import registries
from .base import Sampler, Step, check_parameters, draw_noise, sampler_parameters, step_sampler
from .graphs import GraphedDenoiser
from .guidance import GuidanceInterval, GuidedDenoiser
from .ode import AdamsSampler, EulerSampler, HeunSampler, adams_coefficients
from .presets import SamplingPreset, list_sampling_presets, register_sampling_preset, sampling_preset
from .sde import EulerMaruyamaSampler

__all__ = [
    "build_sampler",
    "list_samplers",
    "sampler_parameters",
    "step_sampler",
    "generate",
    "Sampler",
    "Step",
    "EulerSampler",
    "HeunSampler",
    "AdamsSampler",
    "EulerMaruyamaSampler",
    "GuidanceInterval",
    "GuidedDenoiser",
    "GraphedDenoiser",
    "adams_coefficients",
    "draw_noise",
    "SamplingPreset",
    "sampling_preset",
    "list_sampling_presets",
    "register_sampling_preset",
    "to_uint8",
]

for _cls in (EulerSampler, HeunSampler, AdamsSampler, EulerMaruyamaSampler):
    registries.sampler.register(_cls.name)(_cls)


def build_sampler(name: str, /, **params: Any) -> Any:
    """Build the sampler registered as ``name`` (see :func:`list_samplers`) with the released configs' parameter
    names."""
    entry = registries.sampler.get(name)
    if isinstance(entry.builder, type) and issubclass(entry.builder, Sampler):
        check_parameters(name, entry.builder, params)
    return entry.builder(**params)


def list_samplers(pattern: str = "*") -> list[str]:
    """Registered sampler names matching a glob pattern."""
    return registries.sampler.list(pattern)


def __getattr__(name: str) -> Any:
    # The generation loop lives in pixelgen.generate (it imports the samplers, so it is loaded on first use).
    if name in ("generate", "to_uint8"):
        import importlib

        return getattr(importlib.import_module("pixelgen.generate"), name)
    raise AttributeError(f"module 'pixelgen.samplers' has no attribute {name!r}")
