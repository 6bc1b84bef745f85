"""The PixelGen training objective: weighted loss terms, noise gating, adaptive perceptual weight."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ..backbones.base import backbone_facts
from ..backbones.common import value_checks_skipped, values_checked_by_caller
from ..encoders import build_encoder
from ..encoders.base import at_least_float32, check_pixel_ranges
from ..flow import T_EPS, _interpolate, sample_t
from ..registry import registries
from ..seeding import draw as _draw
from ..seeding import seed_only
from ..utils.checks import (
    check_class_labels_input,
    check_image_batch,
    check_labels,
    check_loss_weight,
    check_same_shape,
    check_timesteps,
)
from .balancer import Balancer, balance_parameter
from .context import LossContext
from .path import drop_condition

__all__ = ["Objective", "GATING_COMPUTE", "DEFAULT_ENCODERS"]

GATING_COMPUTE = ("subset", "masked")
# Role of a frozen encoder -> the registered encoder built for it unless the objective is told otherwise.
DEFAULT_ENCODERS = {"dinov2": "dinov2_vitb14", "lpips": "lpips"}


class Objective(nn.Module):
    """Weighted sum of loss terms, evaluated on one training batch.

    ``L = Σ_plain λ_i·term_i + percept_ratio · w · Σ_perceptual λ_i·term_i`` where w is the :class:`Balancer`'s
    weight (1 unless the adaptive weight is enabled). ``objective(model, batch, step=global_step)`` samples t,
    noise and condition dropout, runs the model once (with ``return_layer`` when a term needs the hidden
    tokens) and returns ``{term name: value, "percept_weight": w, "loss": total}`` (0-dim tensors; only
    ``loss`` carries a graph). Use :func:`pixelgen.losses.build_objective` for the paper's presets.

    Frozen encoders (DINOv2, LPIPS) are shared by the terms that need them, move with ``.to()``, and are kept
    out of ``state_dict()`` and ``parameters()``: only trainable parts (the REPA projector) and the balancer's
    state are saved.

    Args:
        losses: registered loss-term names (``registries.loss``), plugins included.
        weights: λ per term name; unnamed terms use their ``default_weight`` (1, 0.5, 0.1, 0.01).
        model: the backbone this objective trains, read once here through the backbone protocol
            (:mod:`pixelgen.backbones.base`): its ``hidden_size`` sizes the REPA projector, its ``patch_size``
            sets LPIPS's resize rule and the ``base_patch_size`` of DINOv2 encoders built here (the token grids
            must pair), and an active balancer checks its ``balance_parameter()``. Not stored.
        hidden_size: backbone width, for the REPA projector (taken from ``model`` when given).
        align_layer: ``return_layer`` passed to the backbone for REPA (8 in PixelGen).
        percept_t_threshold: gated terms use only samples with t ≥ this (0.3); ``None`` disables gating.
        gating_compute: ``"subset"`` (default) runs a gated term's encoders on the gated-in samples only;
            ``"masked"`` is the static-shape step: the gated terms run on the whole batch and are averaged
            with the mask, P-DINO's "no sample gated in" case is a select, and the balancer stays on the
            device, so no shape depends on the data and nothing waits for the host (the step can be captured
            as a CUDA graph; with ``check_finite=False`` and inside ``values_checked_by_caller()`` it makes
            no host sync). Both give the same values and gradients.
        pdino_gating: ``"original"`` (default, the broadcast behaviour the released models were trained with)
            or ``"intended"``; see :class:`~pixelgen.losses.terms.PDinoTerm`.
        percept_ratio: extra factor on the perceptual sum (1).
        balancer: a :class:`Balancer`, its keyword arguments as a dict, or ``None`` (w stays 1).
        balance_against: the term whose gradient the balancer matches (``"flow_matching"``).
        time_distribution / p_mean / p_std / time_shift: training-time distribution.
        t_eps: the x->v clamp of flow matching (0.05). noise_scale: std of ε (1).
        cond_drop_prob: CFG condition dropout (0.1); labels -> ``model.num_classes``, text -> ``batch['uncond']``
            (a structured condition such as ``{"emb", "mask"}`` is dropped per leaf, ``uncond`` of the same keys).
        encoders: per role (``"dinov2"``, ``"lpips"``), a built encoder module or ``build_encoder`` arguments
            (``{"name": ..., "weights": ..., "dtype": ...}``); missing roles are built with defaults, roles no
            term uses are not built.
        term_options: per term name, keyword arguments for its constructor.
        check_finite: fail naming the term when a term is NaN or infinite (one device sync per step). Inside
            ``values_checked_by_caller()`` the caller vouches for the values and checks the output itself with
            :meth:`all_finite` (fused, on the device) and :meth:`check_values` (names the bad terms), as the
            trainer does; the objective then skips its read.

    Draws (without ``batch['seeds']``): CFG dropout uniforms ``rand(B)``, then the time normals ``randn(B)``,
    then the noise ``randn(B, C, H, W)``, in the original's order, so a global torch seed gives the reference
    batches.
    """

    def __init__(
        self,
        losses: Sequence[str] = ("flow_matching", "repa", "lpips", "pdino"),
        *,
        weights: Mapping[str, float] | None = None,
        hidden_size: int | None = None,
        align_layer: int = 8,
        percept_t_threshold: float | None = 0.3,
        gating_compute: str = "subset",
        pdino_gating: str = "original",
        percept_ratio: float = 1.0,
        balancer: Balancer | Mapping[str, Any] | None = None,
        balance_against: str = "flow_matching",
        time_distribution: str = "logit_normal",
        p_mean: float = -0.8,
        p_std: float = 0.8,
        time_shift: float = 1.0,
        t_eps: float = T_EPS,
        noise_scale: float = 1.0,
        cond_drop_prob: float = 0.1,
        encoders: Mapping[str, nn.Module | Mapping[str, Any]] | None = None,
        term_options: Mapping[str, Mapping[str, Any]] | None = None,
        check_finite: bool = True,
        model: nn.Module | None = None,
    ):
        super().__init__()
        losses = [losses] if isinstance(losses, str) else list(losses)
        term_options = {k: dict(v) for k, v in dict(term_options or {}).items()}
        encoders = dict(encoders or {})
        if model is not None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be the backbone (a torch.nn.Module), got {type(model).__name__}.")
            facts = backbone_facts(model)
            if hidden_size is not None and hidden_size != facts["hidden_size"]:
                raise ValueError(
                    f"hidden_size={hidden_size} contradicts the model's hidden_size {facts['hidden_size']}; pass one of them."
                )
            hidden_size = facts["hidden_size"]
            if "lpips" in losses:
                term_options.setdefault("lpips", {}).setdefault("patch_size", facts["patch_size"])
            spec = encoders.get("dinov2")
            if not isinstance(spec, nn.Module):
                encoders["dinov2"] = {"base_patch_size": facts["patch_size"], **dict(spec or {})}
        if not losses or len(set(losses)) != len(losses) or not all(isinstance(n, str) for n in losses):
            raise ValueError(f"losses must be a non-empty list of distinct loss-term names, got {losses!r}.")
        if gating_compute not in GATING_COMPUTE:
            raise ValueError(f"gating_compute must be one of {', '.join(GATING_COMPUTE)}, got {gating_compute!r}.")
        if percept_t_threshold is not None and not 0.0 <= percept_t_threshold <= 1.0:
            raise ValueError(f"percept_t_threshold must lie in [0, 1] or be None, got {percept_t_threshold!r}.")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob!r}.")
        for key, holder in (("term_options", term_options), ("weights", dict(weights or {}))):
            stray = sorted(set(holder) - set(losses))
            if stray:
                raise ValueError(
                    f"{key} names term(s) {', '.join(stray)} that are not in losses ({', '.join(losses)})."
                )

        self.terms = nn.ModuleDict()
        for name in losses:
            options = dict(term_options.get(name, {}))
            if name == "flow_matching":
                options.setdefault("t_eps", t_eps)
            if name == "pdino":
                options.setdefault("gating", pdino_gating)
            term = registries.loss.build(name, **options)
            if not isinstance(term, nn.Module):
                raise TypeError(f"Loss term '{name}' must build an nn.Module, got {type(term).__name__}.")
            self.terms[name] = term
        self.weights = {
            n: check_loss_weight((weights or {}).get(n, getattr(t, "default_weight", 1.0)), f"The weight of {n}")
            for n, t in self.terms.items()
        }

        self._frozen: dict[str, nn.Module] = self._build_encoders(encoders)
        for term in self.terms.values():
            if hasattr(term, "setup"):
                term.setup(encoders=MappingProxyType(self._frozen), hidden_size=hidden_size)

        self.balancer = (
            balancer
            if isinstance(balancer, Balancer)
            else Balancer(**dict(balancer))
            if balancer
            else Balancer(start_step=None)
        )
        if self.balancer.start_step is not None and balance_against not in self.terms:
            raise ValueError(
                f"The adaptive perceptual weight balances against '{balance_against}', which is not in losses."
            )
        if model is not None and self.balancer.start_step is not None:
            balance_parameter(model, self.balancer.param_name)  # fail now, not 400k steps in
        self.hidden_size, self.align_layer = hidden_size, align_layer
        self.percept_t_threshold, self.gating_compute = percept_t_threshold, gating_compute
        self.percept_ratio, self.balance_against = float(percept_ratio), balance_against
        self.time = dict(distribution=time_distribution, p_mean=p_mean, p_std=p_std, shift=time_shift)
        self.noise_scale, self.cond_drop_prob, self.check_finite = (
            float(noise_scale),
            float(cond_drop_prob),
            check_finite,
        )
        self.needs_feature = any(getattr(t, "needs_feature", False) for t in self.terms.values())

    @classmethod
    def from_model(cls, model: nn.Module, preset: str = "pixelgen", **overrides: Any) -> Objective:
        """``build_objective(preset, model=model, **overrides)``: the preset's objective sized for ``model``."""
        from .presets import build_objective

        return build_objective(preset, model=model, **overrides)

    # -- frozen encoders --------------------------------------------------------------------------------
    def _build_encoders(self, specs: dict[str, Any]) -> dict[str, nn.Module]:
        roles = list(dict.fromkeys(r for t in self.terms.values() for r in getattr(t, "requires", ())))
        stray = sorted(set(specs) - set(roles) - set(DEFAULT_ENCODERS))  # known but unused roles are ignored
        if stray:
            raise ValueError(
                f"encoders names role(s) {', '.join(stray)} that no loss term uses (used: {', '.join(roles) or 'none'})."
            )
        built = {}
        for role in roles:
            spec = specs.get(role)
            if isinstance(spec, nn.Module):
                encoder = spec.eval().requires_grad_(False)
            else:
                options = dict(spec or {})
                encoder = build_encoder(options.pop("name", DEFAULT_ENCODERS.get(role, role)), **options)
            built[role] = encoder
        return built

    @property
    def encoders(self) -> Mapping[str, nn.Module]:
        """The frozen encoders by role (not submodules: absent from ``state_dict()`` and ``parameters()``)."""
        return MappingProxyType(self._frozen)

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() reach the frozen encoders although they are outside the module tree.
        super()._apply(fn, recurse)
        for encoder in self._frozen.values():
            encoder._apply(fn, recurse)
        return self

    # -- balancer state ---------------------------------------------------------------------------------
    def balancer_state(self) -> dict[str, Any]:
        """The adaptive weight's state (also stored in ``state_dict()`` as ``balancer._extra_state``)."""
        return self.balancer.get_extra_state()

    def load_balancer_state(self, state: Mapping[str, Any]) -> None:
        self.balancer.set_extra_state(dict(state))

    def load_upstream_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the REPA projector from a released Lightning state dict (``diffusion_trainer.proj.*``)."""
        if "repa" not in self.terms:
            raise KeyError("This objective has no 'repa' term to load projector weights into.")
        self.terms["repa"].load_upstream_state(state)

    # -- evaluation -------------------------------------------------------------------------------------
    def forward(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        *,
        step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One objective evaluation on ``batch`` (``image`` in [-1, 1], ``raw`` in [0, 1], ``cond``, optional ``uncond``).

        ``cond``: class labels (B,), text embeddings (B, L, D), or a mapping of such tensors with one row per
        sample (the text condition ``{"emb": (B, L, D), "mask": (B, L)}``), passed to the model as it is.

        ``raw`` defaults to ``(image + 1) / 2`` when absent. ``step`` is the global step (for the balancer);
        ``generator`` makes dropout, t and noise reproducible (drawn in that order). With ``batch['seeds']``
        ((B,) int64, the trainer's ``per_sample_noise``) sample i's t, noise and dropout come from a CPU
        generator seeded with ``seeds[i]`` (in that order), independent of how a global batch is split across
        processes.
        """
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a dict with 'image', 'raw' and 'cond', got {type(batch).__name__}.")
        missing = [k for k in ("image", "cond") if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {', '.join(repr(k) for k in missing)} (it needs 'image', 'raw' and 'cond').")
        image = batch["image"]
        check_image_batch(image, "batch['image']", channels=3)
        raw = batch.get("raw")
        if raw is None:
            raw = (image + 1.0) / 2.0
        cond = batch["cond"]
        _check_condition(cond, image.shape[0])
        num_classes = getattr(model, "num_classes", None)
        if getattr(model, "cond_kind", None) == "class":  # float labels or text embeddings: say what it takes
            check_class_labels_input(cond, image.shape[0], "batch['cond']")
        labels = isinstance(cond, torch.Tensor) and not cond.is_floating_point()
        if labels and num_classes is not None and not value_checks_skipped(cond):
            check_labels(cond, num_classes, "batch['cond']", batch=image.shape[0])
        seeds, uncond = batch.get("seeds"), batch.get("uncond")
        if seeds is None:  # the original's draw order: dropout, t, noise
            cond = drop_condition(cond, self.cond_drop_prob, null_label=num_classes, uncond=uncond, generator=generator)
            t = sample_t(image.shape[0], device=image.device, generator=generator, **self.time)
            noise = _draw("normal", tuple(image.shape), image.device, generator).to(image.dtype)
        else:  # per-sample seeds: each sample's t, noise, dropout from its own generator, in that order
            t_draws, noise, drop_draws = _per_sample_draws(image, seeds, self.time["distribution"])
            t = sample_t(image.shape[0], device=image.device, draws=t_draws, **self.time)
            cond = drop_condition(cond, self.cond_drop_prob, null_label=num_classes, uncond=uncond, draws=drop_draws)
        if self.noise_scale != 1.0:
            noise = noise * self.noise_scale
        return self._evaluate(model, image, raw, cond, t, noise, step=step)  # t is in [0, 1] by construction

    def evaluate(
        self,
        model: nn.Module,
        image: torch.Tensor,
        raw: torch.Tensor,
        cond: torch.Tensor | Mapping[str, torch.Tensor],
        t: torch.Tensor,
        noise: torch.Tensor,
        *,
        step: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The objective at given times ``t`` and ``noise`` (no sampling, no condition dropout)."""
        check_image_batch(image, "image", channels=3)
        check_timesteps(t, image.shape[0])
        check_same_shape(noise, image, "noise", "image")
        return self._evaluate(model, image, raw, cond, t, noise, step=step)

    def _evaluate(
        self,
        model: nn.Module,
        image: torch.Tensor,
        raw: torch.Tensor,
        cond: torch.Tensor | Mapping[str, torch.Tensor],
        t: torch.Tensor,
        noise: torch.Tensor,
        *,
        step: int | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`evaluate` for a checked ``image`` and valid ``t`` (this runs every training step: few host syncs)."""
        check_same_shape(raw, image, "raw", "image")
        if not value_checks_skipped(image):
            check_pixel_ranges(
                [(image, "The training image", (-1.0, 1.0)), (raw, "The raw training image", (0.0, 1.0))],
                natural_images=("The training image",),
            )
        x_t = _interpolate(image, noise, t)
        feature = None
        with values_checked_by_caller():  # t is valid here and class labels were checked: no second host sync
            out = model(x_t, t, cond, return_layer=self.align_layer) if self.needs_feature else model(x_t, t, cond)
        if self.needs_feature:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"With return_layer the model must return (x_hat, feature), got {type(out).__name__}.")
            x_hat, feature = out
        else:
            x_hat = out
        check_same_shape(x_hat, image, "The model's prediction x_hat", "the clean image x")
        gate = None if self.percept_t_threshold is None else t >= self.percept_t_threshold
        ctx = LossContext(
            x=image,
            raw=raw,
            x_t=x_t,
            t=t,
            x_hat=x_hat,
            feature=feature,
            gate=gate,
            encoders=self.encoders,
            static=self.gating_compute == "masked",
        )

        values = self._term_values(ctx)
        if self.check_finite and not value_checks_skipped(image):
            self.check_values(values)

        plain = [self.weights[n] * v for n, v in values.items() if not getattr(self.terms[n], "perceptual", False)]
        percept = [self.weights[n] * v for n, v in values.items() if getattr(self.terms[n], "perceptual", False)]
        total = sum(plain[1:], plain[0]) if plain else ctx.constant(0.0)
        if percept:
            percept_sum = sum(percept[1:], percept[0])
            if self.balancer.due(step) and torch.is_grad_enabled():
                self.balancer.update(model, values[self.balance_against], percept_sum)
            total = total + self.percept_ratio * self.balancer.value * percept_sum
        out = {name: v.detach() for name, v in values.items()}
        out["percept_weight"] = self.balancer.value.detach().to(
            torch.promote_types(image.dtype, torch.float32), copy=True
        )
        out["loss"] = total
        return out

    # -- finiteness -------------------------------------------------------------------------------------
    @staticmethod
    def all_finite(values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A 0-dim bool tensor on the values' device: every value is finite (one fused check, no host sync)."""
        return torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values.values()])).all()

    @staticmethod
    def check_values(values: Mapping[str, torch.Tensor | float]) -> None:
        """Raise ``FloatingPointError`` naming every NaN or infinite value (one host sync for tensors)."""
        items = list(values.values())
        if items and all(isinstance(v, torch.Tensor) for v in items):
            read = torch.stack([v.detach().float().reshape(()) for v in items]).tolist()
        else:
            read = [float(v) for v in items]
        bad = [f"'{n}' ({v:.4g})" for n, v in zip(values, read) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"Loss term {', '.join(bad)} is NaN or infinite.")

    def _term_values(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """Every term's value; gated terms share one gated context (None: no sample passes, the value is 0)."""
        gated = [getattr(term, "gated", False) and ctx.gate is not None for term in self.terms.values()]
        gated_ctx = self._gated_context(ctx) if any(gated) else None
        values = {}
        for (name, term), is_gated in zip(self.terms.items(), gated):
            if not is_gated:
                value = term(ctx)
            else:
                value = ctx.constant(0.0) if gated_ctx is None else term(gated_ctx)
            if not isinstance(value, torch.Tensor) or value.ndim != 0:
                raise TypeError(
                    f"Loss term '{name}' must return a 0-dim tensor, got {getattr(value, 'shape', type(value).__name__)}."
                )
            values[name] = at_least_float32(value)
        return values

    def _gated_context(self, ctx: LossContext) -> LossContext | None:
        if self.gating_compute == "masked":
            return ctx.masked(ctx.gate)
        index = ctx.gated_index
        if index.numel() == 0:
            return None
        return ctx if index.numel() == ctx.batch_size else ctx.subset(index)

    def extra_repr(self) -> str:
        terms = ", ".join(
            f"{n}×{w:g}{' (gated)' if getattr(self.terms[n], 'gated', False) else ''}" for n, w in self.weights.items()
        )
        return f"terms=[{terms}], percept_t_threshold={self.percept_t_threshold}, gating_compute={self.gating_compute!r}, encoders={list(self._frozen)}"


def _check_condition(cond: object, batch: int) -> None:
    """``cond`` is a tensor or a mapping of tensors, each with one row per image."""
    leaves = cond.items() if isinstance(cond, Mapping) else [(None, cond)]
    for key, leaf in leaves:
        name = "batch['cond']" if key is None else f"batch['cond'][{key!r}]"
        if not isinstance(leaf, torch.Tensor) or leaf.ndim < 1 or leaf.shape[0] != batch:
            raise ValueError(
                f"{name} must be a tensor with one condition per image ({batch}), got {getattr(leaf, 'shape', type(leaf).__name__)}."
            )
    if isinstance(cond, Mapping) and not cond:
        raise ValueError("batch['cond'] is an empty mapping; it needs at least one tensor.")


def _per_sample_draws(
    image: torch.Tensor, seeds: object, distribution: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(time draws, standard-normal noise like ``image``, dropout draws), sample i from a CPU generator seeded ``seeds[i]``."""
    if not isinstance(seeds, torch.Tensor) or seeds.shape != (image.shape[0],) or seeds.is_floating_point():
        raise ValueError(
            f"batch['seeds'] must be an integer tensor of shape ({image.shape[0]},), got {getattr(seeds, 'shape', type(seeds).__name__)}."
        )
    # One row per sample, in draw order: [time, noise..., dropout]; one buffer makes one host-to-device copy.
    draws = torch.empty(image.shape[0], image[0].numel() + 2)
    for row, seed in zip(draws, seeds.tolist()):
        g = seed_only(int(seed))
        (row[:1].normal_ if distribution == "logit_normal" else row[:1].uniform_)(generator=g)
        row[1:-1].normal_(generator=g)
        row[-1:].uniform_(generator=g)
    draws = draws.to(image.device)
    return draws[:, 0], draws[:, 1:-1].reshape(image.shape).to(image.dtype), draws[:, -1]


def objective_options() -> list[str]:
    """Keyword arguments :class:`Objective` accepts (for clear errors on unknown overrides)."""
    return [p for p in inspect.signature(Objective.__init__).parameters if p != "self"]
