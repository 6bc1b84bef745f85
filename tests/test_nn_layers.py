"""Shared layers against their defining formulas."""

import logging
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelgen.nn import (
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    apply_rotary_pairs,
    attention,
    axial_rope_2d,
    linspace_rope_2d,
    sincos_2d_table,
    swiglu_hidden_size,
    timestep_features,
)
from pixelgen.nn import attention_backends as attention_module

# -- RMSNorm ------------------------------------------------------------------------------------------


def test_rmsnorm_matches_formula_with_weight():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)


def test_rmsnorm_keeps_float32_statistics_under_half_inputs():
    norm = RMSNorm(16)
    # fp16 squares of 400 overflow (160000 > 65504); float32 statistics do not.
    x16 = torch.full((2, 16), 400.0, dtype=torch.float16)
    out = norm(x16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.ones(2, 16), rtol=1e-3, atol=1e-3)
    xb = torch.randn(4, 16).to(torch.bfloat16)
    expected = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert norm(xb).dtype == torch.bfloat16
    assert torch.equal(norm(xb), expected)


def test_rmsnorm_rejects_wrong_width():
    with pytest.raises(ValueError, match="RMSNorm over 8 channels"):
        RMSNorm(8)(torch.randn(2, 7))


# -- SwiGLU -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,expected", [(768, 2048), (1024, 2730), (1152, 3072), (1280, 3413)])
def test_swiglu_two_thirds_rule(hidden, expected):
    assert swiglu_hidden_size(hidden, 4.0) == expected


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_matches_formula(bias):
    torch.manual_seed(1)
    layer = SwiGLU(6, 10, bias=bias)
    assert (layer.w12.bias is not None) == bias and (layer.w3.bias is not None) == bias
    assert layer.w12.weight.shape == (20, 6) and layer.w3.weight.shape == (6, 10)
    x = torch.randn(2, 3, 6)
    h = x @ layer.w12.weight.T + (layer.w12.bias if bias else 0)
    a, b = h[..., :10], h[..., 10:]
    expected = (a * torch.sigmoid(a) * b) @ layer.w3.weight.T + (layer.w3.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


# -- sin-cos table --------------------------------------------------------------------------------------


@given(dim=st.sampled_from([8, 16, 24, 64]), gh=st.integers(1, 6), gw=st.integers(1, 6), data=st.data())
@settings(max_examples=25, deadline=None)
def test_sincos_table_entries(dim, gh, gw, data):
    table = sincos_2d_table(dim, gh, gw)
    assert table.shape == (gh * gw, dim) and table.dtype == torch.float32
    r, c = data.draw(st.integers(0, gh - 1)), data.draw(st.integers(0, gw - 1))
    quarter = dim // 4
    k = data.draw(st.integers(0, quarter - 1))
    omega = 10000.0 ** (-k / quarter)
    row = table[r * gw + c]
    # first half encodes the column, second half the row; each half is [sin ..., cos ...]
    assert row[k].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
    assert row[quarter + k].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
    assert row[2 * quarter + k].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
    assert row[3 * quarter + k].item() == pytest.approx(math.cos(r * omega), abs=1e-6)


def test_sincos_table_rejects_bad_dim():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_table(10, 2)


# -- timestep embedding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_period", [10000.0, 10.0])
def test_timestep_features_cos_first(max_period):
    t = torch.tensor([0.0, 0.3, 1.0])
    feats = timestep_features(t, 256, max_period)
    assert feats.shape == (3, 256) and feats.dtype == torch.float32
    for k in (0, 5, 127):
        f = math.exp(-math.log(max_period) * k / 128)
        assert feats[1, k].item() == pytest.approx(math.cos(0.3 * f), abs=1e-6)
        assert feats[1, 128 + k].item() == pytest.approx(math.sin(0.3 * f), abs=1e-6)
    assert torch.equal(feats[0, :128], torch.ones(128)) and torch.equal(feats[0, 128:], torch.zeros(128))


def test_timestep_embedder_feature_dtype():
    """C2I feeds float32 features to the MLP (autocast casts them, as in training) unless the module itself was
    cast to another dtype; T2I casts them to t's dtype."""
    t = torch.rand(4).to(torch.bfloat16)
    seen = []
    c2i = TimestepEmbedder(8, max_period=1e4)
    c2i.mlp[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c2i(t.float())
    assert c2i.to(torch.bfloat16)(t).dtype == torch.bfloat16
    t2i = TimestepEmbedder(8, max_period=10.0, cast_features_to_input=True).to(torch.bfloat16)
    t2i.mlp[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    assert t2i(t).dtype == torch.bfloat16
    assert seen == [torch.float32, torch.bfloat16, torch.bfloat16]


# -- RoPE -------------------------------------------------------------------------------------------------


def test_axial_rope_angles_and_identity_prefix():
    head_dim, gh, gw, prefix = 16, 3, 5, 2
    table = axial_rope_2d(head_dim, gh, gw, prefix_len=prefix)
    assert table.cos.shape == (prefix + gh * gw, head_dim // 2)
    assert torch.equal(table.cos[:prefix], torch.ones(prefix, 8)) and torch.equal(
        table.sin[:prefix], torch.zeros(prefix, 8)
    )
    freqs = [10000.0 ** (-4 * m / head_dim) for m in range(head_dim // 4)]
    for r, c in [(0, 0), (1, 4), (2, 3)]:
        n = prefix + r * gw + c
        for m, f in enumerate(freqs):
            assert table.cos[n, m].item() == pytest.approx(math.cos(r * f), abs=1e-6)  # first half: row
            assert table.sin[n, m].item() == pytest.approx(math.sin(r * f), abs=1e-6)
            assert table.cos[n, 4 + m].item() == pytest.approx(math.cos(c * f), abs=1e-6)  # second half: column
            assert table.sin[n, 4 + m].item() == pytest.approx(math.sin(c * f), abs=1e-6)


def test_linspace_rope_positions_quirk():
    head_dim, gh, gw = 16, 3, 4
    table = linspace_rope_2d(head_dim, gh, gw)
    xs = torch.linspace(0, gh, gw)  # column coordinate: gw points from 0 to gh (end-points swapped)
    ys = torch.linspace(0, gw, gh)
    for r in range(gh):
        for c in range(gw):
            n = r * gw + c
            for k in range(head_dim // 4):
                f = 10000.0 ** (-4 * k / head_dim)
                assert table.cos[n, 2 * k].item() == pytest.approx(math.cos(xs[c].item() * f), abs=1e-6)
                assert table.sin[n, 2 * k + 1].item() == pytest.approx(math.sin(ys[r].item() * f), abs=1e-6)
    # spacing G/(G-1) on a square grid: the last column sits at G, not G-1
    square = linspace_rope_2d(8, 4, 4)
    assert square.cos[3, 0].item() == pytest.approx(math.cos(4.0), abs=1e-6)
    assert square.sin[3, 0].item() == pytest.approx(math.sin(4.0), abs=1e-6)


def test_apply_rotary_pairs_rotates_adjacent_pairs():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 8)
    table = axial_rope_2d(8, 2, 3)
    out = apply_rotary_pairs(x, table)
    a, b = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(out[..., 0::2], a * table.cos - b * table.sin)
    torch.testing.assert_close(out[..., 1::2], b * table.cos + a * table.sin)
    # rotations preserve the norm of every pair
    torch.testing.assert_close(out.pow(2).sum(-1), x.pow(2).sum(-1))
    assert apply_rotary_pairs(x.to(torch.bfloat16), table).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="RoPE table covers 6 tokens"):
        apply_rotary_pairs(torch.randn(1, 1, 5, 8), table)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_pairs_eager_and_compiled_forms_agree(dtype):
    """Eager mode multiplies complex numbers, torch.compile traces real products: the same values and gradients
    (to rounding), for the activations' own layout (q of a fused qkv) and for a layout that must be copied first."""
    gen = torch.Generator().manual_seed(4)
    table = axial_rope_2d(8, 2, 3, prefix_len=1)
    qkv = torch.randn(2, 7, 3, 4, 8, generator=gen).to(dtype)  # (B, tokens, 3, heads, head_dim)
    q = qkv.permute(2, 0, 3, 1, 4)[0]
    odd = torch.randn(2, 4, 7, 9, generator=gen).to(dtype)[..., 1:]  # odd storage offset and strides
    compiled = torch.compile(apply_rotary_pairs, backend="eager", fullgraph=True)
    for x in (q, odd):
        eager_in, compiled_in = x.detach().requires_grad_(), x.detach().requires_grad_()
        eager, traced = apply_rotary_pairs(eager_in, table), compiled(compiled_in, table)
        assert eager.dtype == traced.dtype == dtype
        torch.testing.assert_close(eager, traced)  # float32: within 1.3e-6 relative (a rounding step)
        grad = torch.randn(eager.shape, generator=gen).to(dtype)
        eager.backward(grad)
        traced.backward(grad)
        torch.testing.assert_close(eager_in.grad, compiled_in.grad)
    with pytest.raises(AssertionError):  # the tolerance sees a wrong rotation
        torch.testing.assert_close(apply_rotary_pairs(q, table), apply_rotary_pairs(q, table._replace(sin=-table.sin)))


@given(r1=st.integers(0, 5), c1=st.integers(0, 5), dr=st.integers(-2, 2), dc=st.integers(-2, 2))
@settings(max_examples=20, deadline=None)
def test_axial_rope_scores_depend_on_relative_position(r1, c1, dr, dc):
    g = 8
    table = axial_rope_2d(16, g, g)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=gen), torch.randn(16, generator=gen)

    def score(rq, cq, rk, ck):
        qs = apply_rotary_pairs(q.expand(1, 1, g * g, 16).contiguous(), table)[0, 0, rq * g + cq]
        ks = apply_rotary_pairs(k.expand(1, 1, g * g, 16).contiguous(), table)[0, 0, rk * g + ck]
        return (qs @ ks).item()

    r2, c2 = r1 + dr, c1 + dc
    if 0 <= r2 < g and 0 <= c2 < g:
        assert score(r1, c1, r2, c2) == pytest.approx(score(0 + 2, 0 + 2, 2 + dr, 2 + dc), abs=1e-4)


def test_rope_needs_head_dim_multiple_of_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        axial_rope_2d(6, 2, 2)


# -- attention ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_backend_state(monkeypatch):
    monkeypatch.setattr(attention_module, "_xformers_ops", None)
    monkeypatch.setattr(attention_module, "_xformers_disabled", None)
    monkeypatch.setattr(attention_module, "_logged", set())
    return attention_module


def _qkv(b=2, h=3, nq=5, nk=7, d=8, dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(b, h, n, d, generator=gen).to(dtype) for n in (nq, nk, nk)]


def test_sdpa_and_math_backends_agree_with_formula():
    q, k, v = _qkv()
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1) @ v
    for backend in ("sdpa", "math", "auto", "xformers"):
        torch.testing.assert_close(attention(q, k, v, backend=backend), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_key_padding_mask_equals_dropping_keys(backend):
    q, k, v = _qkv(b=2)
    mask = torch.tensor([[True, True, False, True, False, False, True], [True] * 7])
    out = attention(q, k, v, backend=backend, key_padding_mask=mask)
    keep = mask[0]
    torch.testing.assert_close(out[0], attention(q[:1], k[:1, :, keep], v[:1, :, keep], backend="math")[0])
    torch.testing.assert_close(out[1], attention(q[1:], k[1:], v[1:], backend="math")[0])


def test_attention_input_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor of shape \\(2, 7\\)"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match="attention expects q"):
        attention(q[0], k, v)


def test_xformers_request_on_cpu_falls_back_and_logs_once(fresh_backend_state, caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="pixelgen.nn.attention_backends"):
        for _ in range(3):
            out = attention(q, k, v, backend="xformers")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "instead of xformers" in messages[0]
    assert caplog.records[0].levelno == logging.WARNING


def _fake_xformers(monkeypatch, fn):
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = fn
    pkg = types.ModuleType("xformers")
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


def test_working_xformers_is_used_on_eligible_tensors(fresh_backend_state, monkeypatch):
    calls = []

    def memory_efficient_attention(q, k, v, p=0.0):  # (B, N, heads, d) layout like xformers
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    _fake_xformers(monkeypatch, memory_efficient_attention)
    monkeypatch.setattr(fresh_backend_state, "_on_cuda", lambda t: True)
    q, k, v = _qkv(dtype=torch.bfloat16)
    out = attention(q, k, v, backend="auto")
    assert calls == [(2, 5, 3, 8)]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    attention(q.float(), k.float(), v.float(), backend="auto")  # float32: not eligible
    attention(q, k, v, backend="auto", key_padding_mask=torch.ones(2, 7, dtype=torch.bool))  # mask: not eligible
    assert len(calls) == 1


def test_xformers_without_operator_is_disabled_for_good(fresh_backend_state, monkeypatch, caplog):
    calls = []

    def memory_efficient_attention(q, k, v, p=0.0):
        calls.append(1)
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs: ...")

    _fake_xformers(monkeypatch, memory_efficient_attention)
    monkeypatch.setattr(fresh_backend_state, "_on_cuda", lambda t: True)
    q, k, v = _qkv(dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="pixelgen.nn.attention_backends"):
        outs = [attention(q, k, v, backend="auto") for _ in range(3)]
    assert calls == [1]  # only the first call tried xformers
    for out in outs:
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "No operator found" in messages[0] and "disabled for good" in messages[0]
    assert caplog.records[0].levelno == logging.WARNING
    assert "disabled" in fresh_backend_state.xformers_status()


def test_missing_xformers_is_reported(fresh_backend_state, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers` raise ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    assert fresh_backend_state.xformers_status().startswith("xformers could not be imported")
