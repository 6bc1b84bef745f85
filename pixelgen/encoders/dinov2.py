"""Frozen DINOv2 (through timm) as used by REPA and P-DINO.

Preprocessing: the input is an image batch in [0, 1]; it is ImageNet-normalised, then resized
bicubically (no antialiasing) to ``int(14·S/16)`` per side, so that the DINOv2 token grid (patch 14) equals
the grid of a patch-16 backbone (256 px -> 224 px -> 16×16 tokens). The output is the patch tokens of the
requested blocks after the final LayerNorm (no CLS token, no registers), averaged over the list of blocks.

Position embeddings are interpolated the way the facebookresearch hub model does it (bicubic on the float32
table with scale factor ``(grid + 0.1) / M``, no antialiasing) rather than timm's own resampling, because the
released PixelGen models were trained against the hub model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..registry import registries
from ..utils.checks import check_image_batch
from ..utils.hub import WeightSource
from .base import (
    FrozenEncoder,
    WeightsSpec,
    at_least_float32,
    check_pixel_range,
    load_weight_file,
    resolve_encoder_weights,
)

__all__ = ["DINOv2Encoder", "DINOV2_VARIANTS", "dinov2_weight_source", "convert_dinov2_state_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# registry name -> (timm architecture, Hugging Face repository of the timm weights)
DINOV2_VARIANTS: dict[str, tuple[str, str]] = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", "timm/vit_small_patch14_dinov2.lvd142m"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "timm/vit_base_patch14_dinov2.lvd142m"),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", "timm/vit_large_patch14_dinov2.lvd142m"),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", "timm/vit_giant_patch14_dinov2.lvd142m"),
}

# The hub model's interpolation offset: scale factors are (grid + 0.1) / M, not grid / M.
_POS_INTERP_OFFSET = 0.1


def dinov2_weight_source(name: str) -> WeightSource:
    """Where the weights of a DINOv2 variant come from: the torch hub file or the timm repository on HF."""
    _, hf_repo = DINOV2_VARIANTS[name]
    return WeightSource(
        filename=f"{name}_pretrain.pth",
        url=f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth",
        hf_repo=hf_repo,
        hf_filename="model.safetensors",
        description=f"DINOv2 {name}",
        option=f"build_encoder('{name}', weights=<path>) (objective: encoders={{'dinov2': {{'weights': <path>}}}})",
    )


def convert_dinov2_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename facebookresearch DINOv2 keys to timm's; timm-format keys pass through unchanged.

    Differences: the facebookresearch checkpoints have a ``mask_token`` (used only in masked pre-training,
    dropped here), may store blocks in chunks (``blocks.<chunk>.<i>.``; chunks are padded so ``i`` is the
    global index), and name the fused SwiGLU of ViT-g ``mlp.w12`` / ``mlp.w3`` where timm says ``mlp.fc1`` /
    ``mlp.fc2``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    return out


class DINOv2Encoder(FrozenEncoder):
    """Frozen DINOv2 ViT-*/14 feature extractor; ``forward(images01)`` -> (B, N, D) patch tokens (≥ float32).

    Args:
        name: ``dinov2_vits14`` / ``dinov2_vitb14`` / ``dinov2_vitl14`` / ``dinov2_vitg14``.
        weights: ``None`` (resolution rule: torch hub cache ``<name>_pretrain.pth`` -> HF cache of the timm
            repo -> download when online -> error), ``"random"``, or a path to a timm or original-format file.
        dtype: parameter dtype (e.g. ``torch.bfloat16`` on GPU); outputs are float32 (float64 for a float64 encoder).
        layers: block indices whose normed patch tokens are returned (negative = from the end); with several,
            their mean. Default: the last block, as PixelGen uses.
        base_patch_size: the backbone patch size the token grid must match (16 -> resize by 14/16).
        model_overrides: extra ``timm.create_model`` arguments (tests use tiny widths/depths).
    """

    patch_size = 14

    def __init__(
        self,
        name: str = "dinov2_vitb14",
        *,
        weights: WeightsSpec = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        layers: Sequence[int] = (-1,),
        base_patch_size: int = 16,
        model_overrides: Mapping[str, object] | None = None,
    ):
        super().__init__()
        if name not in DINOV2_VARIANTS:
            raise KeyError(f"Unknown DINOv2 variant '{name}'; choose one of {', '.join(DINOV2_VARIANTS)}.")
        if not isinstance(base_patch_size, int) or base_patch_size < 1:
            raise ValueError(f"base_patch_size must be a positive integer, got {base_patch_size!r}.")
        import timm

        self.name = name
        self.base_patch_size = base_patch_size
        path = resolve_encoder_weights(weights, dinov2_weight_source(name))  # before building: fail fast offline
        arch, _ = DINOV2_VARIANTS[name]
        self.backbone = timm.create_model(
            arch, pretrained=False, num_classes=0, dynamic_img_size=True, **dict(model_overrides or {})
        )
        if self.backbone.patch_embed.patch_size != (14, 14):
            raise ValueError(
                f"DINOv2 encoders use patch size 14; model_overrides changed it to {self.backbone.patch_embed.patch_size}."
            )
        if path is not None:
            self._load(path)
        self.layers = self._check_layers(layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze(dtype, device)

    # -- construction helpers --------------------------------------------------------------------------
    def _load(self, path) -> None:
        state = convert_dinov2_state_dict(load_weight_file(path))
        missing, unexpected, wrong = self.state_mismatch(self.backbone, state)
        if missing or unexpected or wrong:
            parts = [
                f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            ]
            raise ValueError(f"The weights in {path} do not fit {self.name} ({'; '.join(parts)}).")
        self.backbone.load_state_dict(state)

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.embed_dim)

    def _check_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        if isinstance(layers, int):
            layers = (layers,)
        layers = tuple(layers)
        if not layers or not all(isinstance(i, int) and -self.depth <= i < self.depth for i in layers):
            raise ValueError(
                f"layers must be a non-empty list of block indices in [-{self.depth}, {self.depth - 1}], got {layers!r}."
            )
        return tuple(sorted({i % self.depth for i in layers}))

    # -- forward ---------------------------------------------------------------------------------------
    def input_side(self, side: int) -> int:
        """Side (pixels) an image side is resized to: ``int(14·side/base_patch_size)``."""
        return int(self.patch_size * side / self.base_patch_size)

    def num_tokens(self, height: int, width: int | None = None) -> int:
        width = height if width is None else width
        return (self.input_side(height) // self.patch_size) * (self.input_side(width) // self.patch_size)

    def preprocess(self, images01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> ImageNet-normalised, bicubically resized input of the ViT (in the encoder's dtype)."""
        h, w = images01.shape[-2:]
        size = (self.input_side(h), self.input_side(w))
        if min(size) < self.patch_size:
            raise ValueError(
                f"{h}x{w} images give a {size[0]}x{size[1]} DINOv2 input, smaller than its patch size {self.patch_size}; use images of at least {self.base_patch_size} px."
            )
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(
                f"{h}x{w} images give a {size[0]}x{size[1]} DINOv2 input, not a multiple of its patch size {self.patch_size}; "
                f"use image sides that are multiples of {self.base_patch_size}."
            )
        x = (at_least_float32(images01) - self.mean) / self.std
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
        return x.to(self.dtype)

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        table = self.backbone.pos_embed  # (1, 1 + M*M, D): CLS entry then the patch grid
        m = math.isqrt(table.shape[1] - 1)
        if (grid_h, grid_w) == (m, m):
            return table
        dim = table.shape[-1]
        grid = table[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
        scale = ((grid_h + _POS_INTERP_OFFSET) / m, (grid_w + _POS_INTERP_OFFSET) / m)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([table[:, :1].float(), grid], dim=1).to(table.dtype)

    def forward(
        self, images01: torch.Tensor, layers: Sequence[int] | None = None, *, check_range: bool = True
    ) -> torch.Tensor:
        """Patch tokens (B, N, D) of ``images01`` (B, 3, S, S) in [0, 1]; gradients flow to the input.

        ``check_range=False`` skips the [0, 1] range check (P-DINO feeds the unclamped prediction).
        """
        check_image_batch(images01, "DINOv2 input", channels=3)
        if check_range:
            check_pixel_range(images01, "The DINOv2 input", (0.0, 1.0))
        wanted = self.layers if layers is None else self._check_layers(layers)
        outputs = [tokens[:, 1:] for tokens in self.normed_tokens(self.preprocess(images01), wanted)]
        feats = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)
        return at_least_float32(feats)

    def normed_tokens(self, pixels: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """For an already preprocessed ViT input, the final-norm token sequences (B, 1 + N, D), CLS first, after
        each block in ``layers`` (sorted block indices)."""
        net = self.backbone
        tokens = net.patch_embed(pixels)  # (B, h, w, D) with dynamic_img_size
        b, gh, gw, d = tokens.shape
        tokens = torch.cat([net.cls_token.expand(b, -1, -1), tokens.reshape(b, gh * gw, d)], dim=1)
        tokens = net.norm_pre(tokens + self._pos_embed(gh, gw))
        outputs = []
        for i, block in enumerate(net.blocks[: max(layers) + 1]):
            tokens = block(tokens)
            if i in layers:
                outputs.append(net.norm(tokens))
        return outputs

    def extra_repr(self) -> str:
        return f"name={self.name}, layers={list(self.layers)}, base_patch_size={self.base_patch_size}"


def _register(name: str) -> None:
    def build(**options) -> DINOv2Encoder:
        return DINOv2Encoder(name, **options)

    build.__doc__ = f"Frozen DINOv2 {name} (timm), patch tokens after the final norm."
    registries.encoder.register(name, family="dinov2")(build)


for _name in DINOV2_VARIANTS:
    _register(_name)
