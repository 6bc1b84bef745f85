"""Example pixelgen plugin: a small class-to-image JiT registered as ``jit_s_16``.

Being a JiT, it states the backbone protocol (``hidden_size``, ``patch_size``, ``balance_parameter()``) through
the JiT class; a new family would subclass ``pixelgen.backbones.Backbone`` and state them on its class.
"""

from __future__ import annotations

from typing import Any

import pixelgen

JIT_S_16: dict[str, Any] = dict(
    input_size=256,
    patch_size=16,
    in_channels=3,
    hidden_size=384,
    depth=12,
    num_heads=6,
    mlp_ratio=4.0,
    attn_drop=0.0,
    proj_drop=0.0,
    num_classes=1000,
    use_bottleneck=True,
    bottleneck_dim=128,
    in_context_len=32,
    in_context_start=4,
)


@pixelgen.hookimpl
def pixelgen_register(registries) -> None:
    @registries.backbone.register("jit_s_16", preset_of="jit", config=dict(JIT_S_16))
    def jit_s_16(**overrides: Any):
        """JiT-S/16 (~33M), 256 px; keyword overrides use JiT's argument names."""
        return registries.backbone.build("jit", **{**JIT_S_16, **overrides})
