"""Both JiT backbones: parity with the original code, preset sizes, properties, input checks."""

import pytest
import torch
from conftest import TINY_BACKBONES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelgen import build_model, list_models
from pixelgen.backbones import JiT, JiTT2I
from pixelgen.nn import sincos_2d_table

BACKBONE_CASES = ["c2i_bottleneck", "c2i_plain_no_context", "t2i_small"]


def _randomize(model, std=0.2, seed=0):
    """Random values in every trainable tensor (the zero-initialised layers too), so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


# -- parity with the original implementation --------------------------------------------------------------


@pytest.mark.parametrize("case", BACKBONE_CASES)
def test_golden_parity(golden, case):
    tensors, meta = golden
    info = meta[case]
    assert info["kind"] in ("c2i", "t2i")
    model = build_model("jit" if info["kind"] == "c2i" else "jit_t2i", **info["config"]).eval()
    state = {k.split("/state/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{case}/state/")}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        x_hat, feature = model(
            tensors[f"{case}/in/x"], tensors[f"{case}/in/t"], tensors[f"{case}/in/y"], return_layer=info["return_layer"]
        )
    assert (x_hat - tensors[f"{case}/out/x_hat"]).abs().max().item() <= 1e-5
    assert (feature - tensors[f"{case}/out/feature"]).abs().max().item() <= 1e-5
    for backend in ("sdpa", "math"):
        model.attention_backend = backend
        with torch.no_grad():
            again = model(tensors[f"{case}/in/x"], tensors[f"{case}/in/t"], tensors[f"{case}/in/y"])
        assert (again - tensors[f"{case}/out/x_hat"]).abs().max().item() <= 1e-5


# -- presets ------------------------------------------------------------------------------------------------

GOLDEN_PRESETS = {
    "B/16": [("jit_b_16", {})],
    "L/16": [("jit_l_16", {}), ("pixelgen_l_16", {})],
    "H/16": [("jit_h_16", {})],
    "XL/16 (PixelGen config)": [("pixelgen_xl_16", {})],
    "XXL/16 T2I @256": [("pixelgen_xxl_16_t2i", {})],
    "XXL/16 T2I @512": [("pixelgen_xxl_16_t2i", {"input_size": 512})],
}


def _counts(model):
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@pytest.mark.parametrize("golden_name", list(GOLDEN_PRESETS))
def test_preset_parameter_counts_equal_golden(golden, golden_name):
    expected = golden[1]["_param_counts"][golden_name]
    for name, overrides in GOLDEN_PRESETS[golden_name]:
        model = build_model(name, device="meta", **overrides)
        assert next(model.parameters()).is_meta
        assert _counts(model) == (expected["trainable"], expected["all_parameters"]), name


@pytest.mark.parametrize("name,millions", [("jit_b_32", 133.19), ("jit_l_32", 461.53), ("jit_h_32", 956.06)])
def test_patch32_presets_match_spec_table(name, millions):
    trainable, _ = _counts(build_model(name, device="meta"))
    assert round(trainable / 1e6, 2) == millions


def test_xl_preset_has_no_bottleneck_and_middle_dropout():
    model = build_model("pixelgen_xl_16", device="meta")
    assert model.x_embedder.proj2 is None and model.x_embedder.proj1.bias is not None
    drops = [block.mlp.drop.p for block in model.blocks]
    assert drops == [0.1 if 7 <= i < 21 else 0.0 for i in range(28)]  # depth//4 <= i < 3*depth//4
    assert [b.attn.proj_drop.p for b in model.blocks] == drops


def test_every_builtin_is_listed_and_presets_take_overrides():
    expected = {
        "jit",
        "jit_t2i",
        "jit_b_16",
        "jit_b_32",
        "jit_l_16",
        "jit_l_32",
        "jit_h_16",
        "jit_h_32",
        "pixelgen_l_16",
        "pixelgen_xl_16",
        "pixelgen_xxl_16_t2i",
    }
    assert expected <= set(list_models())
    assert list_models("pixelgen_*") == ["pixelgen_l_16", "pixelgen_xl_16", "pixelgen_xxl_16_t2i"]
    model = build_model("pixelgen_xl_16", device="meta", depth=2, proj_drop=0.0)
    assert model.config["depth"] == 2 and model.config["hidden_size"] == 1152 and model.config["proj_drop"] == 0.0


def test_build_errors_are_one_sentence():
    with pytest.raises(KeyError, match="did you mean 'jit_l_16'"):
        build_model("jit_l16")
    with pytest.raises(TypeError, match="Unknown argument\\(s\\) widht for backbone 'jit'"):
        build_model("jit_b_16", device="meta", widht=3)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build_model("jit", device="meta", hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model("jit_t2i", device="meta", input_size=30, patch_size=8)


def test_contract_attributes_and_config_round_trip():
    c2i = build_model("jit_b_16", device="meta")
    assert (
        c2i.arch,
        c2i.cond_kind,
        c2i.input_size,
        c2i.patch_size,
        c2i.hidden_size,
        c2i.in_channels,
        c2i.num_classes,
    ) == ("jit", "class", 256, 16, 768, 3, 1000)
    t2i = build_model("pixelgen_xxl_16_t2i", device="meta")
    assert (t2i.arch, t2i.cond_kind, t2i.txt_embed_dim, t2i.txt_max_length) == ("jit_t2i", "text", 2048, 128)
    for model in (c2i, t2i):
        rebuilt = build_model(model.arch, device="meta", **model.config)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
        assert model.final_layer.linear.weight is not None


def test_dtype_option_and_backend_setter():
    model = build_model("jit", dtype=torch.bfloat16, **TINY_C2I)
    assert model.t_embedder.mlp[0].weight.dtype == torch.bfloat16
    model.attention_backend = "math"
    assert {b.attn.attention_backend for b in model.blocks} == {"math"}
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        model.attention_backend = "flash"


@pytest.mark.parametrize("name,config", [("jit", "TINY_C2I"), ("jit_t2i", "TINY_T2I")])
def test_models_cast_to_another_dtype_run_in_it(name, config):
    """A model cast as a whole (bf16 inference, float64 checks) runs without autocast and agrees with float32."""
    model = _randomize(build_model(name, **globals()[config]), std=0.05).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    y = torch.tensor([0, 5]) if name == "jit" else torch.randn(2, 5, 12)
    cast = lambda v, dt: v.to(dt) if v.is_floating_point() else v  # noqa: E731
    with torch.no_grad():
        ref = model(x, t, y)
        for dtype, tol in ((torch.float64, 1e-5), (torch.bfloat16, 0.1)):
            out = model.to(dtype)(cast(x, dtype), cast(t, dtype), cast(y, dtype))
            assert out.dtype == dtype
            assert (out.float() - ref).abs().max().item() <= tol
            model.float()


# -- properties ------------------------------------------------------------------------------------------------

TINY_C2I = dict(TINY_BACKBONES["jit"])
TINY_T2I = dict(TINY_BACKBONES["jit_t2i"])


@st.composite
def c2i_cases(draw):
    heads, head_dim, patch = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 12])), draw(st.sampled_from([2, 4]))
    depth = draw(st.integers(1, 4))
    config = dict(
        input_size=patch * draw(st.integers(1, 4)),
        patch_size=patch,
        hidden_size=heads * head_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])),
        num_classes=draw(st.integers(1, 5)),
        use_bottleneck=draw(st.booleans()),
        bottleneck_dim=draw(st.sampled_from([4, 8])),
        in_context_len=draw(st.integers(0, 3)),
        in_context_start=draw(st.integers(0, depth)),
    )
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))  # run-time grid, may differ from input_size
    return config, grid, draw(st.integers(1, 2)), draw(st.integers(0, depth))


@st.composite
def t2i_cases(draw):
    heads, head_dim, patch = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8])), draw(st.sampled_from([2, 4]))
    blocks = draw(st.integers(1, 3))
    config = dict(
        input_size=patch * draw(st.integers(1, 4)),
        patch_size=patch,
        hidden_size=heads * head_dim,
        num_blocks=blocks,
        num_text_blocks=draw(st.integers(0, 2)),
        num_groups=heads,
        txt_embed_dim=draw(st.integers(1, 9)),
        txt_max_length=draw(st.integers(1, 6)),
        bottleneck_dim=draw(st.sampled_from([4, 8])),
    )
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return config, grid, draw(st.integers(1, 2)), draw(st.integers(0, blocks))


def _c2i_inputs(model, grid, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, grid[0] * model.patch_size, grid[1] * model.patch_size, generator=gen)
    y = torch.randint(0, model.num_classes + 1, (batch,), generator=gen)
    return x, torch.rand(batch, generator=gen), y


def _t2i_inputs(model, grid, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, grid[0] * model.patch_size, grid[1] * model.patch_size, generator=gen)
    y = torch.randn(batch, model.txt_max_length, model.txt_embed_dim, generator=gen)
    return x, torch.rand(batch, generator=gen), y


def _check_properties(model, inputs, return_layer):
    x = inputs[0]
    with torch.no_grad():
        out, feature = model(*inputs, return_layer=return_layer)
        assert out.shape == x.shape
        assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layers
        assert feature.shape == (
            x.shape[0],
            (x.shape[2] // model.patch_size) * (x.shape[3] // model.patch_size),
            model.hidden_size,
        )
        _randomize(model)
        model.attention_backend = "sdpa"
        sdpa = model(*inputs)
        model.attention_backend = "math"
        math_ = model(*inputs)
        model.attention_backend = "xformers"  # not usable on CPU: falls back to SDPA
        fallback = model(*inputs)
    assert sdpa.shape == x.shape and torch.isfinite(sdpa).all()
    torch.testing.assert_close(sdpa, math_, rtol=1e-4, atol=1e-5)
    assert torch.equal(sdpa, fallback)


@given(c2i_cases())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_c2i_properties(case):
    config, grid, batch, return_layer = case
    model = build_model("jit", **config).eval()
    _check_properties(model, _c2i_inputs(model, grid, batch), return_layer)


@given(t2i_cases())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_t2i_properties(case):
    config, grid, batch, return_layer = case
    model = build_model("jit_t2i", **config).eval()
    _check_properties(model, _t2i_inputs(model, grid, batch), return_layer)


def test_return_layer_is_the_input_of_that_block():
    model = _randomize(build_model("jit", **TINY_C2I)).eval()
    x, t, y = _c2i_inputs(model, (4, 4), 2)
    outputs = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: outputs.append(out))
    with torch.no_grad():
        plain = model(x, t, y)
        out0, f0 = model(x, t, y, return_layer=0)
        _, f1 = model(x, t, y, return_layer=1)  # = in_context_start: captured before the label tokens join
        _, f2 = model(x, t, y, return_layer=2)
        _, f3 = model(x, t, y, return_layer=3)  # = depth: after the last block
    assert torch.equal(out0, plain)
    per_call = [outputs[i : i + 3] for i in range(0, len(outputs), 3)]
    assert f0.shape == f1.shape == f2.shape == f3.shape == (2, 16, 32)
    torch.testing.assert_close(f1, per_call[2][0])
    torch.testing.assert_close(f2, per_call[3][1][:, 2:])  # in-context tokens stripped
    torch.testing.assert_close(f3, per_call[4][2][:, 2:])
    with pytest.raises(ValueError, match="return_layer must be an integer block index in \\[0, 3\\]"):
        model(x, t, y, return_layer=4)


def test_other_resolutions_regenerate_the_table_exactly():
    small = _randomize(build_model("jit", **TINY_C2I)).eval()
    assert small.position_table(4, 4) is small.pos_embed  # the training grid uses the stored table as is
    torch.testing.assert_close(small.position_table(3, 5)[0], sincos_2d_table(32, 3, 5), rtol=0, atol=0)
    big = build_model("jit", **{**TINY_C2I, "input_size": 24})
    big.load_state_dict(small.state_dict(), strict=True)  # pos_embed for 4x4 is replaced by the 6x6 table
    x, t, y = _c2i_inputs(small, (6, 6), 2)
    with torch.no_grad():
        assert torch.equal(small(x, t, y), big.eval()(x, t, y))

    small_t = _randomize(build_model("jit_t2i", **TINY_T2I)).eval()
    big_t = build_model("jit_t2i", **{**TINY_T2I, "input_size": 32})
    big_t.load_state_dict(small_t.state_dict(), strict=True)
    x, t, y = _t2i_inputs(small_t, (8, 8), 2)
    with torch.no_grad():
        assert torch.equal(small_t(x, t, y), big_t.eval()(x, t, y))


def test_zero_init_of_a_real_preset_outputs_zero():
    model = build_model("jit_b_16", depth=2, hidden_size=96, num_heads=4, input_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.rand(1), torch.tensor([1000]))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.allclose(model.pos_embed[0], sincos_2d_table(96, 2, 2)) and not model.pos_embed.requires_grad


# -- text mask -----------------------------------------------------------------------------------------------


def test_text_mask_makes_padding_irrelevant():
    model = _randomize(build_model("jit_t2i", **TINY_T2I)).eval()
    x, t, y = _t2i_inputs(model, (4, 4), 2)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    y_other = y.clone()
    y_other[~mask] = torch.randn(int((~mask).sum()), y.shape[-1]) * 5
    with torch.no_grad():
        masked = model(x, t, y, text_mask=mask)
        masked_other = model(x, t, y_other, text_mask=mask)
        unmasked = model(x, t, y)
        unmasked_other = model(x, t, y_other)
        all_true = model(x, t, y, text_mask=torch.ones(2, 5, dtype=torch.bool))
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked, masked_other, rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked, unmasked_other, atol=1e-4)  # the original attends to padding
    torch.testing.assert_close(all_true, unmasked, rtol=1e-5, atol=1e-6)


# -- input checks -------------------------------------------------------------------------------------------


def test_c2i_input_checks():
    model = build_model("jit", **TINY_C2I)
    x, t, y = _c2i_inputs(model, (4, 4), 2)
    cases = [
        ((x[..., :15], t, y), "not a multiple of the patch size 4"),
        ((x[:, :2], t, y), "must have 3 channels"),
        ((x, t, torch.tensor([0, 6])), "class indices in \\[0, 5\\] \\(5 is the null class\\)"),
        ((x, t, torch.tensor([-1, 0])), "class indices"),
        ((x, t, y.float()), "y must be a \\(2,\\) tensor of integer class labels"),
        ((x, t, y[:1]), "y has 1 labels but the batch has 2 images"),
        ((x, torch.tensor([0.5, 1.5]), y), "t must lie in \\[0, 1\\]"),
        ((x, torch.tensor([0.5, float("nan")]), y), "t must lie in \\[0, 1\\]"),
        ((x, t[:1], y), "t must have shape \\(2,\\)"),
        ((x, t.long(), y), "t must be a floating-point tensor"),
    ]
    for args, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            model(*args)
    model.check_inputs = False  # compiled training: no checks, no host sync
    model(x, torch.tensor([0.5, 1.5]), y)


def test_t2i_input_checks():
    model = build_model("jit_t2i", **TINY_T2I)
    x, t, y = _t2i_inputs(model, (4, 4), 2)
    cases = [
        ((x, t, y[:, :4]), "must have shape \\(B, txt_max_length, txt_embed_dim\\) = \\(2, 5, 12\\)"),
        ((x, t, y.long()), "must be a floating-point tensor"),
        ((x[..., :14], t, y), "not a multiple of the patch size 4"),
        ((x, torch.tensor([-0.1, 0.2]), y), "t must lie in \\[0, 1\\]"),
    ]
    for args, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            model(*args)
    with pytest.raises(ValueError, match="text_mask must be a bool tensor of shape \\(2, 5\\)"):
        model(x, t, y, text_mask=torch.ones(2, 5))


def test_classes_are_exported():
    assert isinstance(build_model("jit", device="meta", **TINY_C2I), JiT)
    assert isinstance(build_model("jit_t2i", device="meta", **TINY_T2I), JiTT2I)


def test_values_checked_by_caller_skips_only_the_value_checks():
    from pixelgen.backbones import values_checked_by_caller

    model = build_model("jit", **TINY_C2I).eval()
    x, bad_t, y = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 1.5]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="t must lie in"):
        model(x, bad_t, y)
    with values_checked_by_caller():
        model(x, bad_t, y)  # the caller vouches for t and y: no value check, no host sync
        with pytest.raises(ValueError, match="channels"):
            model(torch.randn(2, 4, 16, 16), bad_t, y)  # shape checks still run
    with pytest.raises(ValueError, match="t must lie in"):
        model(x, bad_t, y)
