"""The example loss plugin (plugins/pixelgen-example-loss) is found through its entry point and used by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loss_helpers import StubC2I, images, tiny_dino
from plugin_utils import on_path, write_dist_info

from pixelgen.losses import build_objective
from pixelgen.registry import loaded_plugins, registries

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugins" / "pixelgen-example-loss" / "src"


@pytest.fixture
def plugin(tmp_path):
    write_dist_info(tmp_path, "pixelgen-example-loss", {"example_loss": "pixelgen_example_loss.plugin"})
    with on_path(tmp_path, PLUGIN_SRC, modules=("pixelgen_example_loss",)):
        yield


@pytest.fixture(scope="module")
def dino():
    return tiny_dino()


def test_the_plugin_registers_its_term_through_the_entry_point(plugin):
    assert "focal_frequency" in registries.loss.list()
    assert registries.loss.get("focal_frequency").source == "plugin:example_loss"
    term = registries.loss.build("focal_frequency")
    assert term.gated and term.perceptual
    assert "example_loss" in loaded_plugins()


def test_the_plugin_term_contributes_to_the_total(plugin, dino):
    obj = build_objective(
        "jit_repa",
        hidden_size=16,
        align_layer=1,
        encoders={"dinov2": dino},
        extra_losses=["focal_frequency"],
        weights={"focal_frequency": 0.5},
        percept_t_threshold=0.3,
    )
    assert list(obj.terms) == ["flow_matching", "repa", "focal_frequency"] and obj.weights["focal_frequency"] == 0.5
    image, raw = images(4)
    model = StubC2I(hidden_size=16)
    t = torch.tensor([0.2, 0.5, 0.7, 0.9])
    noise = torch.randn_like(image)
    out = obj.evaluate(model, image, raw, torch.arange(4), t, noise)
    from pixelgen_example_loss import focal_frequency_distance

    x_hat = model(t.view(-1, 1, 1, 1) * image + (1 - t.view(-1, 1, 1, 1)) * noise, t, torch.arange(4))
    torch.testing.assert_close(
        out["focal_frequency"], focal_frequency_distance(x_hat[1:], image[1:]).mean()
    )  # gated: t >= 0.3
    expected = out["flow_matching"] + 0.5 * out["repa"] + 0.5 * out["focal_frequency"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    out["loss"].backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_the_focal_frequency_distance_formula(plugin):
    from pixelgen_example_loss import focal_frequency_distance

    a = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(focal_frequency_distance(a, a), torch.zeros(2))
    # A single frequency error: the weight of the only non-zero frequency is 1, so the loss is its |ΔF|² / (C·H·W).
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0] = 0.5  # a constant image: only the DC coefficient differs, by 0.5·8 (orthonormal FFT)
    torch.testing.assert_close(
        focal_frequency_distance(delta, torch.zeros_like(delta)), torch.tensor([(0.5 * 8) ** 2 / 64])
    )
    # Two frequencies: DC off by 0.5·8 = 4 and the horizontal Nyquist one by 0.25·8 = 2, weighted by (|ΔF| / 4)^alpha.
    delta = delta + 0.25 * (-1.0) ** torch.arange(8.0)
    for alpha, weak_weight in ((1.0, 0.5), (2.0, 0.25)):
        expected = torch.tensor([(4.0**2 + weak_weight * 2.0**2) / 64])
        torch.testing.assert_close(focal_frequency_distance(delta, torch.zeros_like(delta), alpha), expected)
