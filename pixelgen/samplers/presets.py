"""The paper's sampling settings, registered once as ``sampling_preset`` entries.

>>> preset = sampling_preset("xl_cfg")      # SamplingPreset(sampler="heun", params={...}, num=50000, ...)
>>> sampler = preset.build(num_steps=25)    # overrides on top of the preset's parameters
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..registry import registries

__all__ = ["SamplingPreset", "sampling_preset", "list_sampling_presets", "register_sampling_preset"]


@dataclass(frozen=True)
class SamplingPreset:
    """A sampler name and its parameters (the released configs' names), plus the size of the set it was evaluated on
    (``num`` images at ``per_class`` per class of ``num_classes``; None for text-to-image)."""

    sampler: str
    params: Mapping[str, Any] = field(default_factory=dict)
    num: int | None = None
    per_class: int | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __getitem__(self, key: str) -> Any:
        """Mapping-style access (``preset["params"]``) for code that reads presets as dicts."""
        if key not in ("sampler", "params", "num", "per_class", "num_classes"):
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = self[key] if key in ("sampler", "params", "num", "per_class", "num_classes") else None
        return default if value is None else value

    def build(self, **overrides: Any):
        """The sampler with the preset's parameters, ``overrides`` on top."""
        from . import build_sampler

        return build_sampler(self.sampler, **{**self.params, **overrides})


def register_sampling_preset(name: str, preset: SamplingPreset | None = None, **metadata: Any):
    """Register ``preset`` under ``name`` (plugins may add their own). Without ``preset``: a decorator for a
    builder returning one, as ``registries.sampling_preset.register``."""
    if preset is None:
        return registries.sampling_preset.register(name, **metadata)
    if not isinstance(preset, SamplingPreset):
        raise TypeError(f"A sampling preset must be a SamplingPreset, got {type(preset).__name__}.")

    def builder() -> SamplingPreset:
        return preset

    builder.__doc__ = f"{preset.sampler} with {dict(preset.params)}"
    registries.sampling_preset.register(name, **metadata)(builder)
    return preset


def sampling_preset(name: str) -> SamplingPreset:
    """The registered preset ``name`` (see :func:`list_sampling_presets`); a plugin's builder may return a dict
    ``{"sampler", "params", ...}``, which is read as a :class:`SamplingPreset`."""
    preset = registries.sampling_preset.build(name)
    if isinstance(preset, Mapping) and not isinstance(preset, SamplingPreset):
        preset = SamplingPreset(**dict(preset))
    return preset


def list_sampling_presets(pattern: str = "*") -> list[str]:
    return registries.sampling_preset.list(pattern)


_IMAGENET = {"num": 50_000, "per_class": 50, "num_classes": 1000}
_XL = {
    "num_steps": 50,
    "exact_henu": True,
    "guidance_interval_min": 0.1,
    "guidance_interval_max": 0.9,
    "timeshift": 2.0,
}

# PixelGen-XL/16, 160 epochs: FID 1.83 (Heun-50, CFG 2.25 on (0.1, 0.9], shift 2).
register_sampling_preset("xl_cfg", SamplingPreset("heun", {**_XL, "guidance": 2.25}, **_IMAGENET))
# PixelGen-XL/16, 80 epochs: FID 5.11 (the same sampler without guidance).
register_sampling_preset("xl_nocfg", SamplingPreset("heun", {**_XL, "guidance": 1.0}, **_IMAGENET))
# PixelGen-L/16 and the JiT-L baseline, 200k steps (Euler-50, no guidance, interval (0.1, 1]).
register_sampling_preset(
    "l_euler50",
    SamplingPreset(
        "euler",
        {
            "num_steps": 50,
            "guidance": 1.0,
            "guidance_interval_min": 0.1,
            "guidance_interval_max": 1.0,
            "timeshift": 1.0,
        },
        **_IMAGENET,
    ),
)
# The released text-to-image model (SFT 512, GenEval, the demo app): Adams-2, 25 steps, CFG 4 on (0, 1), shift 3.
register_sampling_preset(
    "t2i_default", SamplingPreset("adams", {"order": 2, "num_steps": 25, "guidance": 4.0, "timeshift": 3.0})
)
# Validation grids of the text-to-image pre-training stages: Euler-100, CFG 4 on (0, 1], shift 1.
register_sampling_preset(
    "t2i_validation", SamplingPreset("euler", {"num_steps": 100, "guidance": 4.0, "timeshift": 1.0})
)
