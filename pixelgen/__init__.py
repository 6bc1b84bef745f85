"""pixelgen: pixel-space diffusion trained with perceptual losses (PixelGen), as a plugin-friendly library.

Public API (imported lazily, so ``import pixelgen`` stays cheap)::

    from pixelgen import build_model, build_sampler, generate, losses, load_pretrained
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (  # noqa: F401  (re-exported)
    ENTRY_POINT_GROUP,
    Registry,
    discover_plugins,
    get_registry,
    hookimpl,
    plugin_errors,
    registries,
)

__version__ = "0.1.0"

# name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    # backbones
    "build_model": ("pixelgen.backbones", "build_model"),
    "list_models": ("pixelgen.backbones", "list_models"),
    "register_model": ("pixelgen.backbones", "register_model"),
    "load_pretrained": ("pixelgen.checkpoint", "load_pretrained"),
    "save_pretrained": ("pixelgen.checkpoint", "save_pretrained"),
    "convert_checkpoint": ("pixelgen.checkpoint", "convert_checkpoint"),
    # samplers
    "build_sampler": ("pixelgen.samplers", "build_sampler"),
    "list_samplers": ("pixelgen.samplers", "list_samplers"),
    "generate": ("pixelgen.samplers", "generate"),
    # losses / encoders
    "build_objective": ("pixelgen.losses", "build_objective"),
    "build_encoder": ("pixelgen.encoders", "build_encoder"),
    # sub-packages
    "losses": ("pixelgen.losses", None),
    "samplers": ("pixelgen.samplers", None),
    "backbones": ("pixelgen.backbones", None),
    "encoders": ("pixelgen.encoders", None),
    "nn": ("pixelgen.nn", None),
    "data": ("pixelgen.data", None),
    "train": ("pixelgen.train", None),
    "eval": ("pixelgen.eval", None),
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "Registry",
    "discover_plugins",
    "get_registry",
    "hookimpl",
    "plugin_errors",
    "registries",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pixelgen' has no attribute '{name}'") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
