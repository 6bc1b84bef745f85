"""Prompts → images with a text-to-image backbone and a text conditioner (what ``pixelgen generate`` runs).

Defaults are the released model's (the ``t2i_default`` sampling preset: Adams–Bashforth order 2, 25 steps,
guidance 4.0 on the open interval (0, 1), time shift 3.0), bf16 autocast on CUDA. The unconditional embedding
is the encoding of ``""`` or of the negative prompt. Image ``n`` of a call (prompt-major: ``n = prompt·num + k``)
starts from the noise :func:`pixelgen.generate` gives sample ``n`` (a generator seeded by ``(seed, n)`` alone),
so results do not depend on the batch size. With the conditioner's ``pad_mask`` the condition is the mapping
``{"emb", "mask"}``, which the samplers batch and the backbone reads.

Any height/width that is a multiple of the patch size works, a negative prompt does not leak into later calls,
and the key-padding mask is an option (docs/parity.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelgen.generate import generate_batches
from pixelgen.samplers import build_sampler, sampler_parameters, sampling_preset

from .qwen3 import Qwen3TextConditioner, TextEncoding, check_prompts

__all__ = [
    "TEXT_ENCODER_FILE",
    "SAMPLING_PRESET",
    "GenerationResult",
    "TextToImagePipeline",
    "check_text_compatible",
    "save_text_encoder_spec",
    "read_text_encoder_spec",
    "save_trajectory_gif",
]

TEXT_ENCODER_FILE = "text_encoder.json"
"""Written next to a T2I checkpoint's ``config.json``: the conditioner's ``describe()``."""

SAMPLING_PRESET = "t2i_default"
"""The registered sampling preset of the released model (Adams-2, 25 steps, CFG 4, shift 3)."""


def check_text_compatible(model: nn.Module, conditioner: Qwen3TextConditioner) -> None:
    """The backbone must be a text model whose text width and length equal the encoder's."""
    if getattr(model, "cond_kind", None) != "text":
        raise ValueError(
            f"This checkpoint is not a text-to-image model (its conditioning is {getattr(model, 'cond_kind', 'unknown')!r})."
        )
    if model.txt_embed_dim != conditioner.embed_dim:
        raise ValueError(
            f"The checkpoint expects text embeddings of width {model.txt_embed_dim} but the text encoder "
            f"{conditioner.source.get('model', conditioner.source.get('name', ''))!r} gives width {conditioner.embed_dim}; "
            "choose the encoder the model was trained with (--text-encoder)."
        )
    if model.txt_max_length != conditioner.max_length:
        raise ValueError(
            f"The checkpoint expects {model.txt_max_length} text tokens but the text encoder pads to {conditioner.max_length}."
        )


@dataclass
class GenerationResult:
    """``images``: uint8 (N, 3, H, W) on CPU, or a list of PIL images with ``output_type="pil"``;
    ``prompts``/``indices``: per image; ``trajectories``: uint8 (N, steps + 1, 3, H, W) when asked for (noise
    first, final image last)."""

    images: Any
    prompts: list[str]
    indices: list[int]
    trajectories: torch.Tensor | None = None


class TextToImagePipeline:
    """A T2I backbone plus its text conditioner.

    ``autocast_dtype``: ``"auto"`` (bf16 on CUDA, as the released model's demo; none elsewhere), a dtype, or None.

    ``pipe(prompts, num_images_per_prompt=4, seed=0)`` → :class:`GenerationResult`. Sampling settings are
    keyword arguments of the call (``sampler``, ``num_steps``, ``guidance``, ``timeshift``, ``order`` ...).
    """

    def __init__(
        self,
        model: nn.Module,
        conditioner: Qwen3TextConditioner,
        *,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | str | None = "auto",
    ) -> None:
        check_text_compatible(model, conditioner)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        if conditioner.device != self.device:
            conditioner.to(self.device)
        self.conditioner = conditioner
        if autocast_dtype == "auto":
            autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.autocast_dtype = autocast_dtype

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        *,
        text_encoder: str | os.PathLike | dict | None = None,
        pad_mask: bool | None = None,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | str | None = "auto",
    ) -> TextToImagePipeline:
        """Load an exported checkpoint (``model.safetensors`` + ``config.json``) and its text encoder.

        The encoder is ``text_encoder`` when given (a registered name, folder or HF id), else the one recorded
        in the checkpoint's ``text_encoder.json``, else ``Qwen/Qwen3-1.7B``. ``pad_mask`` overrides the recorded
        choice.
        """
        from pixelgen.checkpoint import load_pretrained

        from . import DEFAULT_TEXT_ENCODER, build_conditioner_from_spec

        path = Path(checkpoint)
        if path.suffix == ".ckpt":
            raise ValueError(
                f"{path} is a Lightning training checkpoint; convert it first with `pixelgen convert {path} OUT_DIR`."
            )
        if not path.exists():
            raise FileNotFoundError(f"The checkpoint {path} does not exist.")
        device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        model = load_pretrained(path, device=device)
        if getattr(model, "cond_kind", None) != "text":
            raise ValueError(
                f"{path} holds a {getattr(model, 'cond_kind', 'non-text')}-conditional model; text-to-image generation "
                "needs a text-to-image checkpoint (class models sample with `pixelgen sample` or pixelgen.generate)."
            )
        folder = path if path.is_dir() else path.parent
        recorded = read_text_encoder_spec(folder)
        spec: Any = text_encoder if text_encoder is not None else (recorded or DEFAULT_TEXT_ENCODER)
        options: dict[str, Any] = {"max_length": int(model.txt_max_length)}
        if pad_mask is not None:
            options["pad_mask"] = pad_mask
        elif recorded and text_encoder is None:
            options["pad_mask"] = bool(recorded.get("pad_mask", False))
        if isinstance(spec, dict):  # the recorded encoder; the token count always follows the model
            spec = {k: v for k, v in spec.items() if k not in ("max_length", "pad_mask")}
        conditioner = build_conditioner_from_spec(spec, device=device, **options)
        return cls(model, conditioner, device=device, autocast_dtype=autocast_dtype)

    def build_sampler(self, name: str | None = None, **params: Any):
        """A sampler with the released model's settings (those ``name`` takes), ``params`` on top."""
        preset = sampling_preset(SAMPLING_PRESET)
        name = preset.sampler if name is None else name
        accepted = sampler_parameters(name)
        defaults = {k: v for k, v in preset.params.items() if k in accepted}
        return build_sampler(name, **{**defaults, **params})

    def _condition(self, encoding: TextEncoding) -> Any:
        return self.conditioner.condition(encoding)

    def _check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = int(self.model.input_size)
        patch = int(self.model.patch_size)
        h, w = size if height is None else height, size if width is None else width
        for name, value in (("height", h), ("width", w)):
            if not isinstance(value, int) or value < patch or value % patch:
                raise ValueError(
                    f"The image {name} must be a positive multiple of the patch size {patch}, got {value!r}."
                )
        return h, w

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str] | str,
        *,
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 8,
        sampler: str | Callable[..., Any] | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        output_type: str = "pt",
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sampler_params: Any,
    ) -> GenerationResult:
        """``output_type``: ``"pt"`` (uint8 tensor, default) or ``"pil"`` (a list of ``PIL.Image``);
        ``callback``: the sampler's per-step callback (see :class:`~pixelgen.samplers.Sampler`)."""
        if output_type not in ("pt", "pil"):
            raise ValueError(f"output_type must be 'pt' or 'pil', got {output_type!r}.")
        prompts = check_prompts(prompts)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}.")
        h, w = self._check_size(height, width)
        if sampler is None or isinstance(sampler, str):
            run = self.build_sampler(sampler, **sampler_params)
        elif callable(sampler) and not sampler_params:  # a sampler built by the caller (its stats stay readable)
            run = sampler
        else:
            raise TypeError("sampler must be a registered name (with its parameters as keywords) or a built sampler.")
        per_image = [p for p in prompts for _ in range(num_images_per_prompt)]
        uncond = self._condition(self.conditioner.unconditional(1, negative_prompt))
        batches = list(
            generate_batches(
                self.model,
                len(per_image),
                lambda rows: self._condition(self.conditioner([per_image[i] for i in rows])),
                uncond,
                sampler=run,
                seed=seed,
                noise="per_index",
                batch_size=batch_size,
                size=(h, w),
                device=self.device,
                autocast_dtype=self.autocast_dtype,
                return_trajectory=return_trajectory,
                callback=callback,
                progress=progress,
                desc="generate",
            )
        )
        result = torch.cat([b.images for b in batches])
        return GenerationResult(
            images=to_pil(result) if output_type == "pil" else result,
            prompts=per_image,
            indices=list(range(len(per_image))),
            trajectories=torch.cat([b.trajectories for b in batches]) if return_trajectory else None,
        )


def to_pil(images: torch.Tensor) -> list:
    """uint8 (N, 3, H, W) images as a list of RGB ``PIL.Image``."""
    from PIL import Image

    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]


# -- files ---------------------------------------------------------------------------------------------
def save_text_encoder_spec(folder: str | os.PathLike, conditioner: Qwen3TextConditioner) -> Path:
    """Record the conditioner next to a checkpoint so ``pixelgen generate`` rebuilds the same one."""
    from pixelgen.utils.io import atomic_save_json

    return atomic_save_json(conditioner.describe(), Path(folder) / TEXT_ENCODER_FILE)


def read_text_encoder_spec(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / TEXT_ENCODER_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a JSON object describing the text encoder.")
    return spec


def save_trajectory_gif(frames: torch.Tensor, path: str | os.PathLike, duration_ms: int = 200) -> Path:
    """Write uint8 frames (T, 3, H, W) as a looping animated GIF, ``duration_ms`` per frame (the demo's 200)."""
    from PIL import Image

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"Trajectory frames must be uint8 (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}.")
    pictures = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return path
