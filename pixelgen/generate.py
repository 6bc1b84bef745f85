"""The generation loop: conditions in, uint8 images out, reproducible per sample.

Every path that makes images runs :func:`generate_batches`: :func:`generate` (class labels or text embeddings),
the text-to-image pipeline, class-balanced sample sets, the GenEval/DPG prompt sets and the trainer's sample
grids. Per batch it draws each item's starting noise from that item's own generator (a named noise rule, see
:data:`pixelgen.seeding.NOISE_RULES`), runs the sampler under optional autocast with the network's per-call
value checks off (grid times and conditions are checked once, here: no host sync per network call), and
converts to uint8 as the original.

This module is callable: ``pixelgen.generate(model, labels, ...)`` is :func:`generate`.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones.common import values_checked_by_caller
from .samplers.base import Sampler
from .samplers.graphs import GraphedDenoiser
from .samplers.guidance import check_condition, map_condition, slice_condition
from .seeding import NOISE_RULES, noise_generators
from .utils.checks import check_class_labels_input, check_device, check_labels, check_tensor

__all__ = ["generate", "generate_batches", "GeneratedBatch", "initial_noise", "to_uint8", "NOISE_RULES"]

Condition = Any  # a tensor or a mapping of tensors (see pixelgen.samplers.guidance)
ConditionSource = Condition | Callable[[range], Condition]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The original's conversion: ``clip((x + 1)·127.5 + 0.5, 0, 255)`` truncated to uint8 (round to nearest)."""
    return ((x.float() + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).to(torch.uint8)


def initial_noise(
    seed: int, keys: Sequence[int], shape: Sequence[int], rule: str = "per_index"
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The starting noise of items ``keys`` (stacked, on the CPU) and their generators, which stochastic samplers
    continue. ``per_index``: item k's noise depends on (seed, k) alone; ``seed_only``: on k alone (k is a seed)."""
    generators = noise_generators(rule, seed, keys)
    return torch.stack([torch.randn(*shape, generator=g) for g in generators]), generators


@dataclass
class GeneratedBatch:
    """Items ``rows`` (positions in the run) as uint8 ``images`` (b, C, H, W) on the CPU, and their uint8
    ``trajectories`` (b, steps + 1, C, H, W) when asked for (noise first)."""

    rows: range
    images: torch.Tensor
    trajectories: torch.Tensor | None = None


def _check_nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def _resolve_sampler(sampler: Any) -> Callable[..., Any]:
    if isinstance(sampler, str):
        from .samplers import build_sampler

        return build_sampler(sampler)
    if not callable(sampler):
        raise TypeError(f"sampler must be a registered name or a sampler, got {type(sampler).__name__}.")
    return sampler


def _rows_of(source: ConditionSource | None, rows: range, device: torch.device) -> Condition:
    """The conditions of items ``rows``: from a callable, or rows of a condition (one row serves every item)."""
    if source is None:
        return None
    if callable(source) and not isinstance(source, (torch.Tensor, Mapping)):
        cond = source(rows)
    else:
        cond = source if _leading(source) == 1 else slice_condition(source, slice(rows.start, rows.stop))
    return map_condition(lambda c: c.to(device), cond)


def _leading(cond: Condition) -> int:
    if isinstance(cond, Mapping):
        return _leading(next(iter(cond.values())))
    return cond.shape[0] if isinstance(cond, torch.Tensor) and cond.ndim else -1


def generate_batches(
    model: torch.nn.Module,
    num: int,
    cond: ConditionSource,
    uncond: ConditionSource | None = None,
    *,
    sampler: str | Sampler | Callable[..., Any] = "euler",
    seed: int = 0,
    noise: str = "per_index",
    noise_keys: Sequence[int] | None = None,
    batch_size: int = 32,
    size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    cuda_graphs: bool = False,
    return_trajectory: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> Iterator[GeneratedBatch]:
    """Sample ``num`` items in batches of ``batch_size`` and yield each batch as it is done.

    - ``cond``: the conditions of all items (a tensor or mapping of tensors with ``num`` rows), or a callable
      giving those of a ``range`` of items (text encoded batch by batch); ``uncond`` likewise, or one row for
      every item, or None (the sampler refuses a guided run without it).
    - ``noise``: the noise rule (``"per_index"`` or ``"seed_only"``) applied to item j's key ``noise_keys[j]``
      (default ``0 .. num − 1``); so item j's image does not depend on the batch it lands in.
    - ``size``: the image side (or (height, width)); default ``model.input_size``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a pixelgen backbone), got {type(model).__name__}.")
    channels = getattr(model, "in_channels", None)
    size = getattr(model, "input_size", None) if size is None else size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(v, int) for v in (channels, height, width)):
        raise TypeError("model must have integer attributes input_size and in_channels (the backbone contract).")
    num = _check_nonnegative_int(num, "num")
    seed = _check_nonnegative_int(seed, "seed")
    if _check_nonnegative_int(batch_size, "batch_size") == 0:
        raise ValueError("batch_size must be at least 1.")
    if noise not in NOISE_RULES:
        raise ValueError(f"Unknown noise rule {noise!r}; choose one of {', '.join(NOISE_RULES)}.")
    keys = list(range(num)) if noise_keys is None else [_check_nonnegative_int(k, "noise key") for k in noise_keys]
    if len(keys) != num:
        raise ValueError(f"noise_keys must give one key per item ({num}), got {len(keys)}.")
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be True or False, got {cuda_graphs!r}.")
    run = _resolve_sampler(sampler)
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    denoiser = GraphedDenoiser(model) if cuda_graphs else model
    options: dict[str, Any] = {}
    if return_trajectory:
        options["return_trajectory"] = True
    if callback is not None:
        options["callback"] = callback
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=num, unit="img", desc=desc, disable=not progress) as bar:
            for first in range(0, num, batch_size):
                rows = range(first, min(first + batch_size, num))
                x0, generators = initial_noise(seed, keys[first : rows.stop], (channels, height, width), noise)
                batch_cond = _rows_of(cond, rows, device)
                batch_uncond = _rows_of(uncond, rows, device)
                with torch.inference_mode(), autocast, values_checked_by_caller():
                    out = run(denoiser, x0.to(device), batch_cond, batch_uncond, generator=generators, **options)
                x, path = out if return_trajectory else (out, None)
                trajectories = to_uint8(path.transpose(0, 1)).cpu() if path is not None else None
                yield GeneratedBatch(rows, to_uint8(x).cpu(), trajectories)
                bar.update(len(rows))
    finally:
        model.train(was_training)


def _conditions(model: torch.nn.Module, labels_or_embeddings: Any, uncond: Any) -> tuple[Condition, Condition | None]:
    """(conditions with N rows, unconditional condition (1 or N rows) or None), checked against the model."""
    kind = getattr(model, "cond_kind", None)
    cond = labels_or_embeddings
    if isinstance(cond, Mapping):
        kind = kind or "text"
    elif not isinstance(cond, torch.Tensor):
        cond = torch.as_tensor(cond)
    if kind is None:
        kind = "class" if not cond.is_floating_point() else "text"
    if kind == "class":
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise TypeError("A class-conditional model must have an integer attribute num_classes (the null label).")
        if isinstance(cond, Mapping):
            raise TypeError("A class-conditional model takes labels (N,), not a mapping.")
        check_class_labels_input(cond, cond.shape[0] if cond.ndim else 1, "labels")
        cond = check_labels(cond.long(), num_classes, "labels")
        null = num_classes if uncond is None else uncond
        if isinstance(null, torch.Tensor) and null.numel() == 1:
            null = int(null)
        if isinstance(null, bool) or not isinstance(null, (int, np.integer)) or not 0 <= null <= num_classes:
            raise ValueError(f"uncond for a class model must be one label in [0, {num_classes}], got {null!r}.")
        return cond, torch.full((1,), int(null), dtype=torch.long)
    if kind != "text":
        raise ValueError(f"model.cond_kind must be 'class' or 'text', got {kind!r}.")
    emb = cond["emb"] if isinstance(cond, Mapping) else cond
    check_tensor(emb, "embeddings", ndim=3, floating=True)
    cond = check_condition(cond, "embeddings", emb.shape[0])
    if uncond is None:
        return cond, None
    if isinstance(uncond, torch.Tensor):
        uncond = check_tensor(uncond, "uncond", floating=True)
        if uncond.ndim == 2:
            uncond = uncond.unsqueeze(0)
        if uncond.ndim != 3 or uncond.shape[1:] != emb.shape[1:] or uncond.shape[0] not in (1, emb.shape[0]):
            raise ValueError(
                f"uncond must be one embedding (L, D) = {tuple(emb.shape[1:])} or one per sample "
                f"({emb.shape[0]}, L, D), got shape {tuple(uncond.shape)}."
            )
    if _leading(uncond) not in (1, emb.shape[0]):
        raise ValueError(f"uncond must have one row or one per sample ({emb.shape[0]}), got {_leading(uncond)}.")
    return cond, uncond


def generate(
    model: torch.nn.Module,
    labels_or_embeddings: torch.Tensor | Sequence[int] | Mapping[str, torch.Tensor],
    sampler: str | Sampler | Callable[..., torch.Tensor] = "euler",
    seed: int = 0,
    batch_size: int = 32,
    uncond: Any = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    start_index: int = 0,
    cuda_graphs: bool = False,
    *,
    noise: str = "per_index",
    return_trajectory: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample one image per label (class models) or per text embedding (text models).

    - ``sampler``: a registered name (built with its defaults) or a sampler from :func:`build_sampler`.
    - ``noise="per_index"`` (default): the initial noise of sample i is drawn on the CPU from a generator seeded
      by ``(seed, start_index + i)`` alone, then moved to ``device``; a stochastic sampler continues that
      sample's generator. Images are therefore identical whatever ``batch_size`` and however the work is split
      (``start_index``). ``"seed_only"``: sample i's noise from ``manual_seed(start_index + i)`` (the original's).
    - ``uncond``: class models default to the null label ``model.num_classes``; text models need it (one
      embedding (L, D), or one per sample) whenever the sampler guides. Text conditions may be a mapping
      ``{"emb": (N, L, D), "mask": (N, L)}``.
    - ``device``: defaults to the model's; ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the network
      under autocast while the sampler keeps float32.
    - ``cuda_graphs``: on CUDA, record each network call shape once as a CUDA graph and replay it
      (:class:`~pixelgen.samplers.graphs.GraphedDenoiser`); same images, fewer kernel launches. Ignored elsewhere.
    Returns a uint8 (N, C, S, S) CPU tensor, converted as the original: ``clip((x + 1)·127.5 + 0.5, 0, 255)``;
    with ``return_trajectory`` also the uint8 (N, steps + 1, C, S, S) trajectories.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a pixelgen backbone), got {type(model).__name__}.")
    size, channels = getattr(model, "input_size", None), getattr(model, "in_channels", None)
    if not isinstance(size, int) or not isinstance(channels, int):
        raise TypeError("model must have integer attributes input_size and in_channels (the backbone contract).")
    start_index = _check_nonnegative_int(start_index, "start_index")
    _check_nonnegative_int(seed, "seed")
    if _check_nonnegative_int(batch_size, "batch_size") == 0:
        raise ValueError("batch_size must be at least 1.")
    if device is not None:
        device = check_device(device)
    run = _resolve_sampler(sampler)
    cond, uncond_cond = _conditions(model, labels_or_embeddings, uncond)
    num = _leading(cond)
    batches = list(
        generate_batches(
            model,
            num,
            cond,
            uncond_cond,
            sampler=run,
            seed=seed,
            noise=noise,
            noise_keys=range(start_index, start_index + num),
            batch_size=batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
            cuda_graphs=cuda_graphs,
            return_trajectory=return_trajectory,
            callback=callback,
            progress=progress,
        )
    )
    images = (
        torch.cat([b.images for b in batches]) if batches else torch.empty(0, channels, size, size, dtype=torch.uint8)
    )
    if not return_trajectory:
        return images
    steps = getattr(run, "num_steps", 0) + 1
    empty = torch.empty(0, steps, channels, size, size, dtype=torch.uint8)
    return images, (torch.cat([b.trajectories for b in batches]) if batches else empty)


class _CallableModule(types.ModuleType):
    """``pixelgen.generate`` is both this module and its :func:`generate` function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
