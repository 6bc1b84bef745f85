"""Backbone weights on disk: ``model.safetensors`` + ``config.json``, and conversion of the released checkpoints.

* :func:`save_pretrained` writes a folder (atomically, file by file) that :func:`load_pretrained` builds back.
* :func:`convert_checkpoint` reads a released PixelGen Lightning ``.ckpt`` (``state_dict`` with keys
  ``denoiser.*``, ``ema_denoiser.*`` and ``diffusion_trainer.proj.*``), takes the EMA weights by default,
  infers the architecture from the tensor shapes, and writes the same folder layout, plus
  ``repa_projector.safetensors`` when the REPA projector is present (keys as in the ``.ckpt`` with the
  ``diffusion_trainer.proj.`` prefix removed, e.g. ``0.0.weight``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelgen.utils.checks import check_device
from pixelgen.utils.io import CheckpointError, atomic_save_json, load_safetensors, safe_torch_load, save_safetensors

__all__ = [
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "PROJECTOR_NAME",
    "save_pretrained",
    "load_pretrained",
    "convert_checkpoint",
    "infer_backbone_config",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PROJECTOR_NAME = "repa_projector.safetensors"

_EMA_PREFIX, _RAW_PREFIX, _PROJECTOR_PREFIX = "ema_denoiser.", "denoiser.", "diffusion_trainer.proj."


def _pixelgen_version() -> str:
    from pixelgen import __version__

    return __version__


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``{"arch", "config", "pixelgen_version"}``) to ``directory``.

    ``model`` must follow the backbone contract (``arch`` and ``config`` attributes). ``extra`` adds keys to
    config.json (e.g. where converted weights came from). Returns the folder.
    """
    arch, config = getattr(model, "arch", None), getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(arch, str) or not isinstance(config, dict):
        raise TypeError("save_pretrained needs a pixelgen backbone (an nn.Module with `arch` and `config` attributes).")
    directory = Path(directory)
    meta = {"arch": arch, "config": config, "pixelgen_version": _pixelgen_version(), **(extra or {})}
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata={"arch": arch})
    atomic_save_json(meta, directory / CONFIG_NAME)
    return directory


def _resolve_folder(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        weights, config = path / WEIGHTS_NAME, path / CONFIG_NAME
    elif path.suffix == ".safetensors" or path.name == CONFIG_NAME:
        weights = path if path.suffix == ".safetensors" else path.with_name(WEIGHTS_NAME)
        config = path.with_name(CONFIG_NAME)
    else:
        raise CheckpointError(f"{path} is neither a folder written by save_pretrained nor a .safetensors file.")
    if not weights.is_file():
        raise CheckpointError(
            f"No weights file {weights} (expected {WEIGHTS_NAME} written by save_pretrained or `pixelgen convert`)."
        )
    if not config.is_file():
        raise CheckpointError(f"No {CONFIG_NAME} next to {weights}; it tells which architecture the weights belong to.")
    return weights, config


def _build_on_meta(arch: str, config: dict[str, Any]) -> nn.Module:
    from pixelgen.backbones import build_model

    return build_model(arch, device="meta", **config)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strictly load ``state`` into a meta-built ``model`` by assignment (no second copy of the weights)."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights in {source} do not fit the model described by its config: {exc}") from exc
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise CheckpointError(f"The weights in {source} leave {', '.join(left[:5])} uninitialised.")
    return model


def load_pretrained(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a backbone from a folder (or its ``model.safetensors``) written by :func:`save_pretrained` or
    ``pixelgen convert``. Returns it in eval mode on ``device``, floating tensors cast to ``dtype`` if given.

    ``overrides`` change the stored config, e.g. ``input_size=512`` (the sin-cos table is regenerated for the new
    grid) or ``attention_backend="sdpa"``.
    """
    device = check_device(device)
    weights, config_path = _resolve_folder(path)
    try:
        meta = json.loads(config_path.read_text())
        arch, config = meta["arch"], dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path} is not a pixelgen config (needs 'arch' and 'config'): {exc}") from exc
    state = load_safetensors(weights, device=device)
    warn_if_not_finite(state, str(weights))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = _build_on_meta(arch, {**config, **overrides})
    return _load_into(model, state, str(weights)).eval()


def warn_if_not_finite(state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Log a warning naming the tensors of ``state`` that hold NaN or inf (a diverged run's weights); returns them."""
    names = [k for k, v in state.items() if v.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([~torch.isfinite(state[k]).all() for k in names]).tolist()
    bad = [k for k, flag in zip(names, flags) if flag]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log.warning("The weights in %s hold NaN or infinite values in %s; the model will output NaN.", source, shown)
    return bad


# -- conversion of original checkpoints ------------------------------------------------------------------
def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"The checkpoint's {prefix}* indices are not contiguous from 0: {sorted(indices)}.")
    return len(indices)


def _square_grid(tokens: int, what: str) -> int:
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"{what} has {tokens} tokens, which is not a square patch grid.")
    return grid


def _mlp_ratio(hidden: int, ffn: int, preferred: float | None) -> float:
    """An ``mlp_ratio`` with ``int(int(hidden·r)·2/3) == ffn`` (the 2/3 rule), preferring the given/usual one."""
    from pixelgen.nn import swiglu_hidden_size

    for candidate in (preferred, 4.0):
        if candidate is not None and swiglu_hidden_size(hidden, candidate) == ffn:
            return float(candidate)
    for width in range(math.ceil(ffn * 1.5), math.ceil((ffn + 1) * 1.5) + 1):
        ratio = width / hidden
        if swiglu_hidden_size(hidden, ratio) == ffn:
            return ratio
    raise CheckpointError(f"No mlp_ratio gives a feed-forward width of {ffn} for hidden size {hidden}.")


def _shape(state: dict[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state:
        raise CheckpointError(f"The checkpoint has no '{key}'; it does not look like a PixelGen JiT backbone.")
    return state[key].shape


def _infer_c2i(state: dict[str, torch.Tensor], given: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    hidden = _shape(state, "t_embedder.mlp.2.weight")[0]
    proj1 = _shape(state, "x_embedder.proj1.weight")
    patch = proj1[-1]
    use_bottleneck = "x_embedder.proj2.weight" in state
    head_dim = _shape(state, "blocks.0.attn.q_norm.weight")[0]
    inferred = dict(
        hidden_size=hidden,
        depth=_count_blocks(state, "blocks."),
        num_heads=hidden // head_dim,
        patch_size=patch,
        in_channels=proj1[1],
        num_classes=_shape(state, "y_embedder.embedding_table.weight")[0] - 1,
        use_bottleneck=use_bottleneck,
        in_context_len=state["in_context_posemb"].shape[1] if "in_context_posemb" in state else 0,
        input_size=_square_grid(_shape(state, "pos_embed")[1], "pos_embed") * patch,
        mlp_ratio=_mlp_ratio(hidden, _shape(state, "blocks.0.mlp.w3.weight")[1], given.get("mlp_ratio")),
    )
    if use_bottleneck:
        inferred["bottleneck_dim"] = proj1[0]
    return inferred, {"in_context_start", "attn_drop", "proj_drop"}


def _infer_t2i(state: dict[str, torch.Tensor], given: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    hidden = _shape(state, "t_embedder.mlp.2.weight")[0]
    proj1 = _shape(state, "x_embedder.proj1.weight")
    in_channels = int(given.get("in_channels", 3))
    patch = math.isqrt(proj1[1] // in_channels)
    if patch * patch * in_channels != proj1[1]:
        raise CheckpointError(
            f"x_embedder.proj1 takes {proj1[1]} features per patch, which is not in_channels ({in_channels}) x p²; "
            "pass in_channels=... ."
        )
    inferred = dict(
        hidden_size=hidden,
        num_blocks=_count_blocks(state, "blocks."),
        num_text_blocks=_count_blocks(state, "text_refine_blocks."),
        num_groups=hidden // _shape(state, "blocks.0.attn.q_norm.weight")[0],
        patch_size=patch,
        in_channels=in_channels,
        bottleneck_dim=proj1[0],
        txt_embed_dim=_shape(state, "y_embedder.proj.weight")[1],
        txt_max_length=_shape(state, "y_pos_embedding")[1],
        input_size=_square_grid(_shape(state, "pos_embed")[1], "pos_embed") * patch,
    )
    return inferred, set()


def _presets_of(arch: str) -> dict[str, dict[str, Any]]:
    from pixelgen.registry import registries

    return {
        e.name: e.metadata["config"]
        for e in registries.backbone.entries()
        if e.metadata.get("preset_of") == arch and isinstance(e.metadata.get("config"), dict)
    }


def infer_backbone_config(
    state: dict[str, torch.Tensor], *, preset: str | None = None, **overrides: Any
) -> tuple[str, dict[str, Any]]:
    """``(arch, config)`` for a backbone state dict with the released checkpoints' parameter names.

    Shapes give the architecture; what they cannot tell (C2I ``in_context_start``, ``attn_drop``, ``proj_drop``)
    comes from ``overrides``, else ``preset``, else the one registered preset whose shapes match (PixelGen
    presets preferred). A preset or override that contradicts the shapes is an error; ``input_size`` may be
    overridden (the sin-cos table is regenerated).
    """
    if "y_embedder.embedding_table.weight" in state:
        arch, infer = "jit", _infer_c2i
    elif "y_embedder.proj.weight" in state:
        arch, infer = "jit_t2i", _infer_t2i
    else:
        raise CheckpointError("The weights are neither a class-to-image nor a text-to-image JiT (no y_embedder).")
    presets = _presets_of(arch)
    if preset is not None and preset not in presets:
        raise CheckpointError(f"Unknown {arch} preset '{preset}'; known: {', '.join(sorted(presets))}.")
    base = presets[preset] if preset is not None else {}
    inferred, unknowable = infer(state, {**base, **overrides})
    shape_keys = [k for k in inferred if k != "input_size"]

    if preset is None:
        matching = [name for name, cfg in presets.items() if all(cfg.get(k) == inferred[k] for k in shape_keys)]
        matching.sort(key=lambda n: (not n.startswith("pixelgen_"), n))
        if matching:
            preset, base = matching[0], presets[matching[0]]
            log.info(
                "The weights match preset '%s'; taking %s from it.", preset, ", ".join(sorted(unknowable)) or "nothing"
            )
    for source, values in ((f"preset '{preset}' says", base), ("the overrides say", overrides)):
        for key in shape_keys:
            if key in values and values[key] != inferred[key]:
                raise CheckpointError(f"The weights have {key}={inferred[key]!r} but {source} {values[key]!r}.")
    config = {**{k: v for k, v in base.items() if k not in inferred}, **inferred, **overrides}
    if arch == "jit" and config.get("in_context_len", 0) > 0 and "in_context_start" not in config:
        raise CheckpointError(
            "The weights use in-context label tokens but the block they join at (in_context_start) cannot be read "
            "from tensor shapes and no preset matches; pass in_context_start=... (or --set in_context_start=8)."
        )
    return arch, config


def convert_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    weights: str = "ema",
    preset: str | None = None,
    trust_pickle: bool = False,
    **overrides: Any,
) -> Path:
    """Convert an original PixelGen Lightning ``.ckpt`` into ``out_dir/{model.safetensors, config.json}``.

    ``weights``: ``"ema"`` (default, ``ema_denoiser.*``) or ``"raw"`` (``denoiser.*``). The file is read with
    ``torch.load(weights_only=True)``; a checkpoint that also pickles Python objects needs
    ``trust_pickle=True``. ``preset``/``overrides`` supply what shapes cannot tell (see
    :func:`infer_backbone_config`). The REPA projector, when present, goes to ``repa_projector.safetensors``.
    Returns ``out_dir``.
    """
    prefixes = {"ema": _EMA_PREFIX, "raw": _RAW_PREFIX}
    if weights not in prefixes:
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}.")
    ckpt_path = Path(ckpt_path)
    checkpoint = safe_torch_load(
        ckpt_path,
        trust_pickle=trust_pickle,
        consent="if you trust its source, pass trust_pickle=True (--trust-pickle of pixelgen convert)",
    )
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{ckpt_path} holds no state dict of tensors (expected a Lightning checkpoint with 'state_dict')."
        )

    prefix = prefixes[weights]
    model_state = {k[len(prefix) :].removeprefix("_orig_mod."): v for k, v in state.items() if k.startswith(prefix)}
    if not model_state:
        found = sorted({k.split(".", 1)[0] + "." for k in state})
        hint = (
            " (use weights='raw' / --weights raw for the non-EMA weights)"
            if weights == "ema" and _RAW_PREFIX in found
            else ""
        )
        raise CheckpointError(
            f"{ckpt_path} has no '{prefix}*' weights{hint}; its key prefixes are: {', '.join(found)}."
        )

    warn_if_not_finite(model_state, f"{ckpt_path} ({prefix}*)")
    arch, config = infer_backbone_config(model_state, preset=preset, **overrides)
    model = _load_into(_build_on_meta(arch, config), model_state, f"{ckpt_path} ({prefix}*)")
    out_dir = save_pretrained(model, out_dir, extra={"converted_from": ckpt_path.name, "weights": weights})
    projector = {k[len(_PROJECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(_PROJECTOR_PREFIX)}
    if projector:
        save_safetensors(projector, out_dir / PROJECTOR_NAME)
    log.info("Converted %s (%s weights, %s) to %s.", ckpt_path, weights, arch, out_dir)
    return out_dir
