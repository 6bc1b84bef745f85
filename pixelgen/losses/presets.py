"""Objective presets: the paper's ablation ladder (spec §4.12) and ``build_objective``."""

from __future__ import annotations

import copy
import difflib
from typing import Any

from .objective import Objective, objective_options

__all__ = ["PRESETS", "PRESET_ALIASES", "build_objective", "list_presets"]

_ALL = ("flow_matching", "repa", "lpips", "pdino")

PRESETS: dict[str, dict[str, Any]] = {
    # training_repa_JiT: x-prediction flow matching + REPA (λ 0.5).
    "jit_repa": dict(losses=_ALL[:2], percept_t_threshold=None),
    # training_repa_JiT_LPIPS: + LPIPS over all samples, with that trainer's default λ = 1.0.
    "jit_repa_lpips": dict(losses=_ALL[:3], weights={"lpips": 1.0}, percept_t_threshold=None),
    # training_repa_JiT_LPIPS_DINO: + P-DINO, both perceptual terms over all samples (no gating, no adaptive w).
    "jit_repa_lpips_pdino": dict(losses=_ALL, percept_t_threshold=None),
    # PixelGen (…_NoiseGating): gating at t ≥ 0.3 (P-DINO with the upstream behaviour), adaptive w from 400k.
    "pixelgen": dict(
        losses=_ALL, percept_t_threshold=0.3, pdino_gating="original", balancer={"start_step": 400_000, "every": 50}
    ),
}
PRESET_ALIASES = {"+lpips": "jit_repa_lpips", "+lpips+pdino": "jit_repa_lpips_pdino"}


def list_presets() -> list[str]:
    return sorted(PRESETS) + sorted(PRESET_ALIASES)


def build_objective(preset: str = "pixelgen", **overrides: Any) -> Objective:
    """The :class:`Objective` of ``preset`` with ``overrides`` applied.

    ``weights`` is merged into the preset's weights; ``extra_losses=[...]`` appends terms (e.g. a plugin's) to
    the preset's list; any other :class:`Objective` argument replaces the preset's value. The REPA projector
    needs ``hidden_size`` (the backbone width), e.g. ``build_objective("pixelgen", hidden_size=model.hidden_size)``.
    """
    name = PRESET_ALIASES.get(preset, preset)
    if name not in PRESETS:
        close = difflib.get_close_matches(str(preset), list_presets(), n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(repr(c) for c in close)}?"
            if close
            else f"; presets: {', '.join(list_presets())}."
        )
        raise KeyError(f"Unknown objective preset {preset!r}{hint}")
    valid = set(objective_options()) | {"extra_losses"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"Unknown build_objective option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}.")
    config = copy.deepcopy(PRESETS[name])
    extra = list(overrides.pop("extra_losses", ()))
    weights = {**config.pop("weights", {}), **dict(overrides.pop("weights", None) or {})}
    config.update(overrides)
    config["losses"] = [*config["losses"], *(n for n in extra if n not in config["losses"])]
    return Objective(weights=weights, **config)
