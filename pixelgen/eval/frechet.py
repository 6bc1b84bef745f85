"""Fréchet distance between two Gaussians fitted to feature sets (FID, sFID, FD-DINOv2).

``FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``, everything in float64.

The trace of the matrix square root is computed from eigenvalues by default: for any factor ``F`` with
``S1 = F F^T``, ``S1 S2`` has the same non-zero eigenvalues as the symmetric positive semi-definite
``F^T S2 F``, so ``tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of ``F^T S2 F``
(only eigenvalues, no eigenvectors: the expensive part of ``eigh`` is skipped). ``F`` is the Cholesky factor,
or ``S1^(1/2)`` from ``eigh`` when ``S1`` is singular, or, for statistics of N < D samples, the N centred
samples themselves (an N x N problem instead of D x D). Tiny negative eigenvalues from round-off are clipped
to zero, which makes the result well defined for singular covariances. ``method="scipy"`` uses
``scipy.linalg.sqrtm`` with the fallback of the ADM suite and pytorch-fid instead (add ``eps`` to the diagonals
when the root is not finite, drop an imaginary part that is numerically zero).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["GaussianStats", "feature_statistics", "frechet_distance", "trace_sqrt_product"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64, and how many samples made them.

    ``factor``: optional (K, D) with ``sigma = factor.T @ factor`` (kept for K < D: a cheaper, exact square root).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int = 0
    factor: np.ndarray | None = None

    def __post_init__(self) -> None:
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1:
            raise ValueError(f"The feature mean must be a vector (D,), got shape {mu.shape}.")
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"The feature covariance must be ({mu.shape[0]}, {mu.shape[0]}) to match the mean, got shape {sigma.shape}."
            )
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("The feature mean or covariance contains NaN or infinite values.")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_statistics(features: np.ndarray, *, name: str = "features") -> GaussianStats:
    """Mean and unbiased covariance (``np.cov``, as the ADM suite and pytorch-fid) of an (N, D) feature array.

    Needs at least 2 samples; warns when N <= D, where the covariance is singular and the Fréchet distance is
    strongly biased (compare such numbers only with numbers from the same N).
    """
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {feats.shape}.")
    n, d = feats.shape
    if n < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 samples, got {n}.")
    feats = feats.astype(np.float64, copy=False)
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contain NaN or infinite values.")
    mu = feats.mean(axis=0)
    factor = None
    if n <= d:
        warnings.warn(
            f"{name}: only {n} samples for {d}-dimensional features; the covariance is singular and the Fréchet "
            "distance is biased upwards (the standard protocol uses 50,000 samples).",
            stacklevel=2,
        )
        factor = (feats - mu) / np.sqrt(n - 1)
    return GaussianStats(mu, np.cov(feats, rowvar=False), n, factor)


def trace_sqrt_product(
    sigma1: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: Literal["eigh", "scipy"] = "eigh",
    factor1: np.ndarray | None = None,
    eps: float = 1e-6,
) -> float:
    """``tr((sigma1 @ sigma2)^(1/2))`` for symmetric positive semi-definite matrices (see the module doc).

    ``factor1``: optional (K, D) with ``sigma1 = factor1.T @ factor1``, used by ``method="eigh"``.
    """
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    if method == "eigh":
        if factor1 is not None:
            f = np.asarray(factor1, dtype=np.float64)
            inner = f @ s2 @ f.T
        else:
            try:
                lower = np.linalg.cholesky(s1)
            except np.linalg.LinAlgError:  # singular: the symmetric square root is a factor too
                w, v = np.linalg.eigh((s1 + s1.T) / 2)
                lower = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
            inner = lower.T @ s2 @ lower
        ev = np.linalg.eigvalsh((inner + inner.T) / 2)
        return float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    if method == "scipy":
        from ..utils.extras import require_extra

        linalg = require_extra("scipy.linalg", "eval", feature="The scipy matrix square root")

        covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
        if not np.isfinite(covmean).all():
            log.warning(
                "sqrtm of the covariance product is not finite; adding %g to the diagonals (ADM/pytorch-fid fallback).",
                eps,
            )
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(
                    f"sqrtm of the covariance product has a large imaginary part ({np.abs(covmean.imag).max():.3g}); the covariances are not valid."
                )
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"Unknown method {method!r} for the matrix square root; use 'eigh' or 'scipy'.")


def frechet_distance(
    stats1: GaussianStats,
    stats2: GaussianStats,
    *,
    method: Literal["eigh", "scipy"] = "eigh",
) -> float:
    """Fréchet distance between two :class:`GaussianStats` of the same dimension (float64)."""
    for i, s in enumerate((stats1, stats2), 1):
        if not isinstance(s, GaussianStats):
            raise TypeError(
                f"stats{i} must be GaussianStats (use feature_statistics(features)), got {type(s).__name__}."
            )
    if stats1.dim != stats2.dim:
        raise ValueError(
            f"Cannot compare statistics of {stats1.dim}-dimensional and {stats2.dim}-dimensional features (different feature networks or layers?)."
        )
    diff = stats1.mu - stats2.mu
    # tr((S1 S2)^(1/2)) = tr((S2 S1)^(1/2)): put the statistics with the smaller sample factor first
    ranked = sorted((stats1, stats2), key=lambda s: s.factor.shape[0] if s.factor is not None else s.dim + 1)
    tr_root = trace_sqrt_product(ranked[0].sigma, ranked[1].sigma, method=method, factor1=ranked[0].factor)
    return float(diff @ diff + np.trace(stats1.sigma) + np.trace(stats2.sigma) - 2.0 * tr_root)
