"""The analytic FLOP counts (pixelgen.utils.flops) equal what torch's FlopCounterMode counts on the real networks.

Full-size networks run on the meta device (shapes only, no arithmetic), so the XL backbone, DINOv2-B and
LPIPS-VGG are checked at 256 px in a fraction of a second each; a tiny objective is checked end to end on CPU.
Attention runs through explicit matrix products (backend "math", timm's non-fused path), which the counter
sees as four backward products, the convention of the analytic count.
"""

from __future__ import annotations

import pytest
import torch
from loss_helpers import TINY_DINO, images
from torch.utils.flop_counter import FlopCounterMode

from pixelgen import build_model
from pixelgen.encoders import build_encoder
from pixelgen.losses import build_objective
from pixelgen.utils.flops import (
    FLOPS_PER_MAC,
    dinov2_flops,
    gate_probability,
    jit_flops,
    lpips_vgg_flops,
    training_step_flops,
)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _unfuse(dino) -> None:
    for block in dino.backbone.blocks:
        block.attn.fused_attn = False


@pytest.fixture(scope="module")
def meta_inputs():
    b = 2
    x = torch.randn(b, 3, 256, 256, device="meta")
    return x, torch.rand(b, device="meta"), torch.zeros(b, dtype=torch.long, device="meta")


@pytest.mark.parametrize("name", ["pixelgen_xl_16", "jit_b_16"])  # no bottleneck / bottleneck
def test_backbone_count_at_full_size(name, meta_inputs):
    model = build_model(name, device="meta")
    model.check_inputs, model.attention_backend = False, "math"
    x, t, y = meta_inputs
    expected = jit_flops(model.config, batch=2)
    assert counted(lambda: model(x, t, y)) == expected.forward
    assert counted(lambda: model(x, t, y).sum().backward()) == expected.total


def test_xl_numbers_and_convention():
    xl = build_model("pixelgen_xl_16", device="meta").config
    assert FLOPS_PER_MAC == 2
    assert jit_flops(xl).forward == pytest.approx(260.1e9, rel=1e-4)
    step = training_step_flops(xl, batch=32)
    # the original's figure, about 1.04 TFLOP per image, is this count with LPIPS run on every sample (it masks
    # the loss, not the compute)
    original = step["total"].total - step["lpips"].total + lpips_vgg_flops().total * 32
    assert original / 32 == pytest.approx(1.04e12, rel=0.01)
    assert gate_probability() == pytest.approx(0.524, abs=1e-3)
    assert training_step_flops(xl, batch=32, perceptual=False)["total"].total < step["total"].total


def test_dinov2_and_lpips_counts_at_full_size(meta_inputs):
    x = meta_inputs[0]
    with torch.device("meta"):
        dino = build_encoder("dinov2_vitb14", "random").to("meta")
        lpips = build_encoder("lpips", "random", net="vgg").to("meta")  # the package makes some buffers on CPU
    _unfuse(dino)
    assert counted(lambda: dino(x, check_range=False)) == dinov2_flops(batch=2).forward
    x_grad = x.clone().requires_grad_()
    assert (
        counted(lambda: dino(x_grad, check_range=False).sum().backward())
        == dinov2_flops(batch=2, input_grad=True).total
    )
    assert counted(lambda: lpips(x, x, check_range=False)) == lpips_vgg_flops(batch=2, pred_grad=False).total
    assert counted(lambda: lpips(x_grad, x, check_range=False).sum().backward()) == lpips_vgg_flops(batch=2).total


def test_tiny_training_step_count_end_to_end():
    """The objective's real work on CPU (gated LPIPS subset, P-DINO on all, shared clean DINOv2 pass)."""
    torch.manual_seed(0)
    model = build_model(
        "jit",
        input_size=32,
        patch_size=16,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        bottleneck_dim=8,
        in_context_len=2,
        in_context_start=1,
        attention_backend="math",
    )
    dino = build_encoder("dinov2_vitb14", "random", model_overrides=TINY_DINO)
    _unfuse(dino)
    lpips = build_encoder("lpips", "random", net="vgg")
    objective = build_objective(hidden_size=32, encoders={"dinov2": dino, "lpips": lpips}, align_layer=1)
    image, raw = images(batch=4)
    t = torch.tensor([0.1, 0.5, 0.2, 0.9])  # two samples pass the 0.3 gate
    noise, cond = torch.randn_like(image), torch.tensor([0, 1, 2, 10])

    def step():
        objective.evaluate(model, image, raw, cond, t, noise)["loss"].backward()

    dims = (TINY_DINO["embed_dim"], TINY_DINO["depth"], TINY_DINO["num_heads"])
    expected = training_step_flops(model.config, batch=4, gated=2, pdino_samples=4, dinov2_dims=dims)
    assert counted(step) == expected["total"].total


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        jit_flops(
            dict(input_size=256, patch_size=16, in_channels=3, hidden_size=64, depth=1, num_heads=1), image_size=250
        )
    with pytest.raises(KeyError, match="lacks"):
        jit_flops({"input_size": 256})
    with pytest.raises(KeyError, match="ViT-g"):
        dinov2_flops("dinov2_vitg14")
    with pytest.raises(ValueError, match="threshold"):
        gate_probability(1.5)
