"""Text-to-image prompt sets: GenEval and DPG-Bench image folders from prompt files the user supplies.

Both benchmarks score images with external tools (GenEval's detector-based scorer, DPG-Bench's VQA model);
this module writes the images those tools read.

**GenEval** (``evaluation_metadata.jsonl``: one JSON object with a ``"prompt"`` per line): 4 images per prompt
(seeds 0-3), written in GenEval's own per-prompt layout::

    <out>/<prompt index, 5 digits>/metadata.jsonl        # that prompt's JSON line, unchanged
    <out>/<prompt index, 5 digits>/samples/<seed, 5 digits>.png

The per-prompt layout is what GenEval's own generation script and documentation use; its scorer averages over
images, so a folder per image would score the same.

**DPG-Bench** (a folder of ``<stem>.txt`` files whose first line is the prompt): 4 images per prompt (seeds 0-3)
tiled 2x2 (seed order, row-major) into ``<out>/<stem>.png``, which is what the DPG-Bench scorer splits again
(PNG: lossless).

Images are made by the one generation loop (:func:`pixelgen.generate.generate_batches`). Noise follows the
original datasets (the ``seed_only`` noise rule): the image with seed ``s`` starts from ``torch.randn(C, H, W)``
drawn from a CPU generator seeded with ``s`` (so every prompt shares the same 4 noise images); a stochastic
sampler continues that generator. An image's noise and conditions do not depend on the batch it lands in;
its bytes do not either wherever the network's kernels give a row the same numbers whatever the batch (CPU
matrix products may round a row differently at another batch size, which can move a pixel by one level; keep
``batch_size`` fixed when a resumed run must match bit for bit). Prompts whose files already exist are skipped,
so an interrupted run resumes; files are written atomically.

The text encoder is any callable mapping a list of prompts to (B, L, D) embeddings (tests use a stand-in), or a
:class:`pixelgen.conditioners.Qwen3TextConditioner` (its padding mask rides along as the condition ``{"emb", "mask"}`` when ``pad_mask`` is on).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelgen.generate import generate_batches, initial_noise
from pixelgen.samplers.presets import sampling_preset
from pixelgen.utils.images import make_image_grid, save_image
from pixelgen.utils.io import atomic_write

__all__ = [
    "PromptItem",
    "read_geneval_metadata",
    "read_dpg_prompts",
    "generate_geneval",
    "generate_dpg",
    "original_noise",
    "SAMPLING_PRESET",
]

log = logging.getLogger(__name__)

SAMPLING_PRESET = "t2i_default"
"""The registered sampling preset the released text-to-image model was evaluated with (Adams-2, 25 steps, CFG 4,
shift 3)."""
DEFAULT_SEEDS = (0, 1, 2, 3)


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a set: ``key`` names its output (GenEval: 5-digit index; DPG: file stem)."""

    key: str
    prompt: str
    metadata: str | None = None  # GenEval: the prompt's JSON line as read


def read_geneval_metadata(path: str | os.PathLike) -> list[PromptItem]:
    """The prompts of a GenEval ``.jsonl`` metadata file, in file order (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file {path} does not exist.")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {lineno} is not valid JSON ({exc.msg}).") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(
                f'{path} line {lineno} has no non-empty "prompt" string (GenEval metadata lines are JSON objects with a prompt).'
            )
        items.append(PromptItem(f"{len(items):05d}", entry["prompt"], line.strip()))
    if not items:
        raise ValueError(f"GenEval metadata file {path} holds no prompts.")
    return items


def read_dpg_prompts(folder: str | os.PathLike) -> list[PromptItem]:
    """The prompts of a DPG-Bench prompt folder: ``<stem>.txt`` files, first line = prompt, sorted by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DPG-Bench prompt folder {folder} does not exist.")
    items = []
    for path in sorted(folder.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        prompt = lines[0].strip() if lines else ""
        if not prompt:
            raise ValueError(f"DPG-Bench prompt file {path} is empty (its first line must be the prompt).")
        items.append(PromptItem(path.stem, prompt))
    if not items:
        raise ValueError(f"The DPG-Bench prompt folder {folder} holds no .txt prompt files.")
    return items


def original_noise(seed: int, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Generator]:
    """The original datasets' noise for one image: ``randn(shape)`` from a CPU generator seeded with ``seed``
    (the ``seed_only`` rule); returns the generator too (a stochastic sampler continues it)."""
    noise, (gen,) = initial_noise(0, [seed], shape, rule="seed_only")
    return noise[0], gen


class _TextConditions:
    """Conditional and unconditional inputs of the backbone from a text encoder (callable or Qwen3 conditioner)."""

    def __init__(self, encoder: Callable[[list[str]], Any], negative_prompt: str | None):
        self.encoder = encoder
        self.negative_prompt = negative_prompt
        self.masked = bool(getattr(encoder, "pad_mask", False))

    def _condition(self, out: Any, batch: int) -> Any:
        if hasattr(out, "embeddings"):  # a TextEncoding: carry the mask along when the conditioner wants it
            out = out.condition(self.masked)
        emb = out["emb"] if isinstance(out, Mapping) else out
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3 or emb.shape[0] != batch or not emb.is_floating_point():
            got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"The text encoder must return (B, L, D) float embeddings for {batch} prompts, got {got}.")
        return out

    def cond(self, prompts: list[str]) -> Any:
        return self._condition(self.encoder(prompts), len(prompts))

    def uncond(self) -> Any:
        """One row: the same for every sample, so it is encoded once per run and broadcast by the sampler."""
        unconditional = getattr(self.encoder, "unconditional", None)
        if callable(unconditional):
            return self._condition(unconditional(1, self.negative_prompt), 1)
        return self._condition(self.encoder([self.negative_prompt or ""]), 1)


def _check_text_model(model: torch.nn.Module) -> None:
    if getattr(model, "cond_kind", None) != "text":
        raise ValueError(
            f"Prompt sets need a text-to-image model; this one is conditioned on {getattr(model, 'cond_kind', 'unknown')!r}."
        )


def _open_set(
    model: torch.nn.Module,
    source: str | os.PathLike | Sequence[PromptItem],
    read: Callable[[str | os.PathLike], list[PromptItem]],
    out_dir: str | os.PathLike,
    seeds: Sequence[int],
) -> tuple[list[PromptItem], Path, tuple[int, ...]]:
    """The checked (items, output folder, seeds) of a prompt set given as items or as the file(s) ``read`` reads."""
    _check_text_model(model)
    items = list(source) if not isinstance(source, (str, os.PathLike)) else read(source)
    return items, Path(out_dir), _check_seeds(seeds)


def _render(
    model: torch.nn.Module,
    encoder: Callable[[list[str]], Any],
    jobs: list[tuple[PromptItem, int]],
    *,
    sampler: str | None,
    sampler_params: Mapping[str, Any] | None,
    batch_size: int,
    height: int | None,
    width: int | None,
    device: str | torch.device | None,
    autocast_dtype: torch.dtype | None,
    negative_prompt: str | None,
    progress: bool,
) -> Iterator[tuple[PromptItem, int, np.ndarray]]:
    """(item, seed, uint8 (H, W, 3) image) for each (prompt, seed) job, in order, sampled in batches."""
    from pixelgen.samplers import build_sampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    name, params = _sampling(sampler, sampler_params)
    run = build_sampler(name, **params)
    if not jobs:
        return
    texts = _TextConditions(encoder, negative_prompt)
    h, w = height or int(model.input_size), width or int(model.input_size)
    with torch.inference_mode():
        uncond = texts.uncond()
    batches = generate_batches(
        model,
        len(jobs),
        lambda rows: texts.cond([jobs[i][0].prompt for i in rows]),
        uncond,
        sampler=run,
        noise="seed_only",
        noise_keys=[seed for _, seed in jobs],
        batch_size=batch_size,
        size=(h, w),
        device=device,
        autocast_dtype=autocast_dtype,
        progress=progress,
        desc="prompt set",
    )
    for batch in batches:
        for j, image in zip(batch.rows, batch.images.permute(0, 2, 3, 1).numpy()):
            yield jobs[j][0], jobs[j][1], image


def _sampling(sampler: str | None, sampler_params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    if sampler is None:
        preset = sampling_preset(SAMPLING_PRESET)
        return preset.sampler, {**preset.params, **dict(sampler_params or {})}
    return sampler, dict(sampler_params or {})


def generate_geneval(
    model: torch.nn.Module,
    encoder: Callable[[list[str]], Any],
    metadata: str | os.PathLike | Sequence[PromptItem],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    sampler: str | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
) -> Path:
    """Write GenEval's folder layout for a metadata ``.jsonl`` (see the module doc); returns ``out_dir``.

    ``sampler``/``sampler_params``: default Adams-2, 25 steps, CFG 4, shift 3 (the released model's setting).
    """
    items, out, seeds = _open_set(model, metadata, read_geneval_metadata, out_dir, seeds)

    def image_path(item: PromptItem, seed: int) -> Path:
        return out / item.key / "samples" / f"{seed:05d}.png"

    todo = [(item, s) for item in items for s in seeds if not image_path(item, s).is_file()]
    log.info("GenEval: %d prompts x %d seeds, %d images to generate", len(items), len(seeds), len(todo))
    for item, seed, image in _render(
        model,
        encoder,
        todo,
        sampler=sampler,
        sampler_params=sampler_params,
        batch_size=batch_size,
        height=height,
        width=width,
        device=device,
        autocast_dtype=autocast_dtype,
        negative_prompt=negative_prompt,
        progress=progress,
    ):
        save_image(image, image_path(item, seed))
    for item in items:
        meta = out / item.key / "metadata.jsonl"
        if not meta.is_file():
            with atomic_write(meta) as tmp:
                tmp.write_text((item.metadata or json.dumps({"prompt": item.prompt})) + "\n", encoding="utf-8")
    return out


def generate_dpg(
    model: torch.nn.Module,
    encoder: Callable[[list[str]], Any],
    prompts: str | os.PathLike | Sequence[PromptItem],
    out_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    sampler: str | None = None,
    sampler_params: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
) -> Path:
    """Write one 2x2 tile ``<stem>.png`` per DPG-Bench prompt file (see the module doc); returns ``out_dir``.

    The number of seeds must be a square (4 by default) so the images tile into a square grid.
    """
    items, out, seeds = _open_set(model, prompts, read_dpg_prompts, out_dir, seeds)
    side = math.isqrt(len(seeds))
    if side * side != len(seeds):
        raise ValueError(
            f"DPG-Bench tiles the images of a prompt into a square grid; {len(seeds)} seeds are not a square number (use 4)."
        )
    todo = [(item, s) for item in items if not (out / f"{item.key}.png").is_file() for s in seeds]
    log.info("DPG-Bench: %d prompts, %d images to generate", len(items), len(todo))
    pending: dict[str, list[np.ndarray]] = {}
    for item, _seed, image in _render(
        model,
        encoder,
        todo,
        sampler=sampler,
        sampler_params=sampler_params,
        batch_size=batch_size,
        height=height,
        width=width,
        device=device,
        autocast_dtype=autocast_dtype,
        negative_prompt=negative_prompt,
        progress=progress,
    ):
        pending.setdefault(item.key, []).append(image)
        if len(pending[item.key]) == len(seeds):  # jobs come in seed order, prompt by prompt
            save_image(make_image_grid(np.stack(pending.pop(item.key)), nrow=side, padding=0), out / f"{item.key}.png")
    return out


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if (
        not seeds
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds!r}.")
    return tuple(int(s) for s in seeds)
