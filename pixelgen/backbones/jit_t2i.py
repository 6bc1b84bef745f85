"""Text-to-image JiT: image tokens attend jointly over themselves and a refined text stream.

Linear-bottleneck patchify with (c, kh, kw) feature order (``F.unfold``/``F.fold``), fixed 2-D sin-cos table,
a text embedder (Linear + RMSNorm) with learnt text positions, ``num_text_blocks`` text-refiner blocks, then
``num_blocks`` image blocks whose attention takes the refined text as extra keys/values (shared k_norm, no
RoPE on text). adaLN is conditioned on the timestep alone. Parameter names equal those of the released checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixelgen.nn import (
    RMSNorm,
    RotaryTable,
    SwiGLU,
    TimestepEmbedder,
    apply_rotary_pairs,
    attention,
    check_backend,
    linspace_rope_2d,
)
from pixelgen.utils.checks import check_tensor

from .common import JiTBase, modulate, register_family

__all__ = ["JiTT2I", "JIT_T2I_PRESETS", "build_jit_t2i"]


class LinearPatchEmbed(nn.Module):
    """``proj1`` (C·p² → bottleneck, no bias) then ``proj2`` (bottleneck → H) on unfolded patches."""

    def __init__(self, patch_dim: int, bottleneck_dim: int, hidden_size: int):
        super().__init__()
        self.proj1 = nn.Linear(patch_dim, bottleneck_dim, bias=False)
        self.proj2 = nn.Linear(bottleneck_dim, hidden_size, bias=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(patches))


class TextEmbedder(nn.Module):
    """``proj`` (text dim → H) then RMSNorm ``norm``."""

    def __init__(self, txt_embed_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(txt_embed_dim, hidden_size, bias=True)
        self.norm = RMSNorm(hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(y))


def _heads(x: torch.Tensor, parts: int, num_heads: int) -> torch.Tensor:
    """(B, N, parts·H) → (parts, B, heads, N, head_dim)."""
    b, n, _ = x.shape
    return x.reshape(b, n, parts, num_heads, -1).permute(2, 0, 3, 1, 4)


class TextSelfAttention(nn.Module):
    """Self-attention of the text refiner: qkv without bias, QK-RMSNorm, no RoPE."""

    def __init__(self, dim: int, num_heads: int, attention_backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(dim // num_heads)
        self.k_norm = RMSNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, y: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = _heads(self.qkv(y), 3, self.num_heads)
        out = attention(self.q_norm(q), self.k_norm(k), v, backend=self.attention_backend, key_padding_mask=key_mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class JointAttention(nn.Module):
    """Image queries over image keys/values (``qkv_x``, RoPE) plus text keys/values (``kv_y``, same
    ``k_norm``, no RoPE), in one softmax."""

    def __init__(self, dim: int, num_heads: int, attention_backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        self.qkv_x = nn.Linear(dim, 3 * dim, bias=False)
        self.kv_y = nn.Linear(dim, 2 * dim, bias=False)
        self.q_norm = RMSNorm(dim // num_heads)
        self.k_norm = RMSNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, rope: RotaryTable, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        q, k_x, v_x = _heads(self.qkv_x(x), 3, self.num_heads)
        k_y, v_y = _heads(self.kv_y(y), 2, self.num_heads)
        q = apply_rotary_pairs(self.q_norm(q), rope)
        k_x = apply_rotary_pairs(self.k_norm(k_x), rope)
        k = torch.cat([k_x, self.k_norm(k_y)], dim=2)
        v = torch.cat([v_x, v_y], dim=2)
        out = attention(q, k, v, backend=self.attention_backend, key_padding_mask=key_mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class _AdaLNBlock(nn.Module):
    """adaLN-Zero residual form shared by the text-refiner and image blocks; ``cond`` is SiLU(t_emb) (B, 1, H)."""

    def __init__(self, hidden_size: int, attn: nn.Module):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = attn
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, 4 * hidden_size, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def _residual(self, x: torch.Tensor, cond: torch.Tensor, attend) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + gate_a * attend(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class TextRefineBlock(_AdaLNBlock):
    def __init__(self, hidden_size: int, num_heads: int, attention_backend: str):
        super().__init__(hidden_size, TextSelfAttention(hidden_size, num_heads, attention_backend))

    def forward(self, y: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self._residual(y, cond, lambda h: self.attn(h, key_mask))


class ImageBlock(_AdaLNBlock):
    def __init__(self, hidden_size: int, num_heads: int, attention_backend: str):
        super().__init__(hidden_size, JointAttention(hidden_size, num_heads, attention_backend))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor, rope: RotaryTable, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        return self._residual(x, cond, lambda h: self.attn(h, y, rope, key_mask))


class TextFinalLayer(nn.Module):
    """LayerNorm without affine parameters, then ``linear`` to C·p² values per token (no adaLN)."""

    def __init__(self, hidden_size: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class JiTT2I(JiTBase):
    """Text-to-image JiT. Constructor arguments carry the released config's names (``num_groups`` = attention heads).

    ``forward(x, t, y, *, return_layer=None, text_mask=None)``:
      ``x`` (B, C, H, W) with H, W multiples of ``patch_size`` (other grids than the training one work: RoPE is
      computed per grid, and the stored sin-cos table is used when the token count is the training grid's, as
      the original does, else regenerated; see ``grid_positions``); ``t`` (B,) in [0, 1]; ``y`` (B,
      txt_max_length, txt_embed_dim) text embeddings, or the structured text condition ``{"emb": embeddings,
      "mask": text_mask}`` (what the samplers batch and pass on). ``return_layer=k`` also returns the image tokens at the
      input of image block k, (B, N, hidden).
      ``text_mask`` (B, txt_max_length) bool, True for real tokens: None (default) reproduces the original,
      which attends to padding tokens everywhere. When given, padding keys are masked in the text-refiner
      self-attention and in the joint attention, so the padding embeddings no longer affect the output; a
      prompt without any real token then conditions on nothing (image self-attention only).
    """

    arch = "jit_t2i"
    cond_kind = "text"

    def __init__(
        self,
        input_size: int = 256,
        in_channels: int = 3,
        num_groups: int = 24,
        hidden_size: int = 1536,
        num_blocks: int = 16,
        num_text_blocks: int = 4,
        patch_size: int = 16,
        txt_embed_dim: int = 2048,
        txt_max_length: int = 128,
        bottleneck_dim: int = 256,
        *,
        attention_backend: str = "auto",
        residual_stream: str = "original",
        grid_positions: str = "original",
    ):
        super().__init__(attention_backend, residual_stream=residual_stream, grid_positions=grid_positions)
        _validate_t2i(locals())
        self.config: dict[str, Any] = dict(
            input_size=input_size,
            in_channels=in_channels,
            num_groups=num_groups,
            hidden_size=hidden_size,
            num_blocks=num_blocks,
            num_text_blocks=num_text_blocks,
            patch_size=patch_size,
            txt_embed_dim=txt_embed_dim,
            txt_max_length=txt_max_length,
            bottleneck_dim=bottleneck_dim,
        )
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.num_blocks, self.num_heads = hidden_size, num_blocks, num_groups
        self.txt_embed_dim, self.txt_max_length = txt_embed_dim, txt_max_length
        self.head_dim = hidden_size // num_groups
        patch_dim = in_channels * patch_size * patch_size

        self.x_embedder = LinearPatchEmbed(patch_dim, bottleneck_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, max_period=10.0, cast_features_to_input=True)
        self.y_embedder = TextEmbedder(txt_embed_dim, hidden_size)
        self.pos_embed = self._training_grid_table(input_size, patch_size, hidden_size)
        self.y_pos_embedding = nn.Parameter(torch.zeros(1, txt_max_length, hidden_size))
        self.text_refine_blocks = nn.ModuleList(
            TextRefineBlock(hidden_size, num_groups, attention_backend) for _ in range(num_text_blocks)
        )
        self.blocks = nn.ModuleList(ImageBlock(hidden_size, num_groups, attention_backend) for _ in range(num_blocks))
        self.final_layer = TextFinalLayer(hidden_size, patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, zero adaLN modulations and final projection: the model then outputs exactly zero."""
        self._init_linears_and_table()
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.y_pos_embedding, std=0.02)
        for block in [*self.text_refine_blocks, *self.blocks]:
            nn.init.zeros_(block.adaLN_modulation[0].weight)
            nn.init.zeros_(block.adaLN_modulation[0].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        return_layer: int | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(y, Mapping):
            if "emb" not in y:
                raise KeyError(
                    f"A structured text condition needs 'emb' (and optionally 'mask'), got keys {sorted(y)}."
                )
            y, text_mask = y["emb"], y.get("mask", text_mask)
        grid_h, grid_w = self._image_grid(x, t)
        if self.check_inputs:
            self._check_text(y, text_mask, x.shape[0])
            self._check_return_layer(return_layer, self.num_blocks)
            self._check_values(t, finite={"x": x, "y (text embeddings)": y})

        patches = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size).transpose(1, 2)
        tokens = self.add_positions(self.x_embedder(patches), self.position_table(grid_h, grid_w))
        cond = F.silu(self.t_embedder(t)).unsqueeze(1)
        text = self.add_positions(self.y_embedder(y), self.y_pos_embedding)

        refine_mask = joint_mask = None
        if text_mask is not None:
            # A prompt with no real token lets its (unused) text queries attend to everything, so the refiner
            # never sees an all-masked row; the joint attention then masks all of its text keys.
            refine_mask = text_mask | ~text_mask.any(dim=1, keepdim=True)
            joint_mask = torch.cat([text_mask.new_ones(x.shape[0], tokens.shape[1]), text_mask], dim=1)
        for block in self.text_refine_blocks:
            text = block(text, cond, refine_mask)

        rope = linspace_rope_2d(self.head_dim, grid_h, grid_w, device=x.device)
        feature = None
        for i, block in enumerate(self.blocks):
            if i == return_layer:
                feature = tokens
            tokens = block(tokens, text, cond, rope, joint_mask)
        if return_layer == self.num_blocks:
            feature = tokens
        out = self.final_layer(tokens).transpose(1, 2)
        out = F.fold(out, output_size=x.shape[-2:], kernel_size=self.patch_size, stride=self.patch_size)
        return out if return_layer is None else (out, feature)

    def _check_text(self, y: Any, text_mask: Any, batch: int) -> None:
        check_tensor(y, "y (text embeddings)", floating=True)
        expected = (batch, self.txt_max_length, self.txt_embed_dim)
        if tuple(y.shape) != expected:
            raise ValueError(
                f"y (text embeddings) must have shape (B, txt_max_length, txt_embed_dim) = {expected}, got {tuple(y.shape)}."
            )
        if text_mask is not None:
            check_tensor(text_mask, "text_mask")
            if text_mask.dtype != torch.bool or tuple(text_mask.shape) != expected[:2]:
                raise ValueError(
                    f"text_mask must be a bool tensor of shape {expected[:2]} (True = real token), "
                    f"got {text_mask.dtype} {tuple(text_mask.shape)}."
                )


def _validate_t2i(args: dict[str, Any]) -> None:
    names = (
        "input_size",
        "in_channels",
        "num_groups",
        "hidden_size",
        "num_blocks",
        "patch_size",
        "txt_embed_dim",
        "txt_max_length",
        "bottleneck_dim",
    )
    for name in names:
        if not isinstance(args[name], int) or args[name] <= 0:
            raise ValueError(f"JiT_T2I argument {name} must be a positive integer, got {args[name]!r}.")
    if not isinstance(args["num_text_blocks"], int) or args["num_text_blocks"] < 0:
        raise ValueError(
            f"JiT_T2I argument num_text_blocks must be a non-negative integer, got {args['num_text_blocks']!r}."
        )
    if args["input_size"] % args["patch_size"]:
        raise ValueError(
            f"JiT_T2I input_size {args['input_size']} is not a multiple of patch_size {args['patch_size']}."
        )
    if args["hidden_size"] % args["num_groups"]:
        raise ValueError(
            f"JiT_T2I hidden_size {args['hidden_size']} is not divisible by num_groups {args['num_groups']}."
        )
    if (args["hidden_size"] // args["num_groups"]) % 4 or args["hidden_size"] % 4:
        raise ValueError(
            f"JiT_T2I needs hidden_size and head_dim divisible by 4 (2-D sin-cos table and RoPE), got hidden_size "
            f"{args['hidden_size']} with head_dim {args['hidden_size'] // args['num_groups']}."
        )
    check_backend(args["attention_backend"])


JIT_T2I_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "pixelgen_xxl_16_t2i": (
        "PixelGen-XXL/16 text-to-image (1.12B), 256 px; input_size=512 for the 512 stages",
        dict(
            input_size=256,
            in_channels=3,
            num_groups=24,
            hidden_size=1536,
            num_blocks=16,
            num_text_blocks=4,
            patch_size=16,
            txt_embed_dim=2048,
            txt_max_length=128,
            bottleneck_dim=256,
        ),
    ),
}


build_jit_t2i = register_family(
    "jit_t2i",
    JiTT2I,
    "Text-to-image JiT from the released config's constructor arguments (+ attention_backend).",
    JIT_T2I_PRESETS,
    "JiT_T2I",
)
