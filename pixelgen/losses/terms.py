"""Loss terms: each one is registered in ``registries.loss`` and usable on its own.

A term is an ``nn.Module`` whose ``forward(ctx)`` maps a :class:`~pixelgen.losses.context.LossContext` to a
0-dim tensor. Most terms implement ``per_sample(ctx) -> (B,)`` and inherit ``forward = ctx.reduce(...)``,
which is what lets the objective gate them either on a subset of the batch or with a mask and get the same
number. Class attributes declare what the objective must provide:

* ``gated``: apply only to samples with t ≥ the perceptual threshold (the objective hands the term a subset);
* ``perceptual``: scaled by the adaptive perceptual weight in the total;
* ``requires``: roles of the frozen encoders it reads (``"dinov2"``, ``"lpips"`` ...);
* ``needs_feature``: the backbone must return its hidden tokens (``return_layer``);
* ``default_weight``: λ when the objective's ``weights`` does not name the term.

``setup(encoders=..., hidden_size=...)`` is called once by the objective after the encoders are built, so a
term can size its own trainable parts (the REPA projector) before the optimiser is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.base import at_least_float32
from ..flow import T_EPS, x_to_v
from ..registry import registries
from .context import LossContext

__all__ = [
    "LossTerm",
    "register_term",
    "cosine_distance",
    "power_of_two_normalised",
    "FlowMatchingTerm",
    "RepaTerm",
    "LpipsTerm",
    "PDinoTerm",
    "PDINO_GATING",
]


class LossTerm(nn.Module):
    """Base class of loss terms (see the module doc for the attributes a term declares)."""

    gated: bool = False
    perceptual: bool = False
    requires: tuple[str, ...] = ()
    needs_feature: bool = False
    default_weight: float = 1.0

    def setup(self, *, encoders: Mapping[str, nn.Module], hidden_size: int | None) -> None:
        """Size trainable parts from the objective's encoders / backbone width (default: nothing to do)."""

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement per_sample(ctx) or forward(ctx).")

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return ctx.reduce(self.per_sample(ctx))


def register_term(name: str):
    """Class decorator: register a :class:`LossTerm` under ``name`` (its declarations are class attributes)."""

    def decorator(cls: type[LossTerm]) -> type[LossTerm]:
        registries.loss.register(name)(cls)
        return cls

    return decorator


def power_of_two_normalised(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` in float32 (float64 kept), divided along ``dim`` by the power of two at its largest magnitude.

    Scaling by a power of two is exact, so a scale-invariant quantity computed from the result (a cosine, a
    unit vector) has the same bits as from ``x``, but squares of bf16 activations of 1e20 no longer overflow.
    """
    x = at_least_float32(x)
    _, exponent = torch.frexp(x.detach().abs().amax(dim=dim, keepdim=True))
    return torch.ldexp(x, -exponent)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over tokens of ``1 - cos`` for (B, N, D) token sets, in float32 whatever the autocast
    dtype of ``a`` and ``b`` (REPA and P-DINO), safe for activations of any finite magnitude."""
    cos = F.cosine_similarity(power_of_two_normalised(a), power_of_two_normalised(b), dim=-1)
    return (1.0 - cos).mean(dim=1)


@register_term("flow_matching")
class FlowMatchingTerm(LossTerm):
    """Flow matching on velocities from x-predictions.

    ``FM = mean (v̂ - v*)²`` with ``v̂ = (x̂ - x_t)/max(1-t, t_eps)``, ``v* = (x - x_t)/max(1-t, t_eps)``, i.e. the
    x-space MSE weighted by ``1/max(1-t, t_eps)²`` (capped at 400 for t_eps = 0.05).
    """

    def __init__(self, t_eps: float = T_EPS):
        super().__init__()
        if not 0.0 < t_eps <= 1.0:
            raise ValueError(f"t_eps must lie in (0, 1], got {t_eps!r}.")
        self.t_eps = t_eps

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        x_t = at_least_float32(ctx.x_t)
        v_pred = x_to_v(at_least_float32(ctx.x_hat), x_t, ctx.t, self.t_eps)
        v_target = x_to_v(at_least_float32(ctx.x), x_t, ctx.t, self.t_eps)
        return (v_pred - v_target).pow(2).flatten(1).mean(dim=1)

    def extra_repr(self) -> str:
        return f"t_eps={self.t_eps}"


@register_term("repa")
class RepaTerm(LossTerm):
    """REPA: ``mean over (B, N) of 1 - cos(proj(h), DINOv2(clean raw image))``.

    The projector is owned (and trained) here: Linear(H, H), SiLU, Linear(H, H), SiLU, Linear(H, D) with
    PyTorch's default initialisation, stored as ``proj.0.{0,2,4}`` so the released checkpoints'
    ``diffusion_trainer.proj.*`` weights load (:meth:`load_upstream_state`). The DINOv2 target is computed
    once per batch without gradient and shared with P-DINO. Never gated.

    Args:
        hidden_size: backbone width H (else taken from the objective's ``hidden_size`` at ``setup``).
        encoder_dim: target width D (else the DINOv2 encoder's ``embed_dim``: 768 for ViT-B/14).
        encoder: role of the frozen encoder providing targets.
        layers: DINOv2 blocks of the target (default: the encoder's, i.e. the last one).
    """

    requires = ("dinov2",)
    needs_feature = True
    default_weight = 0.5

    def __init__(
        self,
        hidden_size: int | None = None,
        encoder_dim: int | None = None,
        *,
        encoder: str = "dinov2",
        layers: Sequence[int] | None = None,
    ):
        super().__init__()
        self.encoder_role = encoder
        self.requires = (encoder,)
        self.layers = None if layers is None else tuple(layers)
        self.proj = nn.ModuleList()
        if hidden_size is not None and encoder_dim is not None:
            self._build(hidden_size, encoder_dim)

    def _build(self, hidden: int, dim: int) -> None:
        for value, what in ((hidden, "hidden_size"), (dim, "encoder_dim")):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"REPA's {what} must be a positive integer, got {value!r}.")
        self.proj.append(
            nn.Sequential(
                nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
            )
        )

    def setup(self, *, encoders: Mapping[str, nn.Module], hidden_size: int | None) -> None:
        if len(self.proj):
            return
        if hidden_size is None:
            raise ValueError(
                "The REPA projector needs the backbone width: pass model=model (or hidden_size=...) to build_objective."
            )
        encoder = encoders[self.encoder_role]
        self._build(hidden_size, int(encoder.embed_dim))

    def load_upstream_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load projector weights from an original checkpoint (``diffusion_trainer.proj.*`` or ``proj.*`` keys)."""
        ours = {}
        for key, value in state.items():
            for prefix in ("diffusion_trainer.proj.", "proj."):
                if key.startswith(prefix):
                    ours[key[len(prefix) :]] = value
        if not ours:
            raise KeyError(
                "No REPA projector weights ('diffusion_trainer.proj.*' or 'proj.*') in the given state dict."
            )
        if not len(self.proj):
            raise RuntimeError(
                "The REPA projector is not built yet; build the objective (or pass hidden_size and encoder_dim) first."
            )
        self.proj.load_state_dict(ours)

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        if ctx.feature is None:
            raise ValueError(
                "REPA needs the backbone's hidden tokens; the objective must call the model with return_layer."
            )
        if not len(self.proj):
            raise RuntimeError(
                "The REPA projector is not built; pass hidden_size and encoder_dim, or use it inside an Objective."
            )
        target = ctx.clean_features(self.encoder_role, self.layers)
        feat = ctx.feature
        if feat.ndim != 3 or feat.shape[:2] != target.shape[:2]:
            raise ValueError(
                f"REPA pairs backbone tokens with {self.encoder_role} tokens one to one, but got backbone features of shape "
                f"{tuple(feat.shape)} and targets of shape {tuple(target.shape)}; the encoder's base_patch_size must equal the backbone patch size."
            )
        return cosine_distance(self.proj[0](feat), target)


@register_term("lpips")
class LpipsTerm(LossTerm):
    """LPIPS between x̂ and x, both in [-1, 1] as they are (x̂ unclamped), per sample. Gated.

    Resize rule (as the released models were trained): only when ``patch_size != base_patch_size`` (16), both
    images are resized bilinearly with antialiasing to side ``int(H·16/patch_size)`` (height used for both sides).
    """

    gated = True
    perceptual = True
    requires = ("lpips",)
    default_weight = 0.1

    def __init__(self, patch_size: int = 16, base_patch_size: int = 16, *, encoder: str = "lpips"):
        super().__init__()
        if patch_size < 1 or base_patch_size < 1:
            raise ValueError(
                f"patch sizes must be positive, got patch_size={patch_size}, base_patch_size={base_patch_size}."
            )
        self.patch_size, self.base_patch_size = patch_size, base_patch_size
        self.encoder_role = encoder
        self.requires = (encoder,)

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        pred, target = ctx.x_hat, ctx.x
        if self.patch_size != self.base_patch_size:
            side = int(pred.shape[-2] * self.base_patch_size / self.patch_size)
            pred, target = (
                F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
                for v in (pred, target)
            )
        return ctx.encoder(self.encoder_role)(pred, target, check_range=False)  # the objective checked x


PDINO_GATING = ("original", "intended")


@register_term("pdino")
class PDinoTerm(LossTerm):
    """P-DINO: ``1 - mean cos(DINOv2((x̂+1)/2), DINOv2(raw))`` over tokens and samples.

    Gradients flow through the frozen DINOv2 into x̂ (unclamped); the clean-image features are the ones REPA
    already computed.

    ``gating``:
      * ``"original"`` (default, faithful): the original's broadcast bug. With at least one sample at or above
        the threshold the value is ``1 - mean cos`` over *all* samples (no gating at all); with none, it is the
        constant 1 without gradient (and nothing is computed). The released checkpoints were trained so.
      * ``"intended"``: a real gated term: the masked mean over the samples with t ≥ threshold only (0
        without gradient when none qualifies); the objective runs DINOv2 on those samples only.
    Without a threshold in the objective both modes are the plain mean over all samples.
    """

    perceptual = True
    requires = ("dinov2",)
    default_weight = 0.01

    def __init__(self, gating: str = "original", *, layers: Sequence[int] | None = None, encoder: str = "dinov2"):
        super().__init__()
        if gating not in PDINO_GATING:
            raise ValueError(f"pdino gating must be one of {', '.join(PDINO_GATING)}, got {gating!r}.")
        self.gating = gating
        self.gated = gating == "intended"
        self.layers = None if layers is None else tuple(layers)
        self.encoder_role = encoder
        self.requires = (encoder,)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if self.gating == "original" and ctx.gate is not None:
            if ctx.static:  # the same value as a select, so no shape or branch depends on the gate
                return torch.where(ctx.gate.any(), ctx.reduce(self.per_sample(ctx)), ctx.constant(1.0))
            if not ctx.any_gated_in:
                return ctx.constant(1.0)
        return ctx.reduce(self.per_sample(ctx))

    def per_sample(self, ctx: LossContext) -> torch.Tensor:
        pred = ctx.encoder(self.encoder_role)((ctx.x_hat + 1.0) / 2.0, layers=self.layers, check_range=False)
        return cosine_distance(pred, ctx.clean_features(self.encoder_role, self.layers))

    def extra_repr(self) -> str:
        return f"gating={self.gating!r}"
