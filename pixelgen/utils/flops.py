"""Analytic FLOP counts of the networks in a PixelGen training step and in sampling.

Conventions (the usual ones for model FLOP utilisation):

* one multiply-add is **2 FLOPs** (:data:`FLOPS_PER_MAC`);
* only matrix products count: linear layers, convolutions and the two products of attention
  (``q·kᵀ`` and ``p·v``). Norms, activations, softmax, RoPE, additions and resizing are left out;
* backward = the products autograd actually runs: for a layer whose input needs a gradient, a grad-input
  product; for a layer with trainable weights, a grad-weight product. Attention backward is counted as
  twice its forward (four products); kernels that recompute the scores (flash attention) do a fifth,
  which is hardware work, not model work, so it is not counted.

The counts are exact for these conventions: ``tests/test_gpu_suite.py`` checks them against
:class:`torch.utils.flop_counter.FlopCounterMode` (which counts the same operations) on the real networks.

>>> from pixelgen import build_model
>>> from pixelgen.utils.flops import jit_flops
>>> round(jit_flops(build_model("pixelgen_xl_16").config).forward / 1e9, 1)   # per image, 256 px
260.1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FLOPS_PER_MAC",
    "Flops",
    "jit_flops",
    "dinov2_flops",
    "lpips_vgg_flops",
    "repa_projector_flops",
    "training_step_flops",
    "gate_probability",
    "DINOV2_DIMS",
]

FLOPS_PER_MAC = 2
"""A multiply-add counts as two floating-point operations."""

DINOV2_DIMS: dict[str, tuple[int, int, int]] = {
    "dinov2_vits14": (384, 12, 6),
    "dinov2_vitb14": (768, 12, 12),
    "dinov2_vitl14": (1024, 24, 16),
}
"""name -> (embed_dim, depth, heads) of the DINOv2 variants with a plain (non-gated) MLP of ratio 4."""

# LPIPS-VGG: torchvision VGG16 convolutions up to relu5_3, as (in, out) channels per stage.
_VGG16_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)


@dataclass(frozen=True)
class Flops:
    """Forward and backward FLOPs of one piece of work."""

    forward: float
    backward: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, factor: float) -> Flops:
        return Flops(self.forward * factor, self.backward * factor)

    __rmul__ = __mul__


def _mm(rows: float, fan_in: int, fan_out: int) -> float:
    return FLOPS_PER_MAC * rows * fan_in * fan_out


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def jit_flops(config: Mapping[str, Any], *, batch: int = 1, image_size: int | None = None) -> Flops:
    """FLOPs of the class-to-image JiT for ``batch`` images, forward and backward (training: all weights trainable,
    the noisy input needs no gradient).

    ``config``: ``model.config`` (original argument names). ``image_size``: side in pixels (default: the
    model's ``input_size``).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a JiT config dict (model.config), got {type(config).__name__}.")
    missing = [
        k for k in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads") if k not in config
    ]
    if missing:
        raise KeyError(f"The JiT config lacks {', '.join(missing)}.")
    from pixelgen.nn import swiglu_hidden_size  # the layer's own width rule, not a copy of it

    batch = _positive_int(batch, "batch")
    side = _positive_int(config["input_size"] if image_size is None else image_size, "image_size")
    p, c, h = config["patch_size"], config["in_channels"], config["hidden_size"]
    depth = config["depth"]
    if side % p:
        raise ValueError(f"image_size {side} is not a multiple of the patch size {p}.")
    n = (side // p) ** 2
    ffn = swiglu_hidden_size(h, float(config.get("mlp_ratio", 4.0)))
    context = int(config.get("in_context_len", 0))
    start = int(config.get("in_context_start", 0))
    uses_context = context > 0 and start < depth

    if config.get("use_bottleneck", True):
        bottleneck = config.get("bottleneck_dim", 128)
        patch_first, patch_rest = _mm(n, p * p * c, bottleneck), _mm(n, bottleneck, h)
    else:
        patch_first, patch_rest = _mm(n, p * p * c, h), 0.0
    time_first, time_rest = _mm(1, 256, h), _mm(1, h, h)

    def block(tokens: int) -> float:
        qkv, proj = _mm(tokens, h, 3 * h), _mm(tokens, h, h)
        attention = 2 * FLOPS_PER_MAC * tokens * tokens * h  # q·kᵀ and p·v over all heads
        mlp = _mm(tokens, h, 2 * ffn) + _mm(tokens, ffn, h)
        return qkv + attention + proj + mlp + _mm(1, h, 6 * h)  # + adaLN modulation

    blocks = sum(block(n + context if uses_context and i >= start else n) for i in range(depth))
    final = _mm(1, h, 2 * h) + _mm(n, h, p * p * c)
    forward = patch_first + patch_rest + time_first + time_rest + blocks + final
    # Every product gets a grad-input and a grad-weight product, except the two whose input is data
    # (the first patch convolution and the first timestep layer): weight gradient only.
    backward = 2 * forward - patch_first - time_first
    return Flops(forward * batch, backward * batch)


def dinov2_flops(
    name: str = "dinov2_vitb14",
    *,
    image_size: int = 256,
    base_patch_size: int = 16,
    batch: int = 1,
    depth_used: int | None = None,
    input_grad: bool = False,
    dims: tuple[int, int, int] | None = None,
) -> Flops:
    """FLOPs of the frozen DINOv2 encoder on ``batch`` images of side ``image_size`` (resized to ``14·S/base``).

    ``depth_used``: blocks run (PixelGen uses the last one, so all). ``input_grad``: gradients flow to the
    input (P-DINO on x̂): every product gets its grad-input product, none a grad-weight product.
    ``dims``: (embed_dim, depth, heads) for a custom (e.g. tiny test) model instead of ``name``'s.
    """
    if dims is None:
        if name not in DINOV2_DIMS:
            raise KeyError(f"No FLOP formula for '{name}'; known: {', '.join(DINOV2_DIMS)} (ViT-g has a gated MLP).")
        dims = DINOV2_DIMS[name]
    dim, depth, _ = dims
    batch = _positive_int(batch, "batch")
    side = int(14 * _positive_int(image_size, "image_size") / _positive_int(base_patch_size, "base_patch_size"))
    patches = (side // 14) ** 2
    tokens = patches + 1  # + the class token
    used = depth if depth_used is None else _positive_int(depth_used, "depth_used")
    patch_embed = _mm(patches, 3 * 14 * 14, dim)
    attention = 2 * FLOPS_PER_MAC * tokens * tokens * dim
    per_block = (
        _mm(tokens, dim, 3 * dim)
        + attention
        + _mm(tokens, dim, dim)
        + _mm(tokens, dim, 4 * dim)
        + _mm(tokens, 4 * dim, dim)
    )
    forward = patch_embed + used * per_block
    backward = forward + used * attention if input_grad else 0.0  # attention backward is 4 products, not 2
    return Flops(forward * batch, backward * batch)


def _vgg16_forward(side: int) -> tuple[float, float]:
    """(trunk convolutions, LPIPS linear heads) FLOPs of one image through LPIPS-VGG."""
    trunk = heads = 0.0
    h = w = side
    for stage, convs in enumerate(_VGG16_STAGES):
        if stage:
            h, w = h // 2, w // 2  # 2x2 max-pool, stride 2, floor
        for c_in, c_out in convs:
            trunk += _mm(h * w, 9 * c_in, c_out)
        heads += _mm(h * w, convs[-1][1], 1)  # 1x1 head on the squared feature difference
    return trunk, heads


def lpips_vgg_flops(*, image_size: int = 256, batch: int = 1, pred_grad: bool = True) -> Flops:
    """FLOPs of LPIPS-VGG on ``batch`` (prediction, target) pairs: both images through the trunk, heads once.

    ``pred_grad``: gradients flow back to the prediction (the LPIPS loss): grad-input products of the
    prediction's trunk and of the heads; the frozen weights get none.
    """
    trunk, heads = _vgg16_forward(_positive_int(image_size, "image_size"))
    batch = _positive_int(batch, "batch")
    return Flops((2 * trunk + heads) * batch, (trunk + heads) * batch if pred_grad else 0.0)


def repa_projector_flops(*, tokens: int, hidden_size: int, encoder_dim: int, batch: int = 1) -> Flops:
    """The REPA projector Linear(H,H)-SiLU-Linear(H,H)-SiLU-Linear(H,D) on ``tokens`` per image (trainable)."""
    forward = _mm(tokens, hidden_size, hidden_size) * 2 + _mm(tokens, hidden_size, encoder_dim)
    return Flops(forward * batch, 2 * forward * batch)


def gate_probability(threshold: float = 0.3, *, p_mean: float = -0.8, p_std: float = 0.8) -> float:
    """P(t ≥ threshold) for the logit-normal training times ``t = sigmoid(p_std·n + p_mean)`` (0.524 for PixelGen)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}.")
    z = (math.log(threshold / (1.0 - threshold)) - p_mean) / p_std
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def training_step_flops(
    config: Mapping[str, Any],
    *,
    batch: int,
    perceptual: bool = True,
    gated: float | None = None,
    pdino_samples: float | None = None,
    dinov2: str = "dinov2_vitb14",
    dinov2_dims: tuple[int, int, int] | None = None,
    image_size: int | None = None,
) -> dict[str, Flops]:
    """FLOPs of one PixelGen training step, per part (``"backbone"``, ``"repa"``, ``"dinov2_clean"``, ``"pdino"``,
    ``"lpips"``) and ``"total"``.

    ``perceptual=False``: flow matching + REPA only. ``gated``: samples that pass the noise gate (LPIPS runs
    on them only, the objective's ``gating_compute="subset"``); default: the expected number,
    ``batch·gate_probability()``. ``pdino_samples``: samples P-DINO runs on; default ``batch`` (the
    default gating applies P-DINO to the whole batch as soon as one sample passes the gate).
    """
    side = int(config["input_size"] if image_size is None else image_size)
    n = (side // config["patch_size"]) ** 2
    dims = dinov2_dims or DINOV2_DIMS[dinov2]
    parts = {
        "backbone": jit_flops(config, batch=batch, image_size=side),
        "repa": repa_projector_flops(tokens=n, hidden_size=config["hidden_size"], encoder_dim=dims[0], batch=batch),
        "dinov2_clean": dinov2_flops(
            dinov2, image_size=side, base_patch_size=config["patch_size"], batch=batch, dims=dims
        ),
    }
    if perceptual:
        gated = batch * gate_probability() if gated is None else gated
        pdino_samples = batch if pdino_samples is None else pdino_samples
        per_image_dino = dinov2_flops(
            dinov2, image_size=side, base_patch_size=config["patch_size"], input_grad=True, dims=dims
        )
        parts["pdino"] = per_image_dino * pdino_samples
        parts["lpips"] = lpips_vgg_flops(image_size=side) * gated
    parts["total"] = sum(parts.values(), Flops(0.0))
    return parts
