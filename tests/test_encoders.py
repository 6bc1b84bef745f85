"""Frozen encoders: DINOv2 (timm) and LPIPS — preprocessing, frozen state, weight formats and resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import TINY_DINO, tiny_dino, tiny_lpips

from pixelgen.encoders import DINOv2Encoder, LPIPSEncoder, build_encoder, convert_dinov2_state_dict
from pixelgen.encoders.base import check_pixel_ranges
from pixelgen.utils.hub import WeightsNotFoundError
from pixelgen.utils.io import save_safetensors


@pytest.fixture(scope="module")
def dino():
    return tiny_dino()


@pytest.fixture(scope="module")
def squeeze():
    return tiny_lpips("squeeze")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """TORCH_HOME and the HF cache point at empty folders; returns (torch hub checkpoint dir, HF cache dir)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "hf"


def _to_original_format(state: dict, chunks: bool = False, fused_swiglu: bool = False) -> dict:
    """timm DINOv2 keys -> the facebookresearch checkpoint layout (the inverse of what the loader converts)."""
    out = {"mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    for key, value in state.items():
        if chunks and key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i // 2}.{i}." + key.split(".", 2)[2]  # chunks of 2 blocks, global index inside
        if fused_swiglu:
            key = key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value.clone()
    return out


# -- DINOv2 ---------------------------------------------------------------------------------------------
def test_dinov2_is_frozen_and_passes_gradients_to_its_input(dino):
    dino.train()
    assert not dino.training and not any(m.training for m in dino.modules())
    assert all(not p.requires_grad for p in dino.parameters())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    dino(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in dino.parameters())


@pytest.mark.parametrize("size, side, tokens", [(256, 224, 256), (512, 448, 1024), (64, 56, 16), (32, 28, 4)])
def test_dinov2_resizes_by_14_16_so_token_grids_match(dino, size, side, tokens):
    assert dino.input_side(size) == side and dino.num_tokens(size) == tokens
    if size <= 64:
        out = dino(torch.rand(1, 3, size, size))
        assert out.shape == (1, tokens, TINY_DINO["embed_dim"]) and out.dtype == torch.float32


def test_dinov2_preprocessing_is_imagenet_normalisation_then_bicubic(dino):
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.interpolate((x - mean) / std, size=(56, 56), mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(dino.preprocess(x), expected)


def test_dinov2_matches_timm_when_no_position_interpolation_is_needed():
    enc = tiny_dino(model_overrides={"img_size": 56})  # 4x4 table = the grid of 64 px images
    x = torch.rand(2, 3, 64, 64)
    timm_tokens = enc.backbone.forward_features(enc.preprocess(x))[:, 1:]  # timm's own path (normed, CLS dropped)
    torch.testing.assert_close(enc(x), timm_tokens)


def test_dinov2_position_interpolation_keeps_a_constant_table_constant(dino):
    with torch.no_grad():
        saved = dino.backbone.pos_embed.clone()
        dino.backbone.pos_embed.fill_(0.25)
        table = dino._pos_embed(4, 4)
        dino.backbone.pos_embed.copy_(saved)
    assert table.shape == (1, 17, TINY_DINO["embed_dim"])
    torch.testing.assert_close(table, torch.full_like(table, 0.25))


def test_dinov2_layers_are_normed_block_outputs_averaged(dino):
    x = torch.rand(2, 3, 32, 32)
    first, last = dino(x, layers=[0]), dino(x, layers=[-1])
    assert not torch.allclose(first, last)
    torch.testing.assert_close(dino(x, layers=[0, 1]), (first + last) / 2)
    torch.testing.assert_close(dino(x), last)  # default: the final block
    with pytest.raises(ValueError, match="block indices"):
        dino(x, layers=[5])


def test_dinov2_dtype_and_device_are_choosable():
    enc = tiny_dino(dtype="bfloat16", device="cpu")
    assert enc.dtype == torch.bfloat16 and enc.device.type == "cpu"
    out = enc(torch.rand(1, 3, 32, 32))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("size, match", [(8, "smaller than its patch size"), (40, "not a multiple of its patch size")])
def test_dinov2_rejects_unusable_image_sizes(dino, size, match):
    with pytest.raises(ValueError, match=match):
        dino(torch.rand(1, 3, size, size))


def test_dinov2_rejects_range_mixups(dino):
    with pytest.raises(ValueError, match=r"\[-1, 1\] image"):
        dino(torch.rand(1, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match="0-255"):
        dino(torch.rand(1, 3, 32, 32) * 255)
    dino((torch.rand(1, 3, 32, 32) * 2 - 1) * 1.1 / 2 + 0.5, check_range=False)  # predictions: unchecked


def test_pixel_ranges_are_checked_together_and_the_failing_one_is_named():
    image, raw = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8)
    ok = [(image, "The image", (-1.0, 1.0)), (raw.double(), "The raw image", (0.0, 1.0))]
    check_pixel_ranges(ok)
    check_pixel_ranges([(image.bfloat16() * 1.4, "A prediction", (-1.0, 1.0))])  # excursions within the margin pass
    with pytest.raises(ValueError, match=r"^The raw image must hold values in \[0, 1\].*\[-1, 1\] image where"):
        check_pixel_ranges([ok[0], (image, "The raw image", (0.0, 1.0))])
    with pytest.raises(ValueError, match="The image must hold values"):
        check_pixel_ranges([(torch.full((1, 3, 2, 2), float("nan")), "The image", (-1.0, 1.0))])


@pytest.mark.parametrize("variant, chunks, fused", [("dinov2_vitb14", True, False), ("dinov2_vitg14", False, True)])
def test_original_format_dinov2_checkpoint_loads_into_the_same_outputs(tmp_path, variant, chunks, fused):
    enc = tiny_dino(variant)
    path = tmp_path / f"{variant}_pretrain.pth"
    original = _to_original_format(enc.backbone.state_dict(), chunks=chunks, fused_swiglu=fused)
    assert "mask_token" in original and any(".w12." in k for k in original) == fused
    torch.save(original, path)
    loaded = build_encoder(variant, path, model_overrides=TINY_DINO)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), enc(x), rtol=0, atol=0)


def test_convert_passes_timm_keys_through(dino):
    state = dino.backbone.state_dict()
    assert convert_dinov2_state_dict(state).keys() == state.keys()


def test_dinov2_weights_that_do_not_fit_fail_clearly(tmp_path, dino):
    path = tmp_path / "other.pth"
    torch.save({k: v for k, v in dino.backbone.state_dict().items() if k != "norm.weight"}, path)
    with pytest.raises(ValueError, match=r"do not fit dinov2_vitb14 \(missing: norm.weight"):
        build_encoder("dinov2_vitb14", path, model_overrides=TINY_DINO)


def test_dinov2_weights_resolve_from_path_torch_hub_cache_and_hf_cache(tmp_path, empty_caches, dino):
    hub_dir, hf_dir = empty_caches
    x = torch.rand(1, 3, 32, 32)
    expected = dino(x)
    state = dino.backbone.state_dict()

    explicit = tmp_path / "mine.safetensors"
    save_safetensors(state, explicit)
    torch.testing.assert_close(build_encoder("dinov2_vitb14", explicit, model_overrides=TINY_DINO)(x), expected)

    snapshot = hf_dir / "models--timm--vit_base_patch14_dinov2.lvd142m" / "snapshots" / "0123abc"
    save_safetensors(state, snapshot / "model.safetensors")
    (hf_dir / "models--timm--vit_base_patch14_dinov2.lvd142m" / "refs").mkdir(parents=True)
    (hf_dir / "models--timm--vit_base_patch14_dinov2.lvd142m" / "refs" / "main").write_text("0123abc")
    torch.testing.assert_close(build_encoder("dinov2_vitb14", model_overrides=TINY_DINO)(x), expected)

    hub_dir.mkdir(parents=True)  # the torch hub file wins over the HF cache
    torch.save(_to_original_format(state), hub_dir / "dinov2_vitb14_pretrain.pth")
    with torch.no_grad():
        snapshot_state = {k: v + 1 for k, v in state.items()}
    save_safetensors(snapshot_state, snapshot / "model.safetensors")
    torch.testing.assert_close(build_encoder("dinov2_vitb14", model_overrides=TINY_DINO)(x), expected)


@pytest.mark.parametrize(
    "name, options, filename",
    [
        ("dinov2_vitb14", {}, "dinov2_vitb14_pretrain.pth"),
        ("dinov2_vitl14", {}, "dinov2_vitl14_pretrain.pth"),
        ("lpips", {}, "vgg16-397923af.pth"),
        ("lpips", {"net": "alex"}, "alexnet-owt-7be5be79.pth"),
    ],
)
def test_missing_weights_offline_fail_fast_naming_the_file(empty_caches, monkeypatch, name, options, filename):
    import lpips
    import timm

    def built(*args, **kwargs):
        raise AssertionError("the network was built before its weights were found")

    monkeypatch.setattr(timm, "create_model", built)  # fail fast: resolve the weights before building anything
    monkeypatch.setattr(lpips, "LPIPS", built)
    with pytest.raises(WeightsNotFoundError) as info:
        build_encoder(name, **options)
    assert filename in str(info.value) and "weights=<path>" in str(info.value)


def test_random_weights_only_by_name(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_encoder("dinov2_vitb14", "rand", model_overrides=TINY_DINO)
    with pytest.raises(TypeError, match="weights must be None, 'random' or a file path"):
        build_encoder("dinov2_vitb14", 3, model_overrides=TINY_DINO)


def test_unknown_encoder_names_suggest_close_matches():
    with pytest.raises(KeyError, match="dinov2_vitb14"):
        build_encoder("dinov2_vitb16")


# -- LPIPS ----------------------------------------------------------------------------------------------
def test_lpips_is_frozen_per_sample_and_zero_on_identical_images(squeeze):
    squeeze.train()
    assert not any(m.training for m in squeeze.modules())  # dropout in the heads never fires
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    pred = a.clone().requires_grad_(True)
    dist = squeeze(pred, b)
    assert dist.shape == (3,) and (dist > 0).all()
    torch.testing.assert_close(squeeze(a, a), torch.zeros(3))
    torch.testing.assert_close(squeeze(pred, b), dist)  # deterministic: eval mode
    dist.sum().backward()
    assert pred.grad.abs().sum() > 0 and all(p.grad is None for p in squeeze.parameters())


def test_lpips_heads_come_from_the_package(squeeze):
    import os

    import lpips

    heads = torch.load(
        os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "squeeze.pth"),
        map_location="cpu",
        weights_only=True,
    )
    own = squeeze.metric.state_dict()
    for key, value in heads.items():
        torch.testing.assert_close(own[key], value)


def _torchvision_layout(encoder: LPIPSEncoder, offset: float = 0.0) -> dict:
    """A torchvision-style `features.<i>.*` file made from an LPIPS trunk (what vgg16-397923af.pth holds)."""
    return {f"features.{k.split('.', 1)[1]}": v + offset for k, v in encoder.metric.net.state_dict().items()}


def test_lpips_trunk_weights_resolve_from_torch_hub_cache_and_path(tmp_path, empty_caches, squeeze):
    hub_dir, _ = empty_caches
    hub_dir.mkdir(parents=True)
    torch.save(_torchvision_layout(squeeze, 0.01), hub_dir / "squeezenet1_1-b8a52dc0.pth")
    from_cache = build_encoder("lpips", net="squeeze")
    explicit = tmp_path / "trunk.pth"
    torch.save(_torchvision_layout(squeeze, 0.01), explicit)
    from_path = build_encoder("lpips", explicit, net="squeeze")
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(from_cache(a, b), from_path(a, b))
    assert not torch.allclose(from_cache(a, b), squeeze(a, b))
    for key, value in squeeze.metric.net.state_dict().items():
        torch.testing.assert_close(from_cache.metric.net.state_dict()[key], value + 0.01)


def test_lpips_trunk_file_of_the_wrong_network_fails_clearly(tmp_path, squeeze):
    path = tmp_path / "alexnet.pth"
    torch.save(_torchvision_layout(squeeze), path)
    with pytest.raises(ValueError, match="do not fit the LPIPS alex trunk"):
        build_encoder("lpips", path, net="alex")


def test_lpips_vgg_default_builds_with_random_trunk():
    vgg = tiny_lpips("vgg")
    assert vgg.net == "vgg" and isinstance(vgg, LPIPSEncoder)
    assert vgg(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)).item() == 0.0


def test_lpips_input_checks(squeeze):
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="at least 17 px"):
        squeeze(a[..., :16, :16], a[..., :16, :16])
    with pytest.raises(ValueError, match="same shape"):
        squeeze(a, a[..., :24, :24])
    with pytest.raises(ValueError, match="0-255"):
        squeeze(a, (a + 1) * 127.5)


@settings(max_examples=10, deadline=None)
@given(st.floats(0.0, 0.2), st.integers(0, 2**16))
def test_lpips_grows_with_the_perturbation(squeeze, scale, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(1, 3, 32, 32, generator=g)
    small, big = squeeze(a + scale * noise, a), squeeze(a + (scale + 0.2) * noise, a)
    assert (small <= big + 1e-6).all()


def test_dinov2_module_is_a_frozen_encoder(dino):
    assert isinstance(dino, DINOv2Encoder) and dino.embed_dim == TINY_DINO["embed_dim"] and dino.depth == 2
