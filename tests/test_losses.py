"""Path and time sampling, each loss term against its formula, the shared cache, and the balancer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import CallRecorder, images, tiny_dino, tiny_lpips
from torch import nn

from pixelgen.losses import (
    Balancer,
    FlowMatchingTerm,
    LossContext,
    LpipsTerm,
    PDinoTerm,
    RepaTerm,
    drop_condition,
    interpolate,
    sample_t,
    time_shift,
    x_to_v,
)
from pixelgen.registry import registries


@pytest.fixture(scope="module")
def dino():
    return tiny_dino()


@pytest.fixture(scope="module")
def lpips_net():
    return tiny_lpips("squeeze")


def make_ctx(batch=4, size=32, t=None, encoders=None, feature_dim=8, seed=0, gate=None) -> LossContext:
    g = torch.Generator().manual_seed(seed)
    x, raw = images(batch, size, seed)
    noise = torch.randn(x.shape, generator=g)
    t = torch.rand(batch, generator=g) if t is None else t
    x_hat = (x + 0.3 * torch.randn(x.shape, generator=g)).requires_grad_(True)
    tokens = (size // 16) ** 2
    feature = torch.randn(batch, tokens, feature_dim, generator=g, requires_grad=True)
    return LossContext(
        x=x,
        raw=raw,
        x_t=interpolate(x, noise, t),
        t=t,
        x_hat=x_hat,
        feature=feature,
        gate=gate,
        encoders=encoders or {},
    )


# -- path and time sampling -----------------------------------------------------------------------------
def test_logit_normal_times_match_the_paper_statistics():
    t = sample_t(200_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.median()) - 1 / (1 + math.exp(0.8))) < 0.005  # median sigmoid(-0.8) = 0.310
    assert abs(float((t >= 0.3).float().mean()) - 0.524) < 0.005  # the share noise gating keeps


def test_uniform_times_and_shift():
    t = sample_t(100_000, distribution="uniform", generator=torch.Generator().manual_seed(0))
    assert abs(float(t.mean()) - 0.5) < 0.01
    shifted = sample_t(100_000, distribution="uniform", shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, time_shift(t, 3.0))
    assert float(shifted.mean()) < float(t.mean())  # shift > 1 moves mass towards noise


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.1, 10.0))
def test_time_shift_is_monotone_with_fixed_ends(t, shift):
    tt = torch.tensor([0.0, t, 1.0], dtype=torch.float64)
    out = time_shift(tt, shift)
    assert float(out[0]) == 0.0 and float(out[2]) == 1.0 and 0.0 <= float(out[1]) <= 1.0
    assert float(out[1]) == pytest.approx(t / (t + shift * (1 - t)), abs=1e-12)


def test_sample_t_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distribution"):
        sample_t(4, distribution="beta")
    with pytest.raises(ValueError, match="positive integer"):
        sample_t(0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5), st.floats(0.01, 0.5))
def test_path_and_x_to_v(ts, t_eps):
    t = torch.tensor(ts, dtype=torch.float32)
    x, noise = torch.randn(len(ts), 3, 4, 4), torch.randn(len(ts), 3, 4, 4)
    x_t = interpolate(x, noise, t)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, tt * x + (1 - tt) * noise)
    x_hat = torch.randn_like(x)
    torch.testing.assert_close(x_to_v(x_hat, x_t, t, t_eps), (x_hat - x_t) / torch.clamp(1 - tt, min=t_eps))


def test_path_endpoints():
    x, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(interpolate(x, noise, torch.ones(2)), x)
    torch.testing.assert_close(interpolate(x, noise, torch.zeros(2)), noise)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(x, noise, torch.tensor([0.5, 1.5]))


def test_label_dropout():
    y = torch.arange(8)
    assert torch.equal(drop_condition(y, 0.0, null_label=1000), y)
    assert torch.equal(drop_condition(y, 1.0, null_label=1000), torch.full_like(y, 1000))
    many = drop_condition(
        torch.zeros(100_000, dtype=torch.long), 0.1, null_label=7, generator=torch.Generator().manual_seed(0)
    )
    assert abs(float((many == 7).float().mean()) - 0.1) < 0.005
    with pytest.raises(ValueError, match="null_label"):
        drop_condition(y, 0.5)


def test_text_dropout_uses_the_unconditional_embedding():
    cond, uncond = torch.randn(6, 5, 4), torch.randn(5, 4)
    dropped = drop_condition(cond, 1.0, uncond=uncond)
    assert torch.equal(dropped, uncond.expand(6, 5, 4))
    draws = torch.tensor([0.0, 0.5, 0.05, 0.9, 0.2, 0.01])
    mixed = drop_condition(cond, 0.1, uncond=uncond[None], draws=draws)
    for i, d in enumerate(draws.tolist()):
        assert torch.equal(mixed[i], uncond if d < 0.1 else cond[i])
    with pytest.raises(ValueError, match="uncond"):
        drop_condition(cond, 0.5)
    with pytest.raises(ValueError, match="does not match"):
        drop_condition(cond, 0.5, uncond=torch.randn(3, 4))


# -- terms ----------------------------------------------------------------------------------------------
def test_terms_are_registered_with_their_declarations():
    assert {"flow_matching", "repa", "lpips", "pdino"} <= set(registries.loss.list())
    assert registries.loss.build("lpips").gated is True
    assert registries.loss.build("repa").gated is False
    assert PDinoTerm("intended").gated and not PDinoTerm("original").gated


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=4), st.integers(0, 1000))
def test_flow_matching_equals_weighted_x_mse(ts, seed):
    ctx = make_ctx(batch=len(ts), t=torch.tensor(ts), seed=seed)
    value = FlowMatchingTerm()(ctx)
    weight = 1.0 / torch.clamp(1 - ctx.t, min=0.05) ** 2
    expected = ((ctx.x_hat - ctx.x) ** 2).mean(dim=(1, 2, 3)) * weight
    torch.testing.assert_close(value, expected.mean(), rtol=1e-5, atol=1e-6)
    assert value.ndim == 0


def test_repa_equals_one_minus_cosine_and_trains_only_the_projector(dino):
    term = RepaTerm(hidden_size=8, encoder_dim=dino.embed_dim)
    assert [n for n, _ in term.named_parameters()] == [f"proj.0.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
    ctx = make_ctx(encoders={"dinov2": dino})
    value = term(ctx)
    target = dino(ctx.raw)
    expected = (1 - F.cosine_similarity(term.proj[0](ctx.feature), target, dim=-1)).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert ctx.feature.grad is not None and all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in dino.parameters())


def test_repa_projector_loads_original_trainer_weights():
    term = RepaTerm(hidden_size=8, encoder_dim=6)
    upstream = {f"diffusion_trainer.{k}": torch.randn_like(v) for k, v in term.state_dict().items()}
    upstream["denoiser.x"] = torch.zeros(1)
    term.load_upstream_state(upstream)
    for k, v in term.state_dict().items():
        assert torch.equal(v, upstream[f"diffusion_trainer.{k}"])


def test_repa_rejects_mismatched_token_grids(dino):
    term = RepaTerm(hidden_size=8, encoder_dim=dino.embed_dim)
    ctx = make_ctx(encoders={"dinov2": dino})
    ctx.feature = torch.randn(4, 16, 8)
    with pytest.raises(ValueError, match="one to one"):
        term(ctx)


def test_lpips_term_equals_the_metric_and_reaches_x_hat(lpips_net):
    ctx = make_ctx(encoders={"lpips": lpips_net})
    value = LpipsTerm()(ctx)
    torch.testing.assert_close(value, lpips_net(ctx.x_hat, ctx.x).mean())
    value.backward()
    assert ctx.x_hat.grad.abs().sum() > 0 and all(p.grad is None for p in lpips_net.parameters())


def test_lpips_resize_rule_for_other_patch_sizes(lpips_net):
    ctx = make_ctx(size=32, encoders={"lpips": lpips_net})
    resize = lambda v: F.interpolate(v, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
    torch.testing.assert_close(LpipsTerm(patch_size=8)(ctx), lpips_net(resize(ctx.x_hat), resize(ctx.x)).mean())


def test_pdino_equals_one_minus_cosine_and_reaches_x_hat_through_dino(dino):
    ctx = make_ctx(encoders={"dinov2": dino})
    value = PDinoTerm("intended")(ctx)
    expected = (1 - F.cosine_similarity(dino((ctx.x_hat + 1) / 2, check_range=False), dino(ctx.raw), dim=-1)).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert ctx.x_hat.grad.abs().sum() > 0 and all(p.grad is None for p in dino.parameters())


def test_pdino_original_mode_reproduces_the_upstream_broadcast(dino):
    """The default gating: with ≥1 sample gated in, 1 − mean cos over ALL samples; with none, the constant 1."""
    t = torch.tensor([0.1, 0.2, 0.35, 0.05])
    ctx = make_ctx(t=t, gate=t >= 0.3, encoders={"dinov2": dino})
    cos = F.cosine_similarity(dino((ctx.x_hat + 1) / 2, check_range=False), dino(ctx.raw), dim=-1)  # (B, N)
    mask = (t >= 0.3).float().view(-1, 1, 1)
    broadcast = (cos * mask).mean() / mask.mean()  # the (B,N)*(B,1,1) -> (B,B,N) arithmetic of the original
    torch.testing.assert_close(PDinoTerm("original")(ctx), 1 - broadcast)
    torch.testing.assert_close(PDinoTerm("original")(ctx), 1 - cos.mean())

    none = make_ctx(
        t=torch.full((4,), 0.1), gate=torch.zeros(4, dtype=torch.bool), encoders={"dinov2": CallRecorder(dino)}
    )
    value = PDinoTerm("original")(none)
    assert float(value) == 1.0 and not value.requires_grad and none.encoders["dinov2"].batch_sizes == []


def test_clean_features_are_computed_once_and_shared(dino):
    recorder = CallRecorder(dino)
    ctx = make_ctx(encoders={"dinov2": recorder})
    RepaTerm(hidden_size=8, encoder_dim=dino.embed_dim)(ctx)
    PDinoTerm("original")(ctx)
    assert recorder.batch_sizes == [4, 4]  # one clean forward (REPA), one prediction forward (P-DINO)
    sub = ctx.subset(torch.tensor([1, 3]))
    PDinoTerm("intended")(sub)
    assert recorder.batch_sizes == [4, 4, 2]  # the subset reuses the clean features by indexing
    torch.testing.assert_close(sub.clean_features(), ctx.clean_features()[[1, 3]])


def test_masked_reduction_equals_subset_mean():
    ctx = make_ctx()
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([True, False, True, False])
    assert float(ctx.masked(mask).reduce(values)) == 2.0
    assert float(ctx.masked(torch.zeros(4, dtype=torch.bool)).reduce(values)) == 0.0
    with pytest.raises(ValueError, match="one value per sample"):
        ctx.reduce(torch.ones(3))


# -- balancer -------------------------------------------------------------------------------------------
class _Head(nn.Module):
    """The backbone protocol's balance parameter and nothing else."""

    def __init__(self):
        super().__init__()
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(2, 2)

    def balance_parameter(self):
        return self.final_layer.linear.weight


def _losses(model, a: float, b: float):
    w = model.final_layer.linear.weight
    return (w * a).sum(), (w * b).sum()  # gradient norms 2|a| and 2|b|


def test_balancer_schedule_and_formula():
    bal = Balancer(start_step=100, every=50)
    assert [bal.due(s) for s in (None, 0, 50, 100, 120, 150, 200)] == [False, False, False, True, False, True, True]
    model = _Head()
    value = bal.update(model, *_losses(model, 3.0, 1.0))
    expected = torch.tensor(0.8) + 0.2 * (torch.tensor(6.0) / (torch.tensor(2.0) + 1e-4))  # float32, as the original
    assert value.dtype == torch.float32 and torch.equal(value, expected)
    w1 = bal.weight
    bal.update(model, *_losses(model, 1e4, 1.0))  # clamped at 100
    assert bal.weight == pytest.approx(0.8 * w1 + 0.2 * 100.0)
    assert bal.get_extra_state() == {"weight": bal.weight, "updates": 2}
    assert not Balancer(start_step=None).due(10**9)


def test_balancer_without_a_perceptual_gradient_follows_the_original_or_keeps_the_weight():
    model = _Head()
    w = model.final_layer.linear.weight
    original = Balancer(start_step=0)  # the ratio against a zero gradient: clamped to 100
    original.update(model, (w * 2).sum(), torch.ones(()))
    assert original.weight == pytest.approx(0.8 + 0.2 * 100.0) and original.updates == 1
    original.update(model, (w * 2).sum(), (w * 0).sum())  # a graph with a zero gradient: the same rule
    assert original.weight == pytest.approx(0.8 * 20.8 + 20.0) and original.updates == 2
    keep = Balancer(start_step=0, no_gradient="keep")
    keep.update(model, (w * 2).sum(), torch.ones(()))
    assert keep.weight == 1.0 and keep.updates == 0
    with pytest.raises(ValueError, match="no_gradient must be one of original, keep"):
        Balancer(no_gradient="skip")


def test_balancer_finds_the_parameter_through_wrappers():
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    model = Wrapper(_Head())
    bal = Balancer(start_step=0)
    bal.update(model, *_losses(model.module, 2.0, 1.0))
    assert bal.updates == 1
    named = Balancer(start_step=0, param_name="final_layer.linear.bias")
    b = model.module.final_layer.linear.bias
    named.update(model, (b * 3).sum(), (b * 1).sum())
    assert named.weight == pytest.approx(0.8 + 0.2 * 3.0, rel=1e-4)
    with pytest.raises(AttributeError, match=r"Linear.balance_parameter\(\) to return a trainable parameter"):
        bal.update(nn.Linear(2, 2), torch.ones(()), torch.ones(()))
    with pytest.raises(AttributeError, match="'final_layer.nope'"):
        Balancer(start_step=0, param_name="final_layer.nope").update(model, torch.ones(()), torch.ones(()))


def _distributed_worker(rank: int, world: int, store: str, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _Head()
        bal = Balancer(start_step=0)
        bal.update(model, *_losses(model, 1.0 + rank, 1.0))  # ratios 1 and 2 on the two ranks
        results[rank] = bal.weight
    finally:
        torch.distributed.destroy_process_group()


def test_balancer_averages_the_ratio_across_processes(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
        weights = dict(results)
    expected = 0.8 + 0.2 * (1.0 / (1 + 5e-5) + 2.0 / (1 + 5e-5)) / 2
    assert weights[0] == pytest.approx(expected, rel=1e-5) and weights[1] == pytest.approx(expected, rel=1e-5)


# -- numerics under autocast ------------------------------------------------------------------------------
@pytest.mark.parametrize("magnitude", [1.0, 1e20, 1e30])
def test_cosine_distance_of_large_bf16_activations_is_finite_and_float32_exact(magnitude):
    from pixelgen.losses.terms import cosine_distance

    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 5, 24, generator=g), torch.randn(2, 5, 24, generator=g)
    a, b = (magnitude * u).bfloat16(), (0.3 * magnitude * (u + 0.2 * v)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cosine_distance(a, b)
    expected = (1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)).mean(dim=1)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    plain = (1 - torch.nn.functional.cosine_similarity(u, v, dim=-1)).mean(dim=1)  # ordinary sizes: same bits
    assert torch.equal(cosine_distance(u, v), plain)


def test_lpips_of_large_bf16_activations_stays_finite_and_close_to_float64(lpips_net):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    reference = copy.deepcopy(lpips_net).double()
    for scale in (1.0, 1e19):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = lpips_net(scale * a, scale * b, check_range=False)
        expected = reference((scale * a).double(), (scale * b).double(), check_range=False)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), expected, rtol=0.05, atol=1e-3)
    assert torch.equal(lpips_net(a, b), lpips_net.metric(a, b).reshape(2))  # float32: the package's bits
