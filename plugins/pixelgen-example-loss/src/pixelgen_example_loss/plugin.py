"""The module the ``pixelgen`` entry point names: pixelgen calls its ``pixelgen_register`` hook once."""

from __future__ import annotations

import pixelgen


@pixelgen.hookimpl
def pixelgen_register(registries) -> None:
    from .focal_frequency import FocalFrequencyTerm

    registries.loss.register("focal_frequency")(FocalFrequencyTerm)
