"""The Objective: contract, gating (subset = masked), P-DINO gating modes, presets, state, input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import CallRecorder, StubC2I, images, tiny_dino, tiny_jit, tiny_lpips
from torch import nn

from pixelgen.losses import PRESETS, LossTerm, Objective, build_objective, list_presets
from pixelgen.registry import registries


@pytest.fixture(scope="module")
def dino():
    return tiny_dino()


@pytest.fixture(scope="module")
def lpips_net():
    return tiny_lpips("squeeze")


def objective(dino, lpips_net, preset="pixelgen", hidden_size=32, **overrides) -> Objective:
    torch.manual_seed(0)
    return build_objective(
        preset, hidden_size=hidden_size, align_layer=1, encoders={"dinov2": dino, "lpips": lpips_net}, **overrides
    )


def batch(size=4, seed=0, dtype=torch.float32):
    image, raw = images(size, 32, seed, dtype)
    return {"image": image, "raw": raw, "cond": torch.arange(size) % 10}


def test_contract_outputs_named_scalars_and_a_weighted_total(dino, lpips_net):
    obj = objective(dino, lpips_net)
    model = tiny_jit()
    out = obj(model, batch(), step=0, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"flow_matching", "repa", "lpips", "pdino", "percept_weight", "loss"}
    assert all(v.ndim == 0 for v in out.values())
    assert [k for k, v in out.items() if v.requires_grad] == ["loss"]
    assert obj.weights == {"flow_matching": 1.0, "repa": 0.5, "lpips": 0.1, "pdino": 0.01}
    expected = (
        out["flow_matching"] + 0.5 * out["repa"] + out["percept_weight"] * (0.1 * out["lpips"] + 0.01 * out["pdino"])
    )
    torch.testing.assert_close(out["loss"].detach(), expected)
    out["loss"].backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in obj.parameters())  # the REPA projector trains with the model
    assert all(p.grad is None for enc in obj.encoders.values() for p in enc.parameters())


def test_frozen_encoders_stay_out_of_state_dict_and_parameters_but_move_with_the_objective(dino, lpips_net):
    obj = objective(dino, lpips_net)
    keys = list(obj.state_dict())
    assert all(k.startswith("terms.repa.proj.0.") for k in keys if k != "balancer._extra_state")
    assert "balancer._extra_state" in keys
    assert [n for n, _ in obj.named_parameters()] == [k for k in keys if k.startswith("terms.")]
    enc_dino = tiny_dino()
    moving = build_objective("pixelgen", hidden_size=32, encoders={"dinov2": enc_dino, "lpips": tiny_lpips()})
    moving.to(torch.float64)
    assert enc_dino.dtype == torch.float64 and moving.encoders["lpips"].dtype == torch.float64
    assert moving.terms["repa"].proj[0][0].weight.dtype == torch.float64
    assert moving.balancer.value.dtype == torch.float64  # the adaptive weight moves with the objective
    assert not list(moving.buffers())  # but is no buffer: DDP would broadcast it from rank 0 every step


def _gating_run(dino, lpips_net, t, compute, pdino_gating="intended", **overrides):
    """(outputs, grads of x̂'s producer and the projector, encoder batch sizes) for fixed t and noise."""
    dino_rec, lpips_rec = CallRecorder(dino), CallRecorder(lpips_net)
    obj = objective(
        dino_rec, lpips_rec, hidden_size=16, gating_compute=compute, pdino_gating=pdino_gating, **overrides
    ).double()
    torch.manual_seed(0)
    model = StubC2I(hidden_size=16).double()
    b = batch(len(t), dtype=torch.float64)
    noise = torch.randn(b["image"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = obj.evaluate(model, b["image"], b["raw"], b["cond"], t, noise)
    params = list(model.parameters()) + list(obj.parameters())
    grads = torch.autograd.grad(out["loss"], params, allow_unused=True)
    return out, grads, dino_rec.batch_sizes, lpips_rec.batch_sizes


@pytest.fixture(scope="module")
def dino64():
    return tiny_dino().double()


@pytest.fixture(scope="module")
def lpips64():
    return tiny_lpips().double()


@settings(max_examples=5, deadline=None)
@given(st.lists(st.sampled_from([0.05, 0.2, 0.29, 0.3, 0.5, 0.9]), min_size=3, max_size=5))
def test_gated_subset_equals_masked_full_computation(dino64, lpips64, ts):
    t = torch.tensor(ts, dtype=torch.float32)
    sub, sub_grads, sub_dino, sub_lpips = _gating_run(dino64, lpips64, t, "subset")
    full, full_grads, full_dino, full_lpips = _gating_run(dino64, lpips64, t, "masked")
    for key in full:
        torch.testing.assert_close(sub[key], full[key], rtol=1e-12, atol=1e-12)
    for a, b in zip(sub_grads, full_grads):
        if a is None or b is None:
            assert a is None or not a.any()
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    gated_in = int((t >= 0.3).sum())
    # subset: LPIPS and P-DINO's prediction pass see only the gated-in samples (nothing when none qualifies)
    assert sub_lpips == ([gated_in] if gated_in else [])
    assert sub_dino == [len(ts)] + ([gated_in] if gated_in else [])
    assert full_lpips == [len(ts)] and full_dino == [len(ts), len(ts)]


def test_gated_terms_are_zero_without_gradient_when_no_sample_qualifies(dino64, lpips64):
    t = torch.tensor([0.1, 0.2, 0.05])
    out, grads, dino_calls, lpips_calls = _gating_run(dino64, lpips64, t, "subset")
    assert float(out["lpips"]) == 0.0 and float(out["pdino"]) == 0.0 and lpips_calls == [] and dino_calls == [3]
    torch.testing.assert_close(out["loss"].detach(), out["flow_matching"] + 0.5 * out["repa"], rtol=0, atol=0)
    _, plain_grads, _, _ = _gating_run(dino64, lpips64, t, "subset", losses=["flow_matching", "repa"])
    for a, b in zip(grads, plain_grads):  # the gated terms add nothing to any gradient
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))


def _pdino_cosines(dino, t):
    """Token cosines (B, N) between DINOv2 of the prediction and of the clean image, as _gating_run computes them."""
    torch.manual_seed(0)
    model = StubC2I(hidden_size=16).double()
    b = batch(len(t), dtype=torch.float64)
    noise = torch.randn(b["image"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tt = t.view(-1, 1, 1, 1).double()
    x_hat = model(tt * b["image"] + (1 - tt) * noise, t, b["cond"])
    return torch.nn.functional.cosine_similarity(dino((x_hat + 1) / 2, check_range=False), dino(b["raw"]), dim=-1)


def test_pdino_gating_modes_through_the_objective(dino64, lpips64):
    t = torch.tensor([0.1, 0.6, 0.05, 0.4])
    cos = _pdino_cosines(dino64, t)
    intended, *_ = _gating_run(dino64, lpips64, t, "subset", pdino_gating="intended")
    torch.testing.assert_close(intended["pdino"], (1 - cos[[1, 3]]).mean())  # the masked mean
    original, *_ = _gating_run(dino64, lpips64, t, "subset", pdino_gating="original")
    torch.testing.assert_close(original["pdino"], (1 - cos).mean())  # the default gate: all samples count
    none, _, dino_calls, _ = _gating_run(
        dino64, lpips64, torch.tensor([0.1, 0.2, 0.05]), "subset", pdino_gating="original"
    )
    assert float(none["pdino"]) == 1.0 and dino_calls == [3]  # constant 1: only REPA's clean pass ran
    assert objective(dino64, lpips64).terms["pdino"].gating == "original"  # the preset default stays faithful


def test_presets_reproduce_the_ablation_ladder(dino, lpips_net):
    assert set(list_presets()) >= {
        "jit_repa",
        "jit_repa_lpips",
        "jit_repa_lpips_pdino",
        "pixelgen",
        "+lpips",
        "+lpips+pdino",
    }
    base = objective(dino, lpips_net, "jit_repa")
    assert list(base.terms) == ["flow_matching", "repa"] and list(base.encoders) == ["dinov2"]
    plus = build_objective("+lpips", hidden_size=32, encoders={"dinov2": dino, "lpips": lpips_net})
    assert list(plus.terms) == ["flow_matching", "repa", "lpips"] and plus.percept_t_threshold is None
    assert plus.weights["lpips"] == 1.0
    both = build_objective("+lpips+pdino", hidden_size=32, encoders={"dinov2": dino, "lpips": lpips_net})
    assert both.percept_t_threshold is None and both.balancer.start_step is None
    assert both.weights == {"flow_matching": 1.0, "repa": 0.5, "lpips": 1.0, "pdino": 1.0}  # that trainer's defaults
    full = objective(dino, lpips_net)
    assert full.percept_t_threshold == 0.3 and full.terms["pdino"].gating == "original"
    assert (full.balancer.start_step, full.balancer.every) == (400_000, 50)
    assert PRESETS["pixelgen"]["losses"] == ("flow_matching", "repa", "lpips", "pdino")


def test_build_objective_errors_are_clear(dino, lpips_net):
    with pytest.raises(KeyError, match="did you mean 'pixelgen'"):
        build_objective("pixelgan")
    with pytest.raises(TypeError, match="Unknown build_objective option"):
        build_objective("pixelgen", hiden_size=3)
    with pytest.raises(ValueError, match="not in losses"):
        build_objective("jit_repa", weights={"lpips": 1.0}, hidden_size=8, encoders={"dinov2": dino})
    with pytest.raises(ValueError, match="pass model=model"):
        build_objective("jit_repa", encoders={"dinov2": dino})
    with pytest.raises(ValueError, match="no loss term uses"):
        build_objective("jit_repa", hidden_size=8, encoders={"dinov2": dino, "dino": lpips_net})
    with pytest.raises(KeyError, match="Unknown loss"):
        build_objective("jit_repa", hidden_size=8, encoders={"dinov2": dino}, extra_losses=["lpipz"])


def test_balancer_state_round_trips_through_the_state_dict(tmp_path, dino, lpips_net):
    obj = objective(
        dino, lpips_net, balancer={"start_step": 10, "every": 5}, percept_t_threshold=0.0
    )  # always gated in
    model = tiny_jit()
    for step in (5, 10, 12, 15):
        out = obj(model, batch(), step=step, generator=torch.Generator().manual_seed(step))
    assert obj.balancer.updates == 2 and obj.balancer.weight != 1.0
    assert float(out["percept_weight"]) == pytest.approx(obj.balancer.weight)
    torch.save(obj.state_dict(), tmp_path / "objective.pt")
    fresh = objective(dino, lpips_net, balancer={"start_step": 10, "every": 5})
    assert fresh.balancer.weight == 1.0
    fresh.load_state_dict(torch.load(tmp_path / "objective.pt", weights_only=True))
    assert fresh.balancer_state() == obj.balancer_state()
    other = objective(dino, lpips_net)
    other.load_balancer_state(obj.balancer_state())
    assert other.balancer.weight == obj.balancer.weight


def test_upstream_projector_weights_load(dino, lpips_net):
    obj = objective(dino, lpips_net)
    upstream = {
        f"diffusion_trainer.{k[len('terms.repa.') :]}": torch.randn_like(v)
        for k, v in obj.state_dict().items()
        if k.startswith("terms.repa.")
    }
    obj.load_upstream_state(upstream)
    torch.testing.assert_close(obj.terms["repa"].proj[0][4].weight, upstream["diffusion_trainer.proj.0.4.weight"])


def test_label_dropout_uses_the_null_class_and_seeds_make_draws_split_invariant(dino, lpips_net):
    obj = objective(dino, lpips_net, "jit_repa", hidden_size=16, cond_drop_prob=1.0)
    model = StubC2I(hidden_size=16)
    b = batch(4)
    seen = []
    model.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    obj(model, {**b, "seeds": torch.arange(4)})
    assert torch.equal(seen[-1], torch.full((4,), 10))
    whole = [c.clone() for c in model.calls[-1]]
    obj(model, {k: v[:2] for k, v in {**b, "seeds": torch.arange(4)}.items()})
    obj(model, {k: v[2:] for k, v in {**b, "seeds": torch.arange(4)}.items()})
    halves = [torch.cat([a, b]) for a, b in zip(model.calls[-2], model.calls[-1])]
    for a, b in zip(whole, halves):
        torch.testing.assert_close(a, b)


def test_seeded_draws_follow_the_trainer_contract(dino, lpips_net):
    """Sample i's t, noise and dropout come from Generator().manual_seed(seeds[i]), drawn in that order."""
    obj = objective(dino, lpips_net, "jit_repa", hidden_size=16, cond_drop_prob=0.5)
    model = StubC2I(hidden_size=16)
    b = batch(6)
    seeds = torch.tensor([7, 2**40 + 3, 123, 0, 99, 5])
    seen = []
    model.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    obj(model, {**b, "seeds": seeds})
    x_t, t = model.calls[-1]
    dropped = []
    for i, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(seed)
        t_i = torch.sigmoid(torch.randn((), generator=g) * 0.8 - 0.8)
        noise_i = torch.randn(3, 32, 32, generator=g)
        dropped.append(bool(torch.rand((), generator=g) < 0.5))
        torch.testing.assert_close(t[i], t_i, rtol=0, atol=0)
        torch.testing.assert_close(x_t[i], t_i * b["image"][i] + (1 - t_i) * noise_i)
    assert seen[-1].tolist() == [10 if d else int(c) for d, c in zip(dropped, b["cond"])]
    assert any(dropped) and not all(dropped)


class _TextStub(StubC2I):
    cond_kind = "text"

    def forward(self, x, t, y, *, return_layer=None):
        self.last_cond = y.clone()
        h = self.mix(x) + y.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        out = torch.tanh(self.final_layer.linear(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return out if return_layer is None else (out, self.patch(h).flatten(2).transpose(1, 2))


def test_text_conditions_drop_to_the_batch_uncond(dino, lpips_net):
    obj = objective(dino, lpips_net, "jit_repa", hidden_size=16, cond_drop_prob=1.0)
    model = _TextStub(hidden_size=16)
    b = batch(2)
    b["cond"], b["uncond"] = torch.randn(2, 5, 4), torch.randn(5, 4)
    obj(model, b)
    assert torch.equal(model.last_cond, b["uncond"].expand(2, 5, 4))
    del b["uncond"]
    with pytest.raises(ValueError, match="uncond"):
        obj(model, b)


def test_input_checks_name_the_problem(dino, lpips_net):
    obj = objective(dino, lpips_net, "jit_repa", hidden_size=16)
    model = StubC2I(hidden_size=16)
    b = batch(2)
    with pytest.raises(ValueError, match="0-255"):
        obj(model, {**b, "image": (b["image"] + 1) * 127.5})
    with pytest.raises(ValueError, match=r"\[-1, 1\] image where a \[0, 1\] one"):
        obj(model, {**b, "raw": b["image"]})
    with pytest.raises(KeyError, match="'cond'"):
        obj(model, {"image": b["image"]})
    with pytest.raises(ValueError, match="class indices"):
        obj(model, {**b, "cond": torch.tensor([3, 11])})

    class WrongShape(StubC2I):
        def forward(self, x, t, y, *, return_layer=None):
            x_hat, feature = super().forward(x, t, y, return_layer=1)
            return x_hat[..., :16, :16], feature

    with pytest.raises(ValueError, match="prediction x_hat and the clean image x must have the same shape"):
        obj(WrongShape(hidden_size=16), b)
    small = {"image": torch.zeros(2, 3, 8, 8), "raw": torch.full((2, 3, 8, 8), 0.5), "cond": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match="smaller than its patch size"):
        obj(StubC2I(hidden_size=16, patch_size=8), small)


def test_nan_terms_are_named(dino, lpips_net):
    @registries.loss.register("test_nan_term", override=True)
    class NanTerm(LossTerm):
        def forward(self, ctx):
            return ctx.x_hat.sum() * float("nan")

    try:
        obj = objective(dino, lpips_net, "jit_repa", hidden_size=16, extra_losses=["test_nan_term"])
        with pytest.raises(FloatingPointError, match="'test_nan_term'"):
            obj(StubC2I(hidden_size=16), batch(2))
    finally:
        registries.loss.unregister("test_nan_term")


def test_a_model_with_an_incompatible_token_grid_fails_clearly(dino, lpips_net):
    obj = objective(dino, lpips_net, "jit_repa", hidden_size=16)
    with pytest.raises(ValueError, match="base_patch_size must equal the backbone patch size"):
        obj(StubC2I(hidden_size=16, patch_size=8), batch(2))


def test_tiny_jit_training_step_reduces_the_loss(dino, lpips_net):
    model = tiny_jit()
    obj = objective(dino, lpips_net)
    opt = torch.optim.AdamW([*model.parameters(), *obj.parameters()], lr=3e-3)
    b = batch(4)
    losses = []
    for step in range(8):
        out = obj(model, b, step=step, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]


# -- the static-shape step -----------------------------------------------------------------------------------
def _step(dino, lpips_net, t, compute, pdino_gating, no_gradient="original"):
    """(outputs, gradients) of one due balancer step at fixed t and noise, in float64."""
    obj = objective(
        dino,
        lpips_net,
        hidden_size=16,
        gating_compute=compute,
        pdino_gating=pdino_gating,
        balancer={"start_step": 0, "every": 1, "no_gradient": no_gradient},
    ).double()
    torch.manual_seed(0)
    model = StubC2I(hidden_size=16).double()
    b = batch(len(t), dtype=torch.float64)
    noise = torch.randn(b["image"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = obj.evaluate(model, b["image"], b["raw"], b["cond"], t, noise, step=0)
    params = list(model.parameters()) + list(obj.parameters())
    return out, torch.autograd.grad(out["loss"], params, allow_unused=True)


@pytest.mark.parametrize("pdino_gating", ["original", "intended"])
@pytest.mark.parametrize("ts", [[0.1, 0.6, 0.05, 0.4], [0.1, 0.2, 0.05]])
def test_static_step_equals_the_default_step(dino64, lpips64, ts, pdino_gating):
    t = torch.tensor(ts)
    for no_gradient in ("original", "keep"):
        default, default_grads = _step(dino64, lpips64, t, "subset", pdino_gating, no_gradient)
        static, static_grads = _step(dino64, lpips64, t, "masked", pdino_gating, no_gradient)
        assert set(default) == set(static)
        for key in default:
            torch.testing.assert_close(static[key], default[key], rtol=1e-12, atol=1e-12)
        for a, b in zip(default_grads, static_grads):
            a = torch.zeros_like(b) if a is None and b is not None else a
            b = torch.zeros_like(a) if b is None and a is not None else b
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        if all(v < 0.3 for v in ts):  # no sample gated in: the ratio against a zero gradient, or w kept
            expected = 0.8 + 0.2 * 100.0 if no_gradient == "original" else 1.0
            assert float(static["percept_weight"]) == pytest.approx(expected)


def test_static_step_makes_no_host_sync(dino, lpips_net, monkeypatch):
    from pixelgen.backbones import values_checked_by_caller

    obj = objective(
        dino, lpips_net, gating_compute="masked", check_finite=False, balancer={"start_step": 0, "every": 1}
    )
    model = tiny_jit()
    b = batch(4)
    syncs = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            syncs.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: syncs.append("torch.nonzero"))
    for step in (0, 1):  # a balancer step and a plain one
        with values_checked_by_caller():
            out = obj(model, b, step=step, generator=torch.Generator().manual_seed(step))
            out["loss"].backward()
    monkeypatch.undo()
    assert syncs == []
    assert obj.balancer.updates == 2 and bool(Objective.all_finite(out))
    default = objective(dino, lpips_net, check_finite=False)  # the subset step indexes the gated samples
    monkeypatch.setattr(
        torch.Tensor,
        "nonzero",
        lambda self, *a, **k: (syncs.append("nonzero"), self.new_zeros((0, 1), dtype=torch.long))[1],
    )
    with values_checked_by_caller():
        default(model, b, step=0, generator=torch.Generator().manual_seed(0))
    assert syncs == ["nonzero"]


def test_finiteness_checks_are_exposed_for_callers(dino, lpips_net):
    good = {"a": torch.tensor(1.0), "b": torch.tensor(2.0, dtype=torch.float64)}
    bad = {**good, "c": torch.tensor(float("nan")), "d": torch.tensor(float("inf"))}
    assert bool(Objective.all_finite(good)) and not bool(Objective.all_finite(bad))
    Objective.check_values(good)
    with pytest.raises(FloatingPointError, match=r"Loss term 'c' \(nan\), 'd' \(inf\) is NaN or infinite"):
        Objective.check_values(bad)
    with pytest.raises(FloatingPointError, match="'x'"):
        Objective.check_values({"x": float("nan"), "y": 1.0})


# -- built from the model -----------------------------------------------------------------------------------
def test_objective_built_from_the_model_reads_the_backbone_protocol(dino, lpips_net):
    from pixelgen.backbones.base import Backbone

    model = tiny_jit(patch_size=8, input_size=32)
    obj = build_objective("pixelgen", model=model, align_layer=1, encoders={"dinov2": dino, "lpips": lpips_net})
    assert obj.terms["repa"].proj[0][0].in_features == model.hidden_size == 32
    assert obj.terms["lpips"].patch_size == 8  # LPIPS's resize rule follows the backbone's patch size
    fixed = build_objective(
        "pixelgen",
        model=model,
        encoders={"dinov2": dino, "lpips": lpips_net},
        term_options={"lpips": {"patch_size": 16}},
    )
    assert fixed.terms["lpips"].patch_size == 16  # the original trainer's fixed argument, when asked
    same = Objective.from_model(model, "pixelgen", align_layer=1, encoders={"dinov2": dino, "lpips": lpips_net})
    assert same.terms["lpips"].patch_size == 8 and same.hidden_size == 32
    built = build_objective(
        "jit_repa",
        model=model,
        encoders={"dinov2": {"weights": "random", "model_overrides": {"embed_dim": 12, "depth": 1, "num_heads": 2}}},
    )
    assert built.encoders["dinov2"].base_patch_size == 8  # DINOv2's token grid pairs with the backbone's
    with pytest.raises(ValueError, match="hidden_size=16 contradicts the model's hidden_size 32"):
        build_objective("jit_repa", model=model, hidden_size=16, encoders={"dinov2": dino})

    class Wrapped(nn.Module):  # DDP-style wrappers are looked through
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert build_objective("jit_repa", model=Wrapped(model), encoders={"dinov2": dino}).hidden_size == 32

    class Family(Backbone):  # a new family states the protocol once
        arch, cond_kind, hidden_size, patch_size, num_classes = "toy", "class", 16, 16, 10

        def __init__(self):
            super().__init__()
            self.inner = StubC2I(hidden_size=16)

        def balance_parameter(self):
            return self.inner.final_layer.linear.weight

        def forward(self, x, t, y, *, return_layer=None):
            return self.inner(x, t, y, return_layer=return_layer)

    toy = Family()
    obj = objective(dino, lpips_net, hidden_size=None, model=toy, balancer={"start_step": 0, "every": 1})
    obj(toy, batch(4), step=0, generator=torch.Generator().manual_seed(0))
    assert obj.balancer.updates == 1

    class Silent(StubC2I):
        balance_parameter = Backbone.balance_parameter

    with pytest.raises(NotImplementedError, match="does not name its balance_parameter"):
        build_objective("pixelgen", model=Silent(hidden_size=16), encoders={"dinov2": dino, "lpips": lpips_net})
    with pytest.raises(TypeError, match="model must be the backbone"):
        build_objective("jit_repa", model="jit_b_16", encoders={"dinov2": dino})
    nameless = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"reads hidden_size from the backbone, but Linear.hidden_size is None"):
        build_objective("jit_repa", model=nameless, encoders={"dinov2": dino})


def test_bf16_autocast_objective_values_are_float32_finite_and_close_to_float32(dino, lpips_net):
    model = tiny_jit()
    obj = objective(dino, lpips_net, percept_t_threshold=0.0)
    b = batch(4)
    with torch.no_grad():
        full = obj(model, b, generator=torch.Generator().manual_seed(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = obj(model, b, generator=torch.Generator().manual_seed(3))
    assert all(v.dtype == torch.float32 for v in half.values()) and bool(Objective.all_finite(half))
    for key, value in full.items():
        torch.testing.assert_close(half[key], value, rtol=0.05, atol=0.02)
