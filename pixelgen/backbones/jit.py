"""Class-to-image JiT: a pixel-space DiT with x-prediction.

Patch embedding (optionally through a low-rank bottleneck) + fixed 2-D sin-cos table, axial 2-D RoPE on q/k
after QK-RMSNorm, SwiGLU feed-forward, adaLN-Zero conditioned on ``t_emb + y_emb``, and ``in_context_len``
label tokens prepended from block ``in_context_start`` on. Parameter names equal those of the released
checkpoints, so ``model.load_state_dict(released_state_dict)`` works strictly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pixelgen.nn import (
    RMSNorm,
    RotaryTable,
    SwiGLU,
    TimestepEmbedder,
    apply_rotary_pairs,
    attention,
    axial_rope_2d,
    check_backend,
    swiglu_hidden_size,
)
from pixelgen.utils.checks import check_class_labels_input

from .common import JiTBase, modulate, register_family

__all__ = ["JiT", "JIT_PRESETS", "build_jit"]


class PatchEmbed(nn.Module):
    """Conv patchify: ``proj1`` (kernel = stride = p) straight to H, or to ``bottleneck_dim`` (no bias) followed
    by a 1×1 ``proj2`` to H. Returns row-major tokens (B, N, H)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, bottleneck_dim: int | None):
        super().__init__()
        if bottleneck_dim is None:
            self.proj1 = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)
            self.proj2 = None
        else:
            self.proj1 = nn.Conv2d(in_channels, bottleneck_dim, patch_size, stride=patch_size, bias=False)
            self.proj2 = nn.Conv2d(bottleneck_dim, hidden_size, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj1(x)
        if self.proj2 is not None:
            x = self.proj2(x)
        return x.flatten(2).transpose(1, 2)


class LabelEmbedder(nn.Module):
    """``embedding_table`` of ``num_classes + 1`` rows; row ``num_classes`` is the null (unconditional) class.
    Label dropout for CFG training is the objective's job, not this module's."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class SelfAttention(nn.Module):
    """Fused qkv (with bias), QK-RMSNorm per head, RoPE on q and k, attention, output projection + dropout."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float, attention_backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.attention_backend = attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: RotaryTable) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rotary_pairs(self.q_norm(q), rope)
        k = apply_rotary_pairs(self.k_norm(k), rope)
        out = attention(q, k, v, backend=self.attention_backend, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


class JiTBlock(nn.Module):
    """Pre-norm adaLN-Zero block: ``x += gate·Attn(mod(norm(x)))``, ``x += gate·FFN(mod(norm(x)))``."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        attn_drop: float,
        proj_drop: float,
        attention_backend: str,
    ):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, attn_drop, proj_drop, attention_backend)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, swiglu_hidden_size(hidden_size, mlp_ratio), bias=True, drop=proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: RotaryTable) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """RMSNorm, adaLN (shift, scale) from c, then ``linear`` to p²·C pixel values per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class JiT(JiTBase):
    """Class-to-image JiT. Constructor arguments carry the released configs' names.

    ``forward(x, t, y, *, return_layer=None)``:
      ``x`` (B, C, H, W) noisy image in [-1, 1]; H and W multiples of ``patch_size`` (any grid: the sin-cos table
      and RoPE are regenerated for grids other than the training one); ``t`` (B,) in [0, 1] (1 = data, no
      ×1000); ``y`` (B,) long labels in [0, num_classes] where ``num_classes`` is the null class.
      Returns x̂ (B, C, H, W). With ``return_layer=k`` returns ``(x̂, feature)``: the image tokens at the input
      of block k (the output of block k−1; in-context tokens stripped), shape (B, N, hidden); ``k = depth``
      gives the tokens after the last block.
    Dropout (``attn_drop``, ``proj_drop``) is active only in blocks ``depth//4 <= i < (depth//4)·3``, as
    the released models were trained (none at depth 3; blocks 1-2 at depth 6).
    """

    arch = "jit"
    cond_kind = "class"

    def __init__(
        self,
        input_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_classes: int = 1000,
        use_bottleneck: bool = True,
        bottleneck_dim: int = 128,
        in_context_len: int = 32,
        in_context_start: int = 8,
        *,
        attention_backend: str = "auto",
        residual_stream: str = "original",
    ):
        super().__init__(attention_backend, residual_stream=residual_stream, grid_positions="per_grid")
        _validate_c2i(locals())
        self.config: dict[str, Any] = dict(
            input_size=input_size,
            patch_size=patch_size,
            in_channels=in_channels,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=float(mlp_ratio),
            attn_drop=float(attn_drop),
            proj_drop=float(proj_drop),
            num_classes=num_classes,
            use_bottleneck=bool(use_bottleneck),
            bottleneck_dim=bottleneck_dim,
            in_context_len=in_context_len,
            in_context_start=in_context_start,
        )
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.num_classes = num_classes
        self.in_context_len, self.in_context_start = in_context_len, in_context_start
        self.head_dim = hidden_size // num_heads

        self.t_embedder = TimestepEmbedder(hidden_size, max_period=10000.0)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, bottleneck_dim if use_bottleneck else None)
        self.pos_embed = self._training_grid_table(input_size, patch_size, hidden_size)
        if in_context_len > 0:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden_size))
        else:
            self.in_context_posemb = None
        dropout_blocks = range(depth // 4, (depth // 4) * 3)  # the trained bound (not 3·depth//4)
        self.blocks = nn.ModuleList(
            JiTBlock(
                hidden_size,
                num_heads,
                mlp_ratio,
                attn_drop if i in dropout_blocks else 0.0,
                proj_drop if i in dropout_blocks else 0.0,
                attention_backend,
            )
            for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    @property
    def uses_in_context(self) -> bool:
        return self.in_context_len > 0 and self.in_context_start < self.depth

    def initialize_weights(self) -> None:
        """Xavier linears, zero adaLN modulations and final projection: the model then outputs exactly zero."""
        self._init_linears_and_table()
        for conv in (self.x_embedder.proj1, self.x_embedder.proj2):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.in_context_posemb is not None:
            nn.init.normal_(self.in_context_posemb, std=0.02)
        zero_init = [block.adaLN_modulation[-1] for block in self.blocks]
        zero_init += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for linear in zero_init:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def unpatchify(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """(B, N, p·p·C) with features ordered (row-in-patch, col-in-patch, channel) → (B, C, H, W)."""
        p, c = self.patch_size, self.in_channels
        x = tokens.reshape(tokens.shape[0], grid_h, grid_w, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], c, grid_h * p, grid_w * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, return_layer: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        grid_h, grid_w = self._image_grid(x, t)
        if self.check_inputs:
            check_class_labels_input(y, x.shape[0], "y")
            self._check_return_layer(return_layer, self.depth)
            self._check_values(t, y, {"x": x})

        tokens = self.add_positions(self.x_embedder(x), self.position_table(grid_h, grid_w))
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb
        context_len = self.in_context_len if self.uses_in_context else 0
        rope_prefixed = axial_rope_2d(self.head_dim, grid_h, grid_w, prefix_len=context_len, device=x.device)
        rope_image = RotaryTable(rope_prefixed.cos[context_len:], rope_prefixed.sin[context_len:])  # views

        prefix = 0  # number of in-context tokens currently at the front of the sequence
        feature = None
        for i, block in enumerate(self.blocks):
            if i == return_layer:
                feature = tokens[:, prefix:]
            if self.in_context_posemb is not None and i == self.in_context_start:
                context = y_emb.unsqueeze(1).expand(-1, self.in_context_len, -1) + self.in_context_posemb
                tokens = torch.cat([context, tokens], dim=1)
                prefix = self.in_context_len
            tokens = block(tokens, c, rope_prefixed if prefix else rope_image)
        tokens = tokens[:, prefix:]
        if return_layer == self.depth:
            feature = tokens
        out = self.unpatchify(self.final_layer(tokens, c), grid_h, grid_w)
        return out if return_layer is None else (out, feature)


def _validate_c2i(args: dict[str, Any]) -> None:
    def positive(*names: str) -> None:
        for name in names:
            if not isinstance(args[name], int) or args[name] <= 0:
                raise ValueError(f"JiT argument {name} must be a positive integer, got {args[name]!r}.")

    positive(
        "input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes", "bottleneck_dim"
    )
    if args["input_size"] % args["patch_size"]:
        raise ValueError(f"JiT input_size {args['input_size']} is not a multiple of patch_size {args['patch_size']}.")
    if args["hidden_size"] % args["num_heads"]:
        raise ValueError(f"JiT hidden_size {args['hidden_size']} is not divisible by num_heads {args['num_heads']}.")
    if (args["hidden_size"] // args["num_heads"]) % 4 or args["hidden_size"] % 4:
        raise ValueError(
            f"JiT needs hidden_size and head_dim divisible by 4 (2-D sin-cos table and axial RoPE), got hidden_size "
            f"{args['hidden_size']} with head_dim {args['hidden_size'] // args['num_heads']}."
        )
    if args["in_context_len"] < 0 or args["in_context_start"] < 0:
        raise ValueError("JiT in_context_len and in_context_start must be non-negative.")
    for name in ("attn_drop", "proj_drop"):
        if not 0.0 <= args[name] < 1.0:
            raise ValueError(f"JiT {name} must lie in [0, 1), got {args[name]}.")
    if args["mlp_ratio"] <= 0 or swiglu_hidden_size(args["hidden_size"], args["mlp_ratio"]) <= 0:
        raise ValueError(f"JiT mlp_ratio {args['mlp_ratio']} gives an empty feed-forward layer.")
    check_backend(args["attention_backend"])


_COMMON = dict(
    input_size=256, in_channels=3, mlp_ratio=4.0, num_classes=1000, in_context_len=32, attn_drop=0.0, proj_drop=0.0
)
_B = dict(hidden_size=768, depth=12, num_heads=12, use_bottleneck=True, bottleneck_dim=128, in_context_start=4)
_L = dict(hidden_size=1024, depth=24, num_heads=16, use_bottleneck=True, bottleneck_dim=128, in_context_start=8)
_H = dict(hidden_size=1280, depth=32, num_heads=16, use_bottleneck=True, bottleneck_dim=256, in_context_start=10)
_XL = dict(
    hidden_size=1152,
    depth=28,
    num_heads=16,
    use_bottleneck=False,
    bottleneck_dim=128,
    in_context_start=8,
    proj_drop=0.1,
)

# name -> (description, config). The /32 presets default to 512 px (a 16x16 grid, as JiT pairs them).
JIT_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "jit_b_16": ("JiT-B/16 (131M), 256 px", {**_COMMON, **_B, "patch_size": 16}),
    "jit_b_32": ("JiT-B/32 (133M), 512 px", {**_COMMON, **_B, "patch_size": 32, "input_size": 512}),
    "jit_l_16": ("JiT-L/16 (459M), 256 px", {**_COMMON, **_L, "patch_size": 16}),
    "jit_l_32": ("JiT-L/32 (462M), 512 px", {**_COMMON, **_L, "patch_size": 32, "input_size": 512}),
    "jit_h_16": ("JiT-H/16 (953M), 256 px", {**_COMMON, **_H, "patch_size": 16}),
    "jit_h_32": ("JiT-H/32 (956M), 512 px", {**_COMMON, **_H, "patch_size": 32, "input_size": 512}),
    "pixelgen_l_16": ("PixelGen-L/16 (459M, = JiT-L/16), 256 px", {**_COMMON, **_L, "patch_size": 16}),
    "pixelgen_xl_16": (
        "PixelGen-XL/16 (677M, no bottleneck, proj_drop 0.1), 256 px",
        {**_COMMON, **_XL, "patch_size": 16},
    ),
}


build_jit = register_family(
    "jit", JiT, "Class-to-image JiT from the released configs' arguments (+ attention_backend).", JIT_PRESETS, "JiT"
)
