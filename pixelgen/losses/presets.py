"""Objective presets: the paper's ablation ladder and ``build_objective``."""

from __future__ import annotations

import copy
from typing import Any

from .objective import Objective, objective_options

__all__ = ["PRESETS", "PRESET_ALIASES", "build_objective", "list_presets"]

_ALL = ("flow_matching", "repa", "lpips", "pdino")

PRESETS: dict[str, dict[str, Any]] = {
    # training_repa_JiT: x-prediction flow matching + REPA (λ 0.5).
    "jit_repa": dict(losses=_ALL[:2], percept_t_threshold=None),
    # training_repa_JiT_LPIPS: + LPIPS over all samples, with that trainer's default λ = 1.0.
    "jit_repa_lpips": dict(losses=_ALL[:3], weights={"lpips": 1.0}, percept_t_threshold=None),
    # training_repa_JiT_LPIPS_DINO: + P-DINO, both perceptual terms over all samples (no gating, no adaptive w),
    # with that trainer's default λ_LPIPS = λ_P-DINO = 1.0 (no config of the ablation runs was released).
    "jit_repa_lpips_pdino": dict(losses=_ALL, weights={"lpips": 1.0, "pdino": 1.0}, percept_t_threshold=None),
    # PixelGen (…_NoiseGating): gating at t ≥ 0.3 (P-DINO's gate as released), adaptive w from 400k.
    "pixelgen": dict(
        losses=_ALL, percept_t_threshold=0.3, pdino_gating="original", balancer={"start_step": 400_000, "every": 50}
    ),
}
PRESET_ALIASES = {"+lpips": "jit_repa_lpips", "+lpips+pdino": "jit_repa_lpips_pdino"}
_DOCS = {
    "jit_repa": "JiT + REPA: x-prediction flow matching and REPA (λ 0.5).",
    "jit_repa_lpips": "+ LPIPS over all samples (λ 1.0).",
    "jit_repa_lpips_pdino": "+ LPIPS + P-DINO over all samples (λ 1.0 each; no gating, no adaptive weight).",
    "pixelgen": "PixelGen: all four terms, perceptual terms gated at t >= 0.3, adaptive weight from step 400k.",
}


def _register_presets() -> None:
    """Each preset (and alias) in ``registries.objective_preset``: a builder returning its settings, so a
    plugin's preset is built by :func:`build_objective` like the paper's."""
    from ..registry import registries

    for name, settings in [*PRESETS.items(), *((a, PRESETS[t]) for a, t in PRESET_ALIASES.items())]:

        def builder(settings: dict[str, Any] = settings) -> dict[str, Any]:
            return copy.deepcopy(settings)

        builder.__doc__ = _DOCS.get(PRESET_ALIASES.get(name, name), "")
        registries.objective_preset.register(name)(builder)


_register_presets()


def list_presets() -> list[str]:
    """Registered objective presets (the paper's, their aliases and any a plugin adds)."""
    from ..registry import registries

    return registries.objective_preset.list()


def build_objective(preset: str = "pixelgen", **overrides: Any) -> Objective:
    """The :class:`Objective` of ``preset`` with ``overrides`` applied.

    ``weights`` is merged into the preset's weights; ``extra_losses=[...]`` appends terms (e.g. a plugin's) to
    the preset's list; any other :class:`Objective` argument replaces the preset's value. ``model=`` reads the
    backbone's width, patch size and balance parameter (``build_objective("pixelgen", model=model)``); without
    it the REPA projector needs ``hidden_size``.
    """
    from ..registry import registries

    base = registries.objective_preset.build(preset)  # unknown names: one sentence with close matches
    valid = set(objective_options()) | {"extra_losses"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"Unknown build_objective option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}.")
    config = dict(base)
    extra = list(overrides.pop("extra_losses", ()))
    weights = {**config.pop("weights", {}), **dict(overrides.pop("weights", None) or {})}
    config.update(overrides)
    config["losses"] = [*config["losses"], *(n for n in extra if n not in config["losses"])]
    return Objective(weights=weights, **config)
