"""The example plugin package is discovered through its declared entry point and builds by name."""

import logging
import pathlib

import pytest
import torch
from plugin_utils import on_path, write_dist_info

from pixelgen import build_model, list_models
from pixelgen.registry import plugin_errors, registries

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PLUGIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "plugins" / "pixelgen-example-backbone"


def test_example_plugin_loads_beside_a_broken_one(tmp_path, caplog):
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["pixelgen"]
    assert entry_points == {"example_backbone": "pixelgen_example_backbone"}
    write_dist_info(tmp_path, project["name"], entry_points)
    broken = tmp_path / "broken_backbone_plugin"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('this plugin is deliberately broken')\n")
    write_dist_info(tmp_path, "broken-backbone-plugin", {"broken_backbone": "broken_backbone_plugin"})

    modules = ("pixelgen_example_backbone", "broken_backbone_plugin")
    with caplog.at_level(logging.WARNING, logger="pixelgen.registry"), on_path(tmp_path, PLUGIN_DIR, modules=modules):
        assert "jit_s_16" in list_models("jit_*")
        assert registries.backbone.get("jit_s_16").source == "plugin:example_backbone"
        full = build_model("jit_s_16", device="meta")
        assert full.arch == "jit" and full.config["hidden_size"] == 384 and full.config["depth"] == 12
        assert round(sum(p.numel() for p in full.parameters() if p.requires_grad) / 1e6) == 33
        tiny = build_model("jit_s_16", depth=2, input_size=32).eval()
        with torch.no_grad():
            out = tiny(torch.randn(1, 3, 32, 32), torch.rand(1), torch.tensor([3]))
        assert out.shape == (1, 3, 32, 32)
        # the backbone protocol the objective reads
        assert (tiny.hidden_size, tiny.patch_size) == (384, 16)
        assert tiny.balance_parameter() is tiny.final_layer.linear.weight
        errors = plugin_errors()
        assert "deliberately broken" in errors["broken_backbone"] and "example_backbone" not in errors
        assert any("broken_backbone" in r.getMessage() for r in caplog.records)
    assert "jit_s_16" not in registries.backbone  # plugin parts go away with the plugin
