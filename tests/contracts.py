"""The contract every registered part is held to, as functions: the parametrized tests in test_contracts.py run
them over the registries, and a part added by a plugin is checked by the same functions."""

from __future__ import annotations

import math

import torch
from conftest import TINY_BACKBONES
from torch import nn

from pixelgen import build_model
from pixelgen.losses.context import LossContext
from pixelgen.losses.terms import LossTerm
from pixelgen.registry import registries


def family_of(name: str) -> str:
    """The generic builder a backbone name belongs to (itself for a generic builder)."""
    return registries.backbone.get(name).metadata.get("preset_of", name)


def tiny_backbone(name: str, seed: int = 0) -> nn.Module:
    """The backbone ``name`` built with its family's tiny overrides, weights perturbed so x̂ depends on the input."""
    family = family_of(name)
    assert family in TINY_BACKBONES, f"add tiny overrides for backbone family '{family}' to TINY_BACKBONES"
    torch.manual_seed(seed)
    model = build_model(name, **TINY_BACKBONES[family])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def backbone_inputs(model: nn.Module, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    x = torch.rand(batch, model.in_channels, s, s, generator=g) * 2 - 1
    t = torch.rand(batch, generator=g)
    if model.cond_kind == "class":
        y = torch.randint(0, model.num_classes + 1, (batch,), generator=g)
    else:
        y = torch.randn(batch, model.txt_max_length, model.txt_embed_dim, generator=g)
    return x, t, y


def check_backbone_contract(model: nn.Module) -> None:
    """Attributes, output shape/dtype/finiteness, return_layer, determinism, config and state-dict round trips,
    and the input checks of the backbone contract."""
    assert isinstance(model, nn.Module)
    for attr in ("arch", "config", "input_size", "patch_size", "hidden_size", "in_channels", "cond_kind"):
        assert hasattr(model, attr), f"a backbone needs the attribute {attr}"
    assert model.cond_kind in ("class", "text")
    assert isinstance(model.final_layer.linear.weight, torch.Tensor)
    if model.cond_kind == "class":
        assert isinstance(model.num_classes, int)
    else:
        assert isinstance(model.txt_embed_dim, int) and isinstance(model.txt_max_length, int)

    x, t, y = backbone_inputs(model)
    with torch.no_grad():
        out = model(x, t, y)
        again = model(x, t, y)
        depth = getattr(model, "depth", getattr(model, "num_blocks", None))
        layer = depth // 2
        out_layer, feature = model(x, t, y, return_layer=layer)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert torch.equal(out, again), "eval-mode forward must be deterministic"
    assert out.abs().max() > 0, "a perturbed model must not output zeros"
    grid = (model.input_size // model.patch_size) ** 2
    assert feature.shape == (x.shape[0], grid, model.hidden_size)
    torch.testing.assert_close(out_layer, out, rtol=0, atol=1e-6)

    # config: build_model(arch, **config) rebuilds it; the state dict round-trips bit for bit.
    twin = build_model(model.arch, **model.config).eval()
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    twin.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(twin(x, t, y), out)

    # Input checks: one sentence naming the input.
    bad = [
        ((x[:, :1], t, y), ValueError, "channels"),
        ((x, t * 3, y), ValueError, "t must lie in"),
        ((x, t[:1], y), ValueError, r"t must have shape"),
        ((x * float("nan"), t, y), ValueError, "x contains NaN"),
        ((x.double(), t, y), TypeError, "x is float64"),
        ((x[:0], t[:0], y[:0]), ValueError, "empty batch"),
    ]
    if model.cond_kind == "class":
        bad.append(((x, t, y.float()), TypeError, "integer class labels"))
    import pytest

    for args, error, message in bad:
        with pytest.raises(error, match=message):
            model(*args)
    with pytest.raises(ValueError, match="return_layer"):
        model(x, t, y, return_layer=True)


# -- loss terms ---------------------------------------------------------------------------------------------
def loss_context(term: LossTerm, encoders: dict, *, batch: int = 4, size: int = 32, hidden: int = 16, seed: int = 0):
    """A context of a tiny batch with every field a term may read; x̂ requires grad."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.nn.functional.interpolate(torch.rand(batch, 3, 8, 8, generator=g), size=size, mode="bilinear")
    x = raw * 2 - 1
    t = torch.linspace(0.1, 0.9, batch)
    noise = torch.randn(batch, 3, size, size, generator=g)
    x_t = t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * noise
    x_hat = (x + 0.3 * torch.randn(batch, 3, size, size, generator=g)).clamp(-1.2, 1.2).requires_grad_(True)
    feature = torch.randn(batch, (size // 16) ** 2, hidden, generator=g).requires_grad_(True)  # one per patch
    return LossContext(x=x, raw=raw, x_t=x_t, t=t, x_hat=x_hat, feature=feature, encoders=encoders)


def check_loss_term_contract(name: str, encoders: dict) -> None:
    """A registered loss term: an nn.Module; on a tiny context it
    gives a finite 0-dim float32 value, deterministically, with finite gradients to x̂ or the feature; a term computed per
    sample gives the same number on a subset as with the equivalent mask (what gating relies on)."""
    term = registries.loss.build(name)
    assert isinstance(term, nn.Module), f"loss term '{name}' must build an nn.Module, got {type(term).__name__}"
    roles = tuple(getattr(term, "requires", ()))
    missing = [r for r in roles if r not in encoders]
    assert not missing, f"no tiny encoder for role(s) {missing}"
    if hasattr(term, "setup"):
        term.setup(encoders=encoders, hidden_size=16)
    ctx = loss_context(term, {r: encoders[r] for r in roles})
    value = term(ctx)
    assert isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.float32
    assert math.isfinite(value.item())
    assert torch.equal(term(loss_context(term, ctx.encoders)), value), "a term must be deterministic"
    value.backward()
    grads = [v.grad for v in (ctx.x_hat, ctx.feature) if v.grad is not None]
    assert grads, "a loss term must pass gradients to x̂ or to the backbone feature"
    assert all(torch.isfinite(g).all() for g in grads)
    if isinstance(term, LossTerm) and type(term).forward is LossTerm.forward:
        mask = torch.tensor([False, True, False, True])
        fresh = loss_context(term, ctx.encoders)
        with torch.no_grad():
            on_subset = term(fresh.subset(mask.nonzero().squeeze(1)))
            with_mask = term(fresh.masked(mask))
        torch.testing.assert_close(on_subset, with_mask)
