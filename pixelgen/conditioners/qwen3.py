"""Frozen Qwen3 text conditioner for the text-to-image model.

What the released text-to-image model was trained with:

* prompts are tokenised raw (no chat template), right-padded (and truncated) to ``max_length`` = 128 tokens;
* the attention mask goes to Qwen, the feature is Qwen's **last hidden state** (after its final RMSNorm);
* the embedding is zero-padded / truncated on the channel axis to ``embed_dim`` (a no-op for the released model);
* the unconditional embedding is the encoding of ``""`` (or of a negative prompt), repeated over the batch;
* padding tokens are handed to the backbone **unmasked** (``pad_mask=False``, the default).

Fixes (docs/parity.md):

* ``pad_mask=True`` hands the backbone a key-padding mask (``text_mask=``), so padding cannot influence it;
* the unconditional cache is keyed by the prompt text, so a negative prompt never leaks into a later request
  made without one;
* a prompt longer than the token limit is truncated as before, but a warning says so once per conditioner.

Weights follow the offline-first rule of :mod:`pixelgen.utils.hub`: an explicit folder, then the Hugging Face
cache snapshot, then a download when online, else :class:`~pixelgen.utils.hub.WeightsNotFoundError`.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelgen.utils.hub import WeightsNotFoundError, WeightSource, resolve_weights

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "TextEncoding",
    "Qwen3TextConditioner",
    "resolve_text_encoder_folder",
    "load_qwen3_conditioner",
    "check_prompts",
]

DEFAULT_TEXT_ENCODER = "Qwen/Qwen3-1.7B"
_UNCOND_CACHE_SIZE = 16


@dataclass(frozen=True)
class TextEncoding:
    """Text embeddings and which of their tokens are real.

    ``embeddings``: (B, L, D) float; ``mask``: (B, L) bool, True for a real token, False for padding.
    """

    embeddings: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per prompt, (B,) long."""
        return self.mask.sum(dim=1)

    def condition(self, masked: bool) -> torch.Tensor | dict[str, torch.Tensor]:
        """The backbone's condition: the embeddings, or ``{"emb": embeddings, "mask": mask}`` when ``masked``
        (the samplers batch both leaves; the text-to-image backbone reads the mask as its key-padding mask)."""
        return {"emb": self.embeddings, "mask": self.mask} if masked else self.embeddings

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def repeat(self, batch_size: int) -> TextEncoding:
        """Repeat a single encoding (batch 1) ``batch_size`` times."""
        if self.embeddings.shape[0] != 1:
            raise ValueError(f"Only a single encoding can be repeated, this one holds {self.embeddings.shape[0]}.")
        return TextEncoding(self.embeddings.repeat(batch_size, 1, 1), self.mask.repeat(batch_size, 1))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoding:
        return TextEncoding(self.embeddings.to(device=device, dtype=dtype), self.mask.to(device=device))


def check_prompts(prompts: object, name: str = "prompts") -> list[str]:
    """A non-empty list of strings (a single string is accepted as a list of one)."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, (bytes, bytearray)):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(prompts).__name__}.")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{name} is empty: give at least one prompt.")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must contain only strings, got {bad[0]}.")
    return prompts


class Qwen3TextConditioner(nn.Module):
    """Frozen text encoder: ``conditioner(prompts) -> TextEncoding`` with (B, max_length, embed_dim) embeddings.

    Args:
        model: a ``transformers`` Qwen3 (or compatible) base model returning the last hidden state first.
        tokenizer: its fast tokenizer; a pad token is required (Qwen's is ``<|endoftext|>``).
        max_length: tokens per prompt after right padding / truncation (128, as trained).
        embed_dim: channel width handed to the backbone; ``None`` = the encoder's hidden size. Narrower
            encoders are zero-padded and wider ones truncated.
        pad_mask: ``False`` (default, parity) feeds padding tokens to the backbone unmasked; ``True`` makes
            :meth:`condition` carry the mask to the backbone so it ignores them.
        output_dtype: dtype of the returned embeddings. float32 by default: a bf16 encoder's outputs are bf16
            values, so float32 holds them exactly and needs no
            autocast downstream.
        source: how the encoder was named (recorded with checkpoints so ``pixelgen generate`` can rebuild it).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 128,
        embed_dim: int | None = None,
        pad_mask: bool = False,
        output_dtype: torch.dtype = torch.float32,
        source: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}.")
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError(
                "The tokenizer has no pad token; set one (Qwen uses '<|endoftext|>') before building the conditioner."
            )
        hidden = int(model.config.hidden_size)
        if embed_dim is not None and (not isinstance(embed_dim, int) or embed_dim < 1):
            raise ValueError(f"embed_dim must be a positive integer or None, got {embed_dim!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_length = max_length
        self.hidden_size = hidden
        self.embed_dim = embed_dim or hidden
        self.pad_mask = bool(pad_mask)
        self.output_dtype = output_dtype
        self.source = dict(source or {})
        self._warned_truncation = False
        self._uncond_cache: OrderedDict[tuple, TextEncoding] = OrderedDict()
        self.requires_grad_(False)
        self.eval()

    # -- frozen: never leaves eval mode, never tracks gradients ------------------------------------
    def train(self, mode: bool = True) -> Qwen3TextConditioner:
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        # Moving or casting the encoder makes cached unconditional embeddings stale.
        self._uncond_cache = OrderedDict()
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict:
        """What rebuilds this conditioner (``build_conditioner(**describe())``), stored next to checkpoints."""
        return {**self.source, "max_length": self.max_length, "embed_dim": self.embed_dim, "pad_mask": self.pad_mask}

    # -- encoding ----------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw tokenisation, right padding and truncation to ``max_length``; warns once on truncation."""
        prompts = check_prompts(prompts)
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        full = tokens["attention_mask"][:, -1].bool()  # only a row without padding may have been cut
        if not self._warned_truncation and full.any():
            longest = max(len(ids) for ids in self.tokenizer([p for p, f in zip(prompts, full) if f])["input_ids"])
            if longest > self.max_length:
                self._warned_truncation = True
                warnings.warn(
                    f"A prompt of {longest} tokens was truncated to the text encoder's limit of {self.max_length} "
                    "tokens (this warning is shown once).",
                    UserWarning,
                    stacklevel=3,
                )
        return tokens

    @torch.no_grad()
    def forward(self, prompts: Sequence[str] | str) -> TextEncoding:
        """Encode prompts into (B, max_length, embed_dim) embeddings and their (B, max_length) token mask."""
        tokens = self.tokenize(prompts)
        device = self.device
        ids = tokens["input_ids"].to(device)
        attention = tokens["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=attention)[0]
        hidden = self._fit_width(hidden).to(self.output_dtype)
        return TextEncoding(hidden, attention.bool())

    def _fit_width(self, hidden: torch.Tensor) -> torch.Tensor:
        width = hidden.shape[-1]
        if width > self.embed_dim:
            return hidden[..., : self.embed_dim]
        if width < self.embed_dim:
            return nn.functional.pad(hidden, (0, self.embed_dim - width))
        return hidden

    def unconditional(self, batch_size: int, negative_prompt: str | None = None) -> TextEncoding:
        """The encoding of ``""`` (or of ``negative_prompt``) repeated ``batch_size`` times.

        Each distinct prompt is encoded once and cached under its own text (a small LRU), so a negative
        prompt never replaces the empty prompt's entry and never leaks into a later call without one.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        text = "" if negative_prompt is None else negative_prompt
        if not isinstance(text, str):
            raise TypeError(f"negative_prompt must be a string or None, got {type(text).__name__}.")
        key = (text, self.max_length, self.embed_dim, self.output_dtype)
        hit = self._uncond_cache.get(key)
        if hit is None:
            hit = self.forward([text])
            self._uncond_cache[key] = hit
            while len(self._uncond_cache) > _UNCOND_CACHE_SIZE:
                self._uncond_cache.popitem(last=False)
        else:
            self._uncond_cache.move_to_end(key)
        return hit.repeat(batch_size)

    def condition(self, encoding: TextEncoding) -> torch.Tensor | dict[str, torch.Tensor]:
        """The backbone's condition for ``encoding``: with ``pad_mask`` the mapping ``{"emb", "mask"}``, else the
        embeddings alone (padding tokens attended to, as trained)."""
        return encoding.condition(self.pad_mask)


# -- loading -----------------------------------------------------------------------------------------
def _hf_repo_id(name: str) -> str:
    """``Qwen3-0.6B`` → ``Qwen/Qwen3-0.6B``; a full ``owner/name`` id is kept."""
    return name if "/" in name else f"Qwen/{name}"


def resolve_text_encoder_folder(name_or_path: str | os.PathLike = DEFAULT_TEXT_ENCODER) -> Path:
    """A local folder holding the encoder's config, weights and tokenizer.

    An existing folder is used as is; otherwise the name is a Hugging Face id (``Qwen/Qwen3-1.7B``, or just
    ``Qwen3-4B``) looked up in the HF cache, then downloaded when online.
    """
    text = os.fspath(name_or_path)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return path
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise WeightsNotFoundError(f"The text-encoder folder {path} does not exist.")
    repo = _hf_repo_id(text)
    source = WeightSource(
        filename=repo.replace("/", "--"),
        hf_repo=repo,
        description=f"the text encoder {repo}",
        option="--text-encoder <folder> (in Python: model=<folder>)",
    )
    return resolve_weights(source)


def load_qwen3_conditioner(
    model: str | os.PathLike = DEFAULT_TEXT_ENCODER,
    *,
    max_length: int = 128,
    embed_dim: int | None = None,
    pad_mask: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    compile: bool = False,
) -> Qwen3TextConditioner:
    """Load a Qwen3 text conditioner from a folder or Hugging Face id (offline-first, see module doc).

    ``dtype`` defaults to bf16 on CUDA (as the released model ran it) and float32 elsewhere. ``compile=True``
    compiles the encoder's forward.
    """
    from ..utils.extras import require_extra

    transformers = require_extra("transformers", "t2i", feature="The Qwen3 text encoder")
    AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

    folder = resolve_text_encoder_folder(model)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        encoder = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"The text-encoder folder {folder} is incomplete or unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})."
        ) from exc
    encoder.to(device)
    if compile:
        encoder.compile()
    source = {"name": "qwen3", "model": os.fspath(model)}
    return Qwen3TextConditioner(
        encoder, tokenizer, max_length=max_length, embed_dim=embed_dim, pad_mask=pad_mask, source=source
    )
