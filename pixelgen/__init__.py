"""pixelgen: pixel-space diffusion trained with perceptual losses (PixelGen), as a plugin-friendly library.

The front door: for every kind of part, ``build_X`` / ``list_X`` / ``register_X`` (imported lazily, so
``import pixelgen`` stays cheap)::

    kind              build                          list                       register
    backbone          build_model (build_backbone)   list_models (list_backbones) register_model (register_backbone)
    sampler           build_sampler                  list_samplers              register_sampler
    loss term         build_loss                     list_losses                register_loss
    objective preset  build_objective                list_objective_presets     register_objective_preset
    sampling preset   build_sampling_preset          list_sampling_presets      register_sampling_preset
    training preset   build_train_preset             list_train_presets         register_train_preset
    frozen encoder    build_encoder                  list_encoders              register_encoder
    text conditioner  build_conditioner              list_conditioners          register_conditioner
    dataset           build_dataset                  list_datasets              register_dataset

``build_X(name, **options)`` checks the option names (with "did you mean") and their types; ``list_X(pattern)``
returns sorted names matching a glob; ``register_X("name")`` is a decorator (plugins do the same through the
``pixelgen`` entry-point group). Weights load with ``from_pretrained(folder)`` (also ``load_pretrained``), the
text-to-image pipeline with ``TextToImagePipeline.from_pretrained(folder)``; ``generate`` samples;
``pixelgen.train.train(TrainConfig(...))`` trains.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (  # noqa: F401  (re-exported)
    ENTRY_POINT_GROUP,
    Registry,
    discover_plugins,
    hookimpl,
    plugin_errors,
    registries,
)

__version__ = "0.1.0"

# name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    # backbones
    "build_model": ("pixelgen.backbones", "build_model"),
    "build_backbone": ("pixelgen.backbones", "build_model"),
    "list_models": ("pixelgen.backbones", "list_models"),
    "from_pretrained": ("pixelgen.checkpoint", "load_pretrained"),
    "load_pretrained": ("pixelgen.checkpoint", "load_pretrained"),
    "save_pretrained": ("pixelgen.checkpoint", "save_pretrained"),
    "convert_checkpoint": ("pixelgen.checkpoint", "convert_checkpoint"),
    # samplers
    "build_sampler": ("pixelgen.samplers", "build_sampler"),
    "list_samplers": ("pixelgen.samplers", "list_samplers"),
    "generate": ("pixelgen.generate", "generate"),
    # losses / encoders / conditioners / data / training
    "build_objective": ("pixelgen.losses", "build_objective"),
    "build_encoder": ("pixelgen.encoders", "build_encoder"),
    "build_conditioner": ("pixelgen.conditioners", "build_conditioner"),
    "TextToImagePipeline": ("pixelgen.conditioners.pipeline", "TextToImagePipeline"),
    "build_dataset": ("pixelgen.data", "build_dataset"),
    "list_datasets": ("pixelgen.data", "list_datasets"),
    "build_train_preset": ("pixelgen.train.presets", "build_train_preset"),
    "TrainConfig": ("pixelgen.train.config", "TrainConfig"),
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

# Registration and listing need no torch: bound methods of the (lazily populated) registries.
register_model = register_backbone = registries.backbone.register
list_backbones = registries.backbone.list
register_sampler = registries.sampler.register
register_loss = registries.loss.register
build_loss = registries.loss.build
list_losses = registries.loss.list
register_objective_preset = registries.objective_preset.register
list_objective_presets = registries.objective_preset.list
register_sampling_preset = registries.sampling_preset.register
build_sampling_preset = registries.sampling_preset.build
list_sampling_presets = registries.sampling_preset.list
register_train_preset = registries.train_preset.register
list_train_presets = registries.train_preset.list
register_encoder = registries.encoder.register
list_encoders = registries.encoder.list
register_conditioner = registries.conditioner.register
list_conditioners = registries.conditioner.list
register_dataset = registries.dataset.register

_EAGER = [
    "register_model", "register_backbone", "list_backbones", "register_sampler", "register_loss", "build_loss",
    "list_losses", "register_objective_preset", "list_objective_presets", "register_sampling_preset",
    "build_sampling_preset", "list_sampling_presets", "register_train_preset", "list_train_presets",
    "register_encoder", "list_encoders", "register_conditioner", "list_conditioners", "register_dataset",
]  # fmt: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "Registry",
    "discover_plugins",
    "hookimpl",
    "plugin_errors",
    "registries",
    "__version__",
    *_EAGER,
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
