"""Tiny frozen encoders, stub encoders and tiny backbones for the loss / encoder tests."""

from __future__ import annotations

import torch
from torch import nn

from pixelgen.encoders import build_encoder

# A DINOv2 small enough for CPU tests; LayerScale 1.0 so the random blocks are far from the identity; a 7x7
# position table so the usual grids (2x2, 4x4) exercise the interpolation.
TINY_DINO = dict(embed_dim=24, depth=2, num_heads=2, init_values=1.0, img_size=98)


def tiny_dino(name: str = "dinov2_vitb14", weights="random", **options) -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(name, weights, model_overrides={**TINY_DINO, **options.pop("model_overrides", {})}, **options)


def tiny_lpips(net: str = "squeeze") -> nn.Module:
    torch.manual_seed(0)
    return build_encoder("lpips", "random", net=net)


class CallRecorder(nn.Module):
    """Wraps a frozen encoder and records the batch size of every call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        self.batch_sizes.append(args[0].shape[0])
        return self.inner(*args, **kwargs)


class StubC2I(nn.Module):
    """The backbone contract in a few lines: x̂ = tanh(conv(x_t) + a·t + e[y]), feature = patch tokens."""

    arch, cond_kind = "stub", "class"

    def __init__(self, num_classes: int = 10, hidden_size: int = 16, patch_size: int = 16):
        super().__init__()
        self.num_classes, self.hidden_size, self.patch_size = num_classes, hidden_size, patch_size
        self.embed = nn.Embedding(num_classes + 1, 3)
        self.mix = nn.Conv2d(3, 3, 3, padding=1)
        self.patch = nn.Conv2d(3, hidden_size, patch_size, stride=patch_size)
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(3, 3)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def balance_parameter(self):
        return self.final_layer.linear.weight

    def forward(self, x, t, y, *, return_layer=None):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        h = self.mix(x) + t.view(-1, 1, 1, 1).to(x.dtype) + self.embed(y).view(-1, 3, 1, 1)
        x_hat = torch.tanh(self.final_layer.linear(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        if return_layer is None:
            return x_hat
        return x_hat, self.patch(h).flatten(2).transpose(1, 2)


def tiny_jit(**overrides) -> nn.Module:
    """A 2-block JiT with a randomised (not zero) final layer, so x̂ depends on the input."""
    import pixelgen

    torch.manual_seed(0)
    config = dict(
        input_size=32,
        patch_size=16,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        in_context_len=0,
        in_context_start=0,
        bottleneck_dim=8,
    )
    model = pixelgen.build_model("jit", **{**config, **overrides})
    for layer in (model.final_layer.linear, *(b.adaLN_modulation[-1] for b in model.blocks)):
        nn.init.normal_(layer.weight, std=0.05)
    return model


def images(batch: int = 4, size: int = 32, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(image in [-1, 1], raw in [0, 1]) of a smooth random batch."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.nn.functional.interpolate(
        torch.rand(batch, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear"
    ).to(dtype)
    return raw * 2 - 1, raw
