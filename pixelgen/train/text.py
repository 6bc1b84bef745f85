"""Text-to-image training: the trainer with a text encoder, chosen by :func:`pixelgen.train.train` when the
config has a ``text`` section (``TrainConfig.text``: encoder, ``pad_mask``, grid prompts).

* :class:`TextBatchEncoder` turns dataset batches (``caption`` lists) into objective batches: ``cond`` = the
  caption embeddings, ``uncond`` = the ``""`` embedding (what the CFG dropout swaps in).
* With the conditioner's ``pad_mask`` on, ``cond`` and ``uncond`` are the structured condition
  ``{"emb", "mask"}`` (the same one the samplers batch): CFG dropout replaces both leaves of a dropped sample and
  the backbone reads the mask as its key-padding mask.
* :class:`T2ITrainer` samples grids from fixed prompts with the prompts written under each image, writes
  ``text_encoder.json`` into the export folder (so ``pixelgen generate`` rebuilds the same encoder) and gives
  a streaming caption dataset a fresh seed on resume (a stream cannot be resumed at a position).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..conditioners.pipeline import TextToImagePipeline, check_text_compatible, save_text_encoder_spec
from ..conditioners.qwen3 import Qwen3TextConditioner, check_prompts
from ..distributed import barrier
from ..utils.images import save_image_grid
from .trainer import Trainer

__all__ = ["TextBatchEncoder", "T2ITrainer"]

log = logging.getLogger(__name__)


class TextBatchEncoder:
    """Trainer ``batch_transform``: ``{"image", "raw", "caption"}`` → adds ``cond`` and ``uncond`` embeddings.

    ``cond`` is the conditioner's condition for the captions: (B, L, D) embeddings, or ``{"emb": (B, L, D),
    "mask": (B, L)}`` when ``pad_mask`` is on; ``uncond`` the empty prompt's, repeated over the batch, alike.
    """

    def __init__(self, conditioner: Qwen3TextConditioner) -> None:
        self.conditioner = conditioner

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "caption" not in batch:
            raise KeyError(
                "A text-to-image batch needs a 'caption' list (use a caption dataset such as demo_captions)."
            )
        captions = check_prompts(batch["caption"], "batch['caption']")
        cond = self.conditioner(captions)
        uncond = self.conditioner.unconditional(len(captions))
        return {**batch, "cond": self.conditioner.condition(cond), "uncond": self.conditioner.condition(uncond)}


class T2ITrainer(Trainer):
    """The trainer with a text conditioner.

    Args (besides :class:`~pixelgen.train.Trainer`'s): ``conditioner`` (frozen, moved to the training device;
    default: built from ``config.text.encoder`` straight onto the training device), ``prompts`` (the
    sample-grid prompts; default ``config.text.prompts``; none disables grids). Sampling for grids uses
    ``config.sample.sampler`` / ``params`` / ``seed`` / ``batch_size``.
    """

    def __init__(
        self,
        config,
        *,
        conditioner: Qwen3TextConditioner | None = None,
        prompts: Sequence[str] | None = None,
        **parts: Any,
    ):
        text = config.text
        if conditioner is None:
            if text is None:
                raise ValueError("A text-to-image run needs config.text (the text encoder) or a conditioner.")
            from ..conditioners import build_conditioner_from_spec
            from ..distributed import training_device

            conditioner = build_conditioner_from_spec(
                text.encoder, pad_mask=text.pad_mask, device=training_device(config.device)
            )
        if prompts is None:
            prompts = list(text.prompts) if text is not None else []
        self.conditioner = conditioner
        self.prompts = check_prompts(list(prompts), "prompts") if prompts else []
        super().__init__(config, batch_transform=TextBatchEncoder(conditioner), **parts)
        check_text_compatible(self.model, conditioner)
        self.conditioner.to(self.device)

    def _load_resume(self, path: Path) -> None:
        super()._load_resume(path)
        dataset = getattr(self.loader, "dataset", None)
        if not hasattr(self.loader, "state_dict") and hasattr(dataset, "seed"):
            # A stream cannot restart at a position: reseed it so the resumed run does not replay what it saw.
            dataset.seed = int(dataset.seed) + 1_000_003 * self.step
            log.info("Caption stream reseeded with %d for the resumed run.", dataset.seed)

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """A PNG grid from the EMA model, one image per prompt with the prompt under it."""
        if not self.prompts:
            return None
        s = self.config.sample
        everyone = self.config.strategy == "fsdp" and self.dist.distributed
        path = None
        if self.dist.is_main or everyone:
            prompts = self.prompts[: s.num_images] if s.num_images else self.prompts
            pipe = TextToImagePipeline(
                self.ema.model, self.conditioner, device=self.device, autocast_dtype=self.amp_dtype
            )
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                result = pipe(prompts, seed=s.seed, batch_size=s.batch_size, sampler=s.sampler, **s.params)
            if self.dist.is_main:
                path = save_image_grid(
                    result.images,
                    self.out_dir / "samples" / f"step_{self.step:07d}.png",
                    captions=result.prompts,
                    padding=4,
                    min_side=128,
                )
                self.logger.event(self.step, "samples", path=str(path))
        barrier()
        return path

    def export(self) -> Path | None:
        target = super().export()
        if target is not None:
            save_text_encoder_spec(target, self.conditioner)
        return target
