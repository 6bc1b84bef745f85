"""The interactive web demo: ``pixelgen app --checkpoint DIR`` (needs the ``[app]`` extra, gradio).

>>> from pixelgen.app import DemoModel, DemoSettings
>>> demo = DemoModel("runs/demo/export")              # class- or text-to-image, read from the folder
>>> result = demo.run(DemoSettings(class_label=3, steps=20, seed=0))
>>> result.images, result.nfe, result.command         # uint8 (N, 3, S, S), evaluations, the CLI line
>>> from pixelgen.app import launch; launch(demo)     # the page on http://127.0.0.1:7860 (imports gradio)
"""

from __future__ import annotations

from typing import Any

from .engine import DemoInputError, DemoModel, DemoResult, DemoSettings, default_settings

__all__ = ["DemoModel", "DemoSettings", "DemoResult", "DemoInputError", "default_settings", "build_app", "launch"]


def __getattr__(name: str) -> Any:  # the page itself imports gradio, only when asked for
    if name in ("build_app", "launch"):
        from . import ui

        return getattr(ui, name)
    raise AttributeError(f"module 'pixelgen.app' has no attribute '{name}'")
