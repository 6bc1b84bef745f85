"""Text conditioners: Qwen3 through ``transformers``, registered in ``registries.conditioner``.

``build_conditioner("qwen3")`` loads ``Qwen/Qwen3-1.7B`` (offline-first); ``build_conditioner("qwen3",
model="<folder or HF id>")`` any other; ``build_conditioner("qwen3_tiny_random")`` a tiny random encoder with an
offline tokenizer for tests and demos. ``build_conditioner_from_spec`` accepts what a checkpoint records
(``describe()``) or what a user types (a registered name, a folder, a HF id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pixelgen.registry import registries

from .qwen3 import (
    DEFAULT_TEXT_ENCODER,
    Qwen3TextConditioner,
    TextEncoding,
    check_prompts,
    load_qwen3_conditioner,
    resolve_text_encoder_folder,
)
from .tiny import build_tiny_qwen3, build_tiny_tokenizer

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "Qwen3TextConditioner",
    "TextEncoding",
    "build_conditioner",
    "build_conditioner_from_spec",
    "build_tiny_qwen3",
    "build_tiny_tokenizer",
    "check_prompts",
    "load_qwen3_conditioner",
    "resolve_text_encoder_folder",
]


@registries.conditioner.register("qwen3")
def qwen3(**kwargs: Any) -> Qwen3TextConditioner:
    """Frozen Qwen3 text encoder (default Qwen/Qwen3-1.7B; model=<folder or HF id>)."""
    return load_qwen3_conditioner(**kwargs)


@registries.conditioner.register("qwen3_tiny_random", random=True)
def qwen3_tiny_random(**kwargs: Any) -> Qwen3TextConditioner:
    """Tiny random-weight Qwen3 with an offline BPE tokenizer (tests and CPU demos)."""
    return build_tiny_qwen3(**kwargs)


def build_conditioner(name: str = "qwen3", **kwargs: Any) -> Qwen3TextConditioner:
    """Build a registered conditioner by name with keyword overrides."""
    return registries.conditioner.build(name, **kwargs)


def build_conditioner_from_spec(spec: str | os.PathLike | dict, **overrides: Any) -> Qwen3TextConditioner:
    """Build from a recorded ``describe()`` dict, a registered name, a local folder or a Hugging Face id."""
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", "qwen3")
        return build_conditioner(name, **{**kwargs, **overrides})
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"A text-encoder spec must be a name, a folder or a dict, got {type(spec).__name__}.")
    text = os.fspath(spec)
    if not text:
        raise ValueError("The text-encoder spec is empty: give a registered name, a folder or a Hugging Face id.")
    if text in registries.conditioner and not Path(text).is_dir():
        return build_conditioner(text, **overrides)
    return build_conditioner("qwen3", model=text, **overrides)
