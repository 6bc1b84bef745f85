"""Frozen LPIPS (the ``lpips`` package) with its ImageNet trunk resolved offline-first.

The package builds its trunk through torchvision, which would download the ImageNet weights on the spot.
We build it with a random trunk instead (no download), then load the trunk weights found by the weight
resolution rule (``vgg16-397923af.pth`` etc. in the torch hub cache, where torchvision itself keeps them).
The calibrated linear heads ship inside the package and are always loaded from it.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from ..registry import registries
from ..utils.checks import check_image_batch, check_same_shape
from ..utils.hub import WeightSource
from .base import (
    FrozenEncoder,
    WeightsSpec,
    at_least_float32,
    check_pixel_range,
    load_weight_file,
    resolve_encoder_weights,
)

__all__ = ["LPIPSEncoder", "LPIPS_TRUNKS", "lpips_weight_source"]

# trunk -> (torchvision file, HF repo holding the same torchvision weights under the same `features.*` names)
LPIPS_TRUNKS: dict[str, tuple[str, str | None]] = {
    "vgg": ("vgg16-397923af.pth", "timm/vgg16.tv_in1k"),
    "alex": ("alexnet-owt-7be5be79.pth", None),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", None),
}
# Smallest image side each trunk accepts (its pooling pyramid collapses below this).
MIN_SIDE = {"vgg": 16, "alex": 31, "squeeze": 17}


def lpips_weight_source(net: str) -> WeightSource:
    filename, hf_repo = LPIPS_TRUNKS[net]
    return WeightSource(
        filename=filename,
        url=f"https://download.pytorch.org/models/{filename}",
        hf_repo=hf_repo,
        hf_filename="model.safetensors" if hf_repo else None,
        description=f"the LPIPS {net} trunk (torchvision ImageNet weights)",
        option=f"build_encoder('lpips', net='{net}', weights=<path>) (objective: encoders={{'lpips': {{'weights': <path>}}}})",
    )


def _without_autocast(device_type: str):
    """Autocast switched off on ``device_type`` (a no-op where autocast does not exist, e.g. the meta device)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _unit_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``f / (‖f‖ + eps)`` over channels, as the package's ``normalize_tensor``, in float32 and after an exact
    power-of-two rescaling per position (the same bits, without overflow of the squares)."""
    f = at_least_float32(features)
    _, exponent = torch.frexp(f.detach().abs().amax(dim=1, keepdim=True))
    f = torch.ldexp(f, -exponent)
    return f / (
        torch.sqrt(torch.sum(f**2, dim=1, keepdim=True))
        + torch.ldexp(torch.full_like(exponent, eps, dtype=f.dtype), -exponent)
    )


class LPIPSEncoder(FrozenEncoder):
    """Frozen LPIPS v0.1; ``forward(pred, target)`` -> per-sample distances (B,), inputs in [-1, 1].

    Args:
        net: trunk, ``vgg`` (PixelGen's choice), ``alex`` or ``squeeze``.
        weights: the trunk's ImageNet weights: ``None`` (resolution rule), ``"random"`` (random trunk; the
            package's linear heads are still loaded), or a path to a torchvision (or timm ``features.*``) file.
        dtype / device: where the frozen network lives (outputs are float32, float64 for a float64 encoder).
        channels_last: keep the trunk's convolution weights in channels-last layout, so cuDNN runs its
            convolutions in NHWC (the tensor cores' native layout; faster in bf16/fp16 on GPUs). Same
            function, rounding may differ in the last bits.
    """

    def __init__(
        self,
        net: str = "vgg",
        *,
        weights: WeightsSpec = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be True or False, got {channels_last!r}.")
        if net not in LPIPS_TRUNKS:
            raise KeyError(f"Unknown LPIPS trunk '{net}'; choose one of {', '.join(LPIPS_TRUNKS)}.")
        import lpips

        self.net = net
        path = resolve_encoder_weights(weights, lpips_weight_source(net))
        with warnings.catch_warnings():  # torchvision's deprecation notice for the package's `pretrained=` call
            warnings.simplefilter("ignore")
            self.metric = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if path is not None:
            self._load_trunk(path)
        self.freeze(dtype, device)
        self.channels_last = channels_last
        if channels_last:  # convolutions follow their weights' layout, so the activations become NHWC too
            self.metric.to(memory_format=torch.channels_last)

    def _load_trunk(self, path) -> None:
        trunk = self.metric.net
        # The package splits torchvision's `features` Sequential into slices but keeps the layer indices as names.
        slice_of = {
            index: slice_name for slice_name, part in trunk.named_children() for index, _ in part.named_children()
        }
        state = {}
        for key, value in load_weight_file(path).items():
            head, _, rest = key.partition(".")
            index, _, leaf = rest.partition(".")
            if head == "features" and index in slice_of:
                state[f"{slice_of[index]}.{index}.{leaf}"] = value
        missing, _, wrong = self.state_mismatch(trunk, state)  # keys the trunk lacks are ignored
        if missing or wrong:
            keys = missing or wrong
            raise ValueError(
                f"The weights in {path} do not fit the LPIPS {self.net} trunk ({'missing' if missing else 'wrong shape'}: "
                f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}); expected torchvision '{LPIPS_TRUNKS[self.net][0]}'."
            )
        trunk.load_state_dict(state)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:
        """Per-sample LPIPS (B,) between ``pred`` and ``target`` (B, 3, H, W) in [-1, 1].

        Only ``target`` is range-checked (``check_range``): predictions are used unclamped,
        as the released models were trained.
        """
        check_image_batch(pred, "LPIPS prediction", channels=3)
        check_same_shape(pred, target, "LPIPS prediction", "LPIPS target")
        side = min(pred.shape[-2:])
        if side < MIN_SIDE[self.net]:
            raise ValueError(
                f"LPIPS-{self.net} needs images of at least {MIN_SIDE[self.net]} px per side, got {pred.shape[-2]}x{pred.shape[-1]}."
            )
        if check_range:
            check_pixel_range(target, "The LPIPS target", (-1.0, 1.0))
        return self._distance(pred.to(self.dtype), target.to(self.dtype))

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The package's LPIPS v0.1 formula, with the feature normalisation and what follows it in float32
        (under autocast the trunk's features are bf16) and safe for features of any finite magnitude."""
        m = self.metric
        features = m.net.forward(m.scaling_layer(pred)), m.net.forward(m.scaling_layer(target))
        total = None
        for k, (a, b) in enumerate(zip(*features)):
            diff = (_unit_channels(a) - _unit_channels(b)) ** 2
            conv = m.lins[k].model[-1]  # the calibrated 1x1 head (its dropout is off in eval mode)
            with _without_autocast(diff.device.type):
                layer = F.conv2d(diff, conv.weight.to(diff.dtype)).mean(dim=(2, 3), keepdim=True)
            total = layer if total is None else total + layer
        return total.reshape(pred.shape[0])

    def extra_repr(self) -> str:
        return f"net={self.net}, channels_last={self.channels_last}"


@registries.encoder.register("lpips", family="lpips")
def build_lpips(**options) -> LPIPSEncoder:
    """Frozen LPIPS v0.1 (VGG by default; net='alex'|'squeeze'), inputs in [-1, 1]."""
    return LPIPSEncoder(**options)
