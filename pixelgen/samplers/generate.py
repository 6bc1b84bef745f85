"""``generate``: labels or text embeddings in, uint8 images out, reproducible per sample."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones.common import values_checked_by_caller
from ..utils.checks import check_class_labels_input, check_device, check_labels, check_tensor
from .base import Sampler
from .graphs import GraphedDenoiser

__all__ = ["generate", "initial_noise", "sample_generator", "to_uint8"]


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator that depends on (seed, sample index) only, so a sample's noise never depends on the
    batch it lands in or on how many processes share the work."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def initial_noise(
    seed: int, indices: Sequence[int], shape: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The starting noise of samples ``indices`` (stacked, on the CPU) and their generators, which stochastic
    samplers continue: sample i's noise depends on (seed, i) alone."""
    generators = [sample_generator(seed, i) for i in indices]
    return torch.stack([torch.randn(*shape, generator=g) for g in generators]), generators


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The original's conversion: ``clip((x + 1)·127.5 + 0.5, 0, 255)`` truncated to uint8 (round to nearest)."""
    return ((x.float() + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).to(torch.uint8)


def _check_nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def _conditions(
    model: torch.nn.Module, labels_or_embeddings: Any, uncond: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(conditions (N, ...), unconditional condition (1 or N, ...) or None), checked against the model."""
    kind = getattr(model, "cond_kind", None)
    cond = labels_or_embeddings
    if not isinstance(cond, torch.Tensor):
        cond = torch.as_tensor(cond)
    if kind is None:
        kind = "class" if not cond.is_floating_point() else "text"
    if kind == "class":
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            raise TypeError("A class-conditional model must have an integer attribute num_classes (the null label).")
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
    cond = check_tensor(cond, "embeddings", ndim=3, floating=True)
    if uncond is None:
        return cond, None
    uncond = check_tensor(uncond, "uncond", floating=True)
    if uncond.ndim == 2:
        uncond = uncond.unsqueeze(0)
    if uncond.ndim != 3 or uncond.shape[1:] != cond.shape[1:] or uncond.shape[0] not in (1, cond.shape[0]):
        raise ValueError(
            f"uncond must be one embedding (L, D) = {tuple(cond.shape[1:])} or one per sample "
            f"({cond.shape[0]}, L, D), got shape {tuple(uncond.shape)}."
        )
    return cond, uncond


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    labels_or_embeddings: torch.Tensor | Sequence[int],
    sampler: str | Sampler | Callable[..., torch.Tensor] = "euler",
    seed: int = 0,
    batch_size: int = 32,
    uncond: Any = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    start_index: int = 0,
    cuda_graphs: bool = False,
) -> torch.Tensor:
    """Sample one image per label (class models) or per text embedding (text models).

    - ``sampler``: a registered name (built with its defaults) or a sampler from :func:`build_sampler`.
    - The initial noise of sample i is drawn on the CPU from a generator seeded by ``(seed, start_index + i)``
      alone, then moved to ``device``; a stochastic sampler continues that sample's generator. Images are
      therefore identical whatever ``batch_size`` and however the work is split (``start_index``).
    - ``uncond``: class models default to the null label ``model.num_classes``; text models need it (one
      embedding (L, D), or one per sample) whenever the sampler guides.
    - ``device``: defaults to the model's; ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the network
      under autocast while the sampler keeps float32.
    - ``cuda_graphs``: on CUDA, record each network call shape once as a CUDA graph and replay it
      (:class:`~pixelgen.samplers.graphs.GraphedDenoiser`); same images, fewer kernel launches. Ignored elsewhere.
    Returns a uint8 (N, C, S, S) CPU tensor, converted as the original: ``clip((x + 1)·127.5 + 0.5, 0, 255)``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a pixelgen backbone), got {type(model).__name__}.")
    size, channels = getattr(model, "input_size", None), getattr(model, "in_channels", None)
    if not isinstance(size, int) or not isinstance(channels, int):
        raise TypeError("model must have integer attributes input_size and in_channels (the backbone contract).")
    seed = _check_nonnegative_int(seed, "seed")
    start_index = _check_nonnegative_int(start_index, "start_index")
    if _check_nonnegative_int(batch_size, "batch_size") == 0:
        raise ValueError("batch_size must be at least 1.")
    if device is not None:
        device = check_device(device)
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs must be True or False, got {cuda_graphs!r}.")
    if isinstance(sampler, str):
        from . import build_sampler

        sampler = build_sampler(sampler)
    elif not callable(sampler):
        raise TypeError(f"sampler must be a registered name or a sampler, got {type(sampler).__name__}.")
    cond, uncond_cond = _conditions(
        model, labels_or_embeddings, uncond
    )  # the sampler refuses a guided run without uncond
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    denoiser = GraphedDenoiser(model) if cuda_graphs else model
    was_training = model.training
    model.eval()
    images = []
    try:
        with tqdm(total=cond.shape[0], unit="img", desc="sampling", disable=not progress) as bar:
            for first in range(0, cond.shape[0], batch_size):
                rows = range(first, min(first + batch_size, cond.shape[0]))
                noise, generators = initial_noise(seed, [start_index + i for i in rows], (channels, size, size))
                noise = noise.to(device)
                batch_cond = cond[first : first + len(rows)].to(device)
                batch_uncond = None
                if uncond_cond is not None:  # one row (the sampler broadcasts it) or one per sample
                    batch_uncond = (
                        uncond_cond if uncond_cond.shape[0] == 1 else uncond_cond[first : first + len(rows)]
                    ).to(device)
                with autocast, values_checked_by_caller():  # grid times, labels checked above: no sync per call
                    x = sampler(denoiser, noise, batch_cond, batch_uncond, generator=generators)
                images.append(to_uint8(x).cpu())
                bar.update(len(rows))
    finally:
        model.train(was_training)
    if not images:
        return torch.empty(0, channels, size, size, dtype=torch.uint8)
    return torch.cat(images)
