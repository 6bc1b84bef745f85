"""Contract tests over the registries: every registered backbone, loss term, frozen encoder, text conditioner
and dataset is built, run on a tiny input and checked against its contract. The parameters are read from the
registries at collection time, so a new part is tested by being registered. (Samplers have their own contract
tests next to the sampler code's tests.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import DATA, TINY_BACKBONES, TINY_DATASETS, TINY_ENCODERS
from contracts import check_backbone_contract, check_loss_term_contract, family_of, tiny_backbone
from plugin_utils import on_path, write_dist_info

from pixelgen import build_model
from pixelgen.data import collate
from pixelgen.registry import registries

ROOT = Path(__file__).resolve().parents[1]


def _names(kind: str) -> list[str]:
    return registries[kind].list()


# -- backbones ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _names("backbone"))
def test_backbone_contract(name):
    check_backbone_contract(tiny_backbone(name))


@pytest.mark.parametrize("name", _names("backbone"))
def test_backbone_builds_at_full_size_on_meta_and_its_config_rebuilds_it(name):
    model = build_model(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    twin = build_model(model.arch, device="meta", **model.config)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in twin.parameters()) > 0
    assert model.arch == family_of(name)


# The reference parameter counts of the original code, for the presets it defines.
_REFERENCE_COUNTS = {
    "jit_b_16": "B/16",
    "jit_l_16": "L/16",
    "pixelgen_l_16": "L/16",
    "jit_h_16": "H/16",
    "pixelgen_xl_16": "XL/16 (PixelGen config)",
    "pixelgen_xxl_16_t2i": "XXL/16 T2I @256",
}


@pytest.mark.parametrize("name", sorted(set(_REFERENCE_COUNTS) & set(_names("backbone"))))
def test_preset_parameter_counts_equal_the_originals(name):
    expected = json.loads((DATA / "upstream_reference.json").read_text())["_param_counts"][_REFERENCE_COUNTS[name]]
    model = build_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == expected["all_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected["trainable"]


def test_every_backbone_family_has_tiny_overrides():
    families = {family_of(n) for n in _names("backbone")}
    assert families <= set(TINY_BACKBONES), f"add tiny overrides for {sorted(families - set(TINY_BACKBONES))}"


# -- loss terms ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoders(tiny_dino_encoder, tiny_lpips_encoder):
    return {"dinov2": tiny_dino_encoder, "lpips": tiny_lpips_encoder}


@pytest.mark.parametrize("name", _names("loss"))
def test_loss_term_contract(name, encoders):
    check_loss_term_contract(name, encoders)


TOY_LOSS_PLUGIN = '''
import torch
from torch import nn

import pixelgen
from pixelgen.losses.terms import LossTerm


class EdgeTerm(LossTerm):
    """Mean absolute difference of horizontal gradients (a toy term)."""

    gated = True

    def per_sample(self, ctx):
        def dx(v):
            return v[..., 1:] - v[..., :-1]

        return (dx(ctx.x_hat) - dx(ctx.x)).abs().flatten(1).mean(1)


@pixelgen.hookimpl
def pixelgen_register(registries):
    registries.loss.register("toy_edges")(EdgeTerm)
'''


def test_a_loss_term_added_through_a_plugin_goes_through_the_contract(tmp_path, encoders):
    (tmp_path / "toy_loss_plugin.py").write_text(TOY_LOSS_PLUGIN)
    write_dist_info(tmp_path, "toy-loss-plugin", {"toy_loss": "toy_loss_plugin"})
    with on_path(tmp_path, modules=("toy_loss_plugin",)):
        assert registries.loss.get("toy_edges").source == "plugin:toy_loss"
        check_loss_term_contract("toy_edges", encoders)
        broken = registries.loss.register("toy_broken")(lambda **kw: lambda ctx: ctx.x.mean())
        with pytest.raises(AssertionError, match="must build an nn.Module"):
            check_loss_term_contract("toy_broken", encoders)
        registries.loss.unregister("toy_broken")
        del broken
    assert "toy_edges" not in registries.loss


def _example_plugins() -> list[tuple[str, str, Path]]:
    """(entry-point name, value, source folder) of every example plugin package under plugins/."""
    found = []
    for project in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        meta = tomllib.loads(project.read_text())
        source = project.parent / "src" if (project.parent / "src").is_dir() else project.parent
        for ep_name, value in meta.get("project", {}).get("entry-points", {}).get("pixelgen", {}).items():
            found.append((ep_name, value, source))
    return found


@pytest.mark.parametrize("ep_name,value,source", _example_plugins(), ids=lambda v: v if isinstance(v, str) else "")
def test_parts_of_the_example_plugins_meet_their_contracts(tmp_path, encoders, ep_name, value, source):
    before = {kind: set(registries[kind].list()) for kind in ("backbone", "loss")}
    write_dist_info(tmp_path, f"example-{ep_name}", {ep_name: value})
    with on_path(tmp_path, source, modules=(value.split(".")[0],)):
        added = {kind: sorted(set(registries[kind].list()) - before[kind]) for kind in before}
        assert any(added.values()), f"plugin {ep_name} registered nothing"
        for name in added["backbone"]:
            check_backbone_contract(tiny_backbone(name))
        for name in added["loss"]:
            check_loss_term_contract(name, encoders)


# -- frozen encoders ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _names("encoder"))
def test_encoder_contract(name):
    from pixelgen.encoders import build_encoder

    family = registries.encoder.get(name).metadata.get("family", name)
    torch.manual_seed(0)
    enc = build_encoder(name, "random", **TINY_ENCODERS.get(family, {}))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training, "a frozen encoder stays in eval mode"
    raw = torch.rand(2, 3, 32, 32)
    image = (raw * 2 - 1).requires_grad_(True)
    if family == "lpips":
        out, again = enc(image, image.detach().flip(-1)), enc(image, image.detach().flip(-1))
        assert out.shape == (2,)
        bad = image.detach() * 127.5 + 127.5
    else:
        out, again = enc(raw.requires_grad_(True)), enc(raw)
        assert out.ndim == 3 and out.shape[0] == 2
        bad = raw.detach() * 255
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.equal(out.detach(), again.detach())
    out.sum().backward()  # gradients reach the input, not the frozen weights
    assert all(p.grad is None for p in enc.parameters())
    with pytest.raises(ValueError, match="0-255"):
        enc(bad, bad) if family == "lpips" else enc(bad)


# -- text conditioners --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _names("conditioner"))
def test_conditioner_contract(name):
    entry = registries.conditioner.get(name)
    if not entry.metadata.get("random"):
        pytest.skip(f"'{name}' needs downloaded weights; its random-weight sibling is checked instead")
    from pixelgen.conditioners import build_conditioner

    cond = build_conditioner(name, max_length=6)
    enc = cond(["a cat", "a very long prompt about a dog on a hill"])
    again = cond(["a cat", "a very long prompt about a dog on a hill"])
    assert enc.embeddings.shape[:2] == (2, 6) and enc.embeddings.dtype == torch.float32
    assert enc.mask.shape == (2, 6) and enc.mask.dtype == torch.bool
    assert enc.lengths[0] < enc.lengths[1] <= 6
    assert torch.isfinite(enc.embeddings).all() and torch.equal(enc.embeddings, again.embeddings)
    assert not any(p.requires_grad for p in cond.parameters())
    with pytest.raises((TypeError, ValueError), match="prompts"):
        cond(3)


# -- datasets -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _names("dataset"))
def test_dataset_contract(name, tmp_path):
    from pixelgen.data import build_dataset

    options = TINY_DATASETS[name](tmp_path) if name in TINY_DATASETS else {"resolution": 16}
    try:
        data = build_dataset(name, **options)
    except Exception as exc:  # pragma: no cover - a new dataset says how to make it tiny
        pytest.fail(f"dataset '{name}' could not be built with {options} ({exc}); add it to TINY_DATASETS")
    kind = registries.dataset.get(name).metadata.get("kind")
    samples = [data[i] for i in range(min(2, len(data)))] if hasattr(data, "__len__") else []
    if not samples:
        samples = [s for _, s in zip(range(2), iter(data))]
    assert samples, f"dataset '{name}' yielded nothing"
    for s in samples:
        assert s["image"].shape == s["raw"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
        assert s["raw"].min() >= 0 and s["raw"].max() <= 1
        torch.testing.assert_close(s["image"], s["raw"] * 2 - 1)
        if kind == "class":
            assert isinstance(s["label"], int) and 0 <= s["label"] < data.num_classes
        else:
            assert isinstance(s["caption"], str) and s["caption"]
    batch = collate(samples)
    assert batch["image"].shape == (len(samples), 3, 16, 16)
    if hasattr(data, "__len__"):
        assert torch.equal(data[0]["image"], samples[0]["image"]), "a sample must not change between reads"
