"""The training context every loss term receives, with a shared cache of encoder outputs."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import nn

__all__ = ["LossContext"]


@dataclass
class LossContext:
    """What one objective evaluation knows, for the samples this context covers.

    ``x``: clean image in [-1, 1]; ``raw``: clean image in [0, 1]; ``x_t``: the noisy input; ``t``: (B,) times;
    ``x_hat``: the network's x-prediction; ``feature``: the backbone's hidden tokens for REPA (or None);
    ``gate``: (B,) bool, samples at or above the perceptual threshold (None: no gating configured);
    ``encoders``: the objective's frozen networks by role (``"dinov2"``, ``"lpips"`` ...);
    ``sample_mask``: None, or a (B,) bool mask that :meth:`reduce` averages over (the "masked" gating computation);
    ``static``: terms must not make shapes or control flow depend on the data (the objective's static-shape step).

    A gated term sees a *subset* context (:meth:`subset`) holding only the gated-in samples. Values
    computed through :meth:`cached` are shared by all terms: a subset context reuses its parent's full-batch
    value by indexing it instead of recomputing.

    The objective checks ``x`` and ``raw`` (shapes, pixel ranges) before it builds a context, so the frozen
    encoders are called without checking them again (each range check is a host-device sync).
    """

    x: torch.Tensor
    raw: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    x_hat: torch.Tensor
    feature: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    encoders: Mapping[str, nn.Module] = field(default_factory=dict)
    sample_mask: torch.Tensor | None = None
    static: bool = False
    _cache: dict = field(default_factory=dict, repr=False)
    _parent: tuple[LossContext, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @cached_property
    def gated_index(self) -> torch.Tensor | None:
        """Positions (1-D long) of the samples that pass the gate, None without gating; one host sync, once per context."""
        return None if self.gate is None else self.gate.nonzero().squeeze(1)

    @property
    def any_gated_in(self) -> bool:
        """True when at least one sample passes the gate (always true without gating)."""
        return self.gated_index is None or self.gated_index.numel() > 0

    def constant(self, value: float) -> torch.Tensor:
        """A 0-dim tensor without gradient, on the batch's device, in the dtype loss values use here."""
        return torch.full((), value, device=self.x.device, dtype=torch.promote_types(self.x.dtype, torch.float32))

    def encoder(self, role: str) -> nn.Module:
        try:
            return self.encoders[role]
        except KeyError:
            raise KeyError(
                f"No frozen encoder '{role}' in this objective (has: {', '.join(self.encoders) or 'none'})."
            ) from None

    def subset(self, index: torch.Tensor) -> LossContext:
        """The context restricted to the samples ``index`` (1-D long tensor)."""

        def pick(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[index]

        return replace(
            self,
            x=self.x[index],
            raw=self.raw[index],
            x_t=self.x_t[index],
            t=self.t[index],
            x_hat=self.x_hat[index],
            feature=pick(self.feature),
            gate=pick(self.gate),
            sample_mask=pick(self.sample_mask),
            _cache={},
            _parent=(self, index),
        )

    def masked(self, sample_mask: torch.Tensor) -> LossContext:
        """The same samples, averaged only over ``sample_mask`` by :meth:`reduce` (shares this context's cache)."""
        return replace(self, sample_mask=sample_mask)

    def _lookup(self, key: Hashable) -> torch.Tensor | None:
        if key in self._cache:
            return self._cache[key]
        if self._parent is not None:
            parent, index = self._parent
            hit = parent._lookup(key)
            return None if hit is None else hit[index]
        return None

    def cached(self, key: Hashable, compute: Callable[[LossContext], torch.Tensor]) -> torch.Tensor:
        """``compute(self)`` once per key; later calls (from any term, or a subset) reuse the result."""
        hit = self._lookup(key)
        if hit is None:
            hit = self._cache[key] = compute(self)
        return hit

    def clean_features(self, role: str = "dinov2", layers: Sequence[int] | None = None) -> torch.Tensor:
        """Encoder features of the clean [0, 1] image, without gradient; shared by REPA and P-DINO."""
        key = ("clean", role, None if layers is None else tuple(layers))

        def compute(ctx: LossContext) -> torch.Tensor:
            with torch.no_grad():
                return ctx.encoder(role)(ctx.raw, layers=layers, check_range=False)

        return self.cached(key, compute)

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Mean over samples, or over the ``sample_mask``-ed samples (0 when the mask is empty)."""
        if per_sample.shape != (self.batch_size,):
            raise ValueError(
                f"A loss term must give one value per sample, shape ({self.batch_size},), got {tuple(per_sample.shape)}."
            )
        if self.sample_mask is None:
            return per_sample.mean()
        m = self.sample_mask.to(per_sample.dtype)
        return (per_sample * m).sum() / m.sum().clamp_min(1.0)
