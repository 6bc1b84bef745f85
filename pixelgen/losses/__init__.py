"""The PixelGen training objective and its parts.

* :mod:`~pixelgen.losses.path`: CFG condition dropout (the path, time sampling and x->v are in :mod:`pixelgen.flow`);
* :mod:`~pixelgen.losses.terms`: loss terms registered in ``registries.loss`` (``flow_matching``, ``repa``,
  ``lpips``, ``pdino``; plugins add more through the ``pixelgen`` entry point);
* :class:`Objective` / :func:`build_objective`: weighted terms, noise gating, adaptive perceptual weight
  (:class:`Balancer`), presets ``jit_repa``, ``jit_repa_lpips`` (``+lpips``), ``jit_repa_lpips_pdino``
  (``+lpips+pdino``), ``pixelgen`` (default).
"""

from __future__ import annotations

from ..flow import interpolate, sample_t, time_shift, x_to_v
from .balancer import Balancer
from .context import LossContext
from .objective import DEFAULT_ENCODERS, GATING_COMPUTE, Objective
from .path import drop_condition
from .presets import PRESET_ALIASES, PRESETS, build_objective, list_presets
from .terms import PDINO_GATING, FlowMatchingTerm, LossTerm, LpipsTerm, PDinoTerm, RepaTerm, register_term

__all__ = [
    "build_objective",
    "list_presets",
    "Objective",
    "Balancer",
    "LossContext",
    "LossTerm",
    "register_term",
    "FlowMatchingTerm",
    "RepaTerm",
    "LpipsTerm",
    "PDinoTerm",
    "PDINO_GATING",
    "PRESETS",
    "PRESET_ALIASES",
    "GATING_COMPUTE",
    "DEFAULT_ENCODERS",
    "sample_t",
    "time_shift",
    "interpolate",
    "x_to_v",
    "drop_condition",
]
