"""The TF-compatible InceptionV3 of FID / IS / sFID / precision-recall, through torch-fidelity.

torch-fidelity ports the 2015 TensorFlow Inception graph that the ADM evaluation suite (and every FID number
in the diffusion literature) uses, including TensorFlow 1.x's bilinear resize to 299 px, so its features
match the TF ones. We use its network and add one forward hook for the sFID features. Per image we return:

* ``pool``: the 2048-d ``pool_3`` features (FID, precision/recall);
* ``logits``: the 1008-d logits without the bias (``softmax/logits/MatMul``), whose softmax is the Inception
  Score's class distribution, as in the ADM suite;
* ``spatial``: the first 7 channels of ``mixed_6/conv`` (the 1x1 branch of block Mixed_6d, after its ReLU),
  flattened in TensorFlow's (H, W, C) order: 17 x 17 x 7 = 2023 values (sFID, as in the ADM suite).

Weights follow :mod:`pixelgen.utils.hub`: explicit path → torch hub checkpoint folder (where torch-fidelity
itself caches the file) → download when online → :class:`~pixelgen.utils.hub.WeightsNotFoundError`.
``weights="random"`` builds the architecture with seeded random weights (benchmarks and tests only).
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import torch
from torch import nn

from pixelgen.utils.checks import check_tensor
from pixelgen.utils.hub import WeightSource, resolve_weights
from pixelgen.utils.io import safe_torch_load

__all__ = [
    "INCEPTION_WEIGHTS",
    "InceptionFeatures",
    "build_inception",
    "check_uint8_images",
    "weights_digest",
]

INCEPTION_WEIGHTS = WeightSource(
    filename="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    description="the TF-compatible InceptionV3 used by FID/IS (torch-fidelity's port of the 2015 TensorFlow graph)",
    option="inception_weights=<path> (pixelgen eval --inception-weights PATH)",
)

_SPATIAL_CHANNELS = 7  # the ADM suite keeps the first 7 channels of mixed_6/conv for sFID


def check_uint8_images(images: object, name: str = "images") -> torch.Tensor:
    """uint8 (B, 3, H, W) images, the input every feature extractor here takes."""
    x = check_tensor(images, name, ndim=4)
    if x.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 images with values 0-255, got {x.dtype}.")
    if x.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(x.shape)}.")
    return x


def _torch_fidelity_inception():
    from ..utils.extras import require_extra

    module = require_extra("torch_fidelity.feature_extractor_inceptionv3", "eval", feature="The Inception metrics")
    return module.FeatureExtractorInceptionV3


def _make_network(state: dict[str, torch.Tensor] | None, seed: int) -> nn.Module:
    """torch-fidelity's network, loaded from a state dict we read safely, or with seeded random weights.

    torch-fidelity's constructor always loads weights itself (with a pickle-enabled ``torch.load``), so we hand
    it an in-memory copy of a plain tensor dict; for random weights the subclass below replaces the load.
    """
    base = _torch_fidelity_inception()

    class _Network(base):  # type: ignore[misc, valid-type]
        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D401
            if state_dict:
                return super().load_state_dict(state_dict, strict=strict, assign=assign)
            _random_init(self, seed)
            return None

    buffer = io.BytesIO()
    torch.save(state or {}, buffer)
    buffer.seek(0)
    return _Network("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=buffer)


@torch.no_grad()
def _random_init(net: nn.Module, seed: int) -> None:
    """He-normal convolutions and identity batch norms, so random features keep an O(1) scale."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()


class InceptionFeatures(nn.Module):
    """uint8 (B, 3, H, W) → ``{"pool": (B, 2048), "logits": (B, 1008), "spatial": (B, 2023)}`` (float32).

    ``tag`` names the weights (used in statistic-cache keys, so random and real features never mix).
    """

    feature_dims = {"pool": 2048, "logits": 1008, "spatial": 17 * 17 * _SPATIAL_CHANNELS}

    def __init__(self, network: nn.Module, tag: str):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.tag = tag
        self._spatial: torch.Tensor | None = None
        self.network.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._spatial = output[:, :_SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_uint8_images(images)
        device = next(self.network.parameters()).device
        pool, logits = self.network(images.to(device))
        spatial, self._spatial = self._spatial, None
        assert spatial is not None  # the hook runs on every forward
        return {"pool": pool.float(), "logits": logits.float(), "spatial": spatial}


def weights_digest(path: Path) -> str:
    """Content digest of a weights file (a folder: of its files), so statistic caches never mix weights."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file():
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def build_inception(
    weights: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> InceptionFeatures:
    """The TF-compatible Inception feature extractor.

    ``weights``: ``None`` resolves the pretrained file offline-first (see the module doc), a path loads that
    file (a plain state dict; read with ``weights_only=True``), ``"random"`` uses seeded random weights, which
    give meaningless metric values (for timing and tests only).
    """
    if weights == "random":
        net, tag = _make_network(None, seed), f"inception-random-{seed}"
    else:
        path = resolve_weights(INCEPTION_WEIGHTS, weights)
        state = safe_torch_load(
            path, consent="Inception weights are read as tensors only: save them as a state dict of tensors"
        )
        if not isinstance(state, dict) or "Mixed_6d.branch1x1.conv.weight" not in state:
            raise ValueError(
                f"{path} is not a torch-fidelity InceptionV3 state dict (expected keys such as 'Mixed_6d.branch1x1.conv.weight')."
            )
        net, tag = _make_network(state, seed), f"inception-{weights_digest(Path(path))}"
    return InceptionFeatures(net, tag).to(device)
