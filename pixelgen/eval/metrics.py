"""FID, sFID, Inception Score, precision/recall and FD-DINOv2 of a sample set against a reference.

The numbers follow the ADM evaluation suite (``guided-diffusion/evaluations``), which the paper used:

* FID: Fréchet distance of the 2048-d ``pool_3`` Inception features; sFID: the same on the 2023 spatial
  features (see :mod:`pixelgen.eval.inception`); both in float64 (:mod:`pixelgen.eval.frechet`).
* Inception Score: ``exp(E[KL(p(y|x) || p(y))])`` from the softmax of the bias-free logits, averaged over
  consecutive splits of 5,000 samples (10 splits for 50k); no shuffling.
* Precision/recall (Kynkäänniemi et al., k = 3): each set's manifold is the union of balls around its points
  with radius the distance to the k-th nearest other point of the same set. Precision = fraction of samples
  inside the reference manifold, recall = fraction of reference images inside the sample manifold.
* FD-DINOv2: Fréchet distance in the feature space of a DINOv2 encoder (:mod:`pixelgen.eval.dinov2`).

A reference is an ADM reference batch ``.npz`` (``arr_0`` images, optionally precomputed ``mu``/``sigma``
and ``mu_s``/``sigma_s``, used as given when present, as the ADM suite does), an image folder, or a statistics
file written by this module's cache. Reference statistics and features are cached on disk per
(reference content, feature network).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelgen.eval.frechet import GaussianStats, feature_statistics, frechet_distance
from pixelgen.eval.images import ImageSet, npz_keys, open_images, open_npz_array
from pixelgen.eval.inception import InceptionFeatures, build_inception
from pixelgen.utils.io import atomic_write

__all__ = [
    "METRICS",
    "inception_score",
    "precision_recall",
    "manifold_radii",
    "extract_features",
    "ReferenceFeatures",
    "load_reference",
    "evaluate",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

# metric name -> (feature network, what it needs from the reference)
METRICS: dict[str, str] = {
    "fid": "Fréchet Inception distance (pool_3, 2048-d)",
    "sfid": "spatial FID (mixed_6/conv, first 7 channels, 2023-d)",
    "is": "Inception Score (splits of 5,000)",
    "pr": "precision and recall (k-NN manifolds of pool_3 features)",
    "fd_dinov2": "Fréchet distance in DINOv2 feature space",
}
_STAT_KEYS = {"fid": "pool", "sfid": "spatial", "fd_dinov2": "dinov2"}
# how statistics are named in a reference .npz: ADM's names for Inception, ours for DINOv2
_FILE_STAT_NAMES = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s"), "dinov2": ("mu_dinov2", "sigma_dinov2")}
_FEATURES_KEY = "features_pool"


def default_cache_dir() -> Path:
    """``$PIXELGEN_CACHE/eval`` or ``$XDG_CACHE_HOME/pixelgen/eval`` (``~/.cache/pixelgen/eval``)."""
    if os.environ.get("PIXELGEN_CACHE"):
        return Path(os.environ["PIXELGEN_CACHE"]) / "eval"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelgen" / "eval"


# ----------------------------------------------------------------------------------------------- metrics


def inception_score(logits: np.ndarray, split_size: int = 5000) -> tuple[float, float]:
    """Inception Score (mean, std over splits) from (N, C) bias-free Inception logits, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"The Inception Score needs (N, C) logits with N >= 1, got shape {logits.shape}.")
    if split_size < 1:
        raise ValueError(f"split_size must be at least 1, got {split_size}.")
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    scores = []
    for start in range(0, len(log_p), split_size):
        part = log_p[start : start + split_size]
        log_marginal = np.log(np.exp(part).mean(axis=0, keepdims=True))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(
    features: np.ndarray | torch.Tensor, k: int = 3, *, block: int = 1000, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest other point of the same set (N,), float32."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=device)
    if f.ndim != 2 or f.shape[0] <= k:
        raise ValueError(
            f"Precision/recall with k={k} needs more than {k} feature vectors per set, got shape {tuple(f.shape)}."
        )
    # index k of each sorted row: index 0 is the point itself (distance 0)
    return torch.cat(
        [_squared_distances(f[i : i + block], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), block)]
    )


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """For each point: whether some centre j has it within radius_j."""
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for i in range(0, len(points), block):
        for j in range(0, len(centres), block):
            d = _squared_distances(points[i : i + block], centres[j : j + block])
            inside[i : i + block] |= (d <= radii[None, j : j + block]).any(dim=1)
    return inside


def precision_recall(
    reference_features: np.ndarray | torch.Tensor,
    sample_features: np.ndarray | torch.Tensor,
    *,
    k: int = 3,
    block: int = 1000,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(precision, recall) of samples against a reference, both (N, D) feature arrays (see the module doc)."""
    ref = torch.as_tensor(np.asarray(reference_features), dtype=torch.float32, device=device)
    gen = torch.as_tensor(np.asarray(sample_features), dtype=torch.float32, device=device)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
        raise ValueError(
            f"Reference and sample features must be (N, D) with the same D, got {tuple(ref.shape)} and {tuple(gen.shape)}."
        )
    for what, f in (("reference", ref), ("sample", gen)):
        if f.shape[0] <= k:
            raise ValueError(f"Precision/recall with k={k} needs more than {k} {what} images, got {f.shape[0]}.")
    ref_radii = manifold_radii(ref, k, block=block, device=device)
    gen_radii = manifold_radii(gen, k, block=block, device=device)
    precision = _inside(gen, ref, ref_radii, block).double().mean().item()
    recall = _inside(ref, gen, gen_radii, block).double().mean().item()
    return precision, recall


# ---------------------------------------------------------------------------------------- feature extraction


def _named(out: Any) -> dict[str, torch.Tensor]:
    return out if isinstance(out, dict) else {"dinov2": out}


def extract_features(
    images: ImageSet,
    extractor: Callable[[torch.Tensor], Any],
    *,
    batch_size: int = 50,
    limit: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Run ``extractor`` over an image set; returns each named output as an (N, D) float32 array."""
    from tqdm.auto import tqdm

    n = len(images) if limit is None else min(limit, len(images))
    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for batch in images.batches(batch_size, limit):
            out = _named(extractor(batch))
            for name, value in out.items():
                value = value.detach().float().cpu()
                if value.ndim != 2 or value.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"The feature extractor's '{name}' output must be (B, D) for a batch of {batch.shape[0]}, got {tuple(value.shape)}."
                    )
                if not torch.isfinite(value).all():
                    raise ValueError(f"The feature extractor's '{name}' output contains NaN or infinite values.")
                parts.setdefault(name, []).append(value.numpy())
            bar.update(batch.shape[0])
    if not parts:
        raise ValueError(f"{images.description} holds no images to evaluate.")
    return {name: np.concatenate(v) for name, v in parts.items()}


# ------------------------------------------------------------------------------------------------ reference


@dataclass
class ReferenceFeatures:
    """What the metrics need from a reference: statistics per feature kind, pool features for precision/recall."""

    source: str
    count: int | None
    stats: dict[str, GaussianStats] = field(default_factory=dict)
    pool_features: np.ndarray | None = None
    stats_from_file: bool = False


def _read_stats_file(path: Path, keys: list[str], ref: ReferenceFeatures) -> None:
    for kind, (mu_key, sigma_key) in _FILE_STAT_NAMES.items():
        if mu_key in keys and sigma_key in keys:
            try:
                ref.stats[kind] = GaussianStats(open_npz_array(path, mu_key), open_npz_array(path, sigma_key))
            except ValueError as exc:
                raise ValueError(
                    f"Reference {path.name}: '{mu_key}'/'{sigma_key}' are not valid statistics: {exc}"
                ) from exc
    if _FEATURES_KEY in keys:
        ref.pool_features = np.asarray(open_npz_array(path, _FEATURES_KEY))
    ref.stats_from_file = bool(ref.stats)


def _check_dims(ref: ReferenceFeatures, dims: dict[str, int]) -> None:
    for kind, stats in ref.stats.items():
        if kind in dims and stats.dim != dims[kind]:
            mu, _ = _FILE_STAT_NAMES[kind]
            raise ValueError(
                f"Reference {ref.source}: '{mu}' is {stats.dim}-dimensional but the feature network gives {dims[kind]}-dimensional features."
            )
    if ref.pool_features is not None and (
        ref.pool_features.ndim != 2 or ref.pool_features.shape[1] != dims.get("pool", 2048)
    ):
        raise ValueError(
            f"Reference {ref.source}: '{_FEATURES_KEY}' must be (N, {dims.get('pool', 2048)}), got {ref.pool_features.shape}."
        )


def _cached(
    cache_dir: Path | None, images: ImageSet, tag: str | None, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Reference arrays from the cache, or computed and stored (keyed by content fingerprint and network tag)."""
    if cache_dir is None or images.fingerprint is None or not tag:
        return compute()
    path = Path(cache_dir) / f"ref-{images.fingerprint}-{tag}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                log.info("reference statistics from cache %s", path)
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable statistics cache %s (%s)", path, exc)
    arrays = compute()
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    log.info("cached reference statistics in %s", path)
    return arrays


def _stats_arrays(features: dict[str, np.ndarray], kinds: Iterable[str], keep_pool: bool) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        s = feature_statistics(features[kind], name=f"reference {kind} features")
        mu_key, sigma_key = _FILE_STAT_NAMES[kind]
        out[mu_key], out[sigma_key] = s.mu, s.sigma
    if keep_pool:
        out[_FEATURES_KEY] = features["pool"].astype(np.float32)
    out["count"] = np.asarray(len(next(iter(features.values()))))
    return out


def load_reference(
    reference: str | os.PathLike | np.ndarray | torch.Tensor | ImageSet,
    *,
    metrics: Sequence[str],
    inception: InceptionFeatures | Callable | None = None,
    dinov2: Callable | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
    use_file_stats: bool = True,
    progress: bool = True,
) -> ReferenceFeatures:
    """Statistics (and, for precision/recall, features) of a reference for the given metrics.

    Statistics stored in an ``.npz`` (ADM's ``mu``/``sigma``/``mu_s``/``sigma_s``) are used as given unless
    ``use_file_stats=False``; everything else is computed from its images (``arr_0``) and cached.
    """
    images: ImageSet | None = None
    ref = ReferenceFeatures(
        source=str(reference) if isinstance(reference, (str, os.PathLike)) else "reference array", count=None
    )
    path = Path(os.path.expanduser(str(reference))) if isinstance(reference, (str, os.PathLike)) else None
    if path is not None and path.suffix == ".npz" and path.is_file():
        keys = npz_keys(path)
        if use_file_stats:
            _read_stats_file(path, keys, ref)
        if "arr_0" in keys:
            images = open_images(path, name="reference")
        elif not ref.stats:
            raise ValueError(
                f"Reference {path} holds neither images ('arr_0') nor statistics ('mu'/'sigma'); it holds: {', '.join(keys)}."
            )
    else:
        images = open_images(reference, name="reference")
    if images is not None:
        ref.count = len(images)

    wants_inception = [_STAT_KEYS[m] for m in metrics if m in ("fid", "sfid") and _STAT_KEYS[m] not in ref.stats]
    need_pool = "pr" in metrics and ref.pool_features is None
    if (wants_inception or need_pool) and images is not None:
        if inception is None:
            raise ValueError(
                f"Reference {ref.source} needs an Inception feature extractor for {', '.join(metrics)} (pass inception=build_inception(...))."
            )
        kinds = sorted(set(wants_inception) | {"pool", "spatial"})  # one pass gives both; cache both
        arrays = _cached(
            Path(cache_dir) if cache_dir else None,
            images,
            getattr(inception, "tag", None),
            lambda: _stats_arrays(
                extract_features(
                    images, inception, batch_size=batch_size, progress=progress, desc="reference Inception"
                ),
                kinds,
                keep_pool=True,
            ),
        )
        for kind in ("pool", "spatial"):
            mu_key, sigma_key = _FILE_STAT_NAMES[kind]
            if kind not in ref.stats and mu_key in arrays:
                ref.stats[kind] = GaussianStats(arrays[mu_key], arrays[sigma_key], int(arrays["count"]))
        ref.pool_features = arrays[_FEATURES_KEY]
    if "fd_dinov2" in metrics and "dinov2" not in ref.stats and images is not None:
        if dinov2 is None:
            raise ValueError(
                f"Reference {ref.source} needs a DINOv2 feature extractor for fd_dinov2 (pass dinov2=build_dinov2_features(...))."
            )
        arrays = _cached(
            Path(cache_dir) if cache_dir else None,
            images,
            getattr(dinov2, "tag", None),
            lambda: _stats_arrays(
                extract_features(images, dinov2, batch_size=batch_size, progress=progress, desc="reference DINOv2"),
                ["dinov2"],
                keep_pool=False,
            ),
        )
        ref.stats["dinov2"] = GaussianStats(arrays["mu_dinov2"], arrays["sigma_dinov2"], int(arrays["count"]))

    missing = [
        m
        for m in metrics
        if (m in _STAT_KEYS and _STAT_KEYS[m] not in ref.stats) or (m == "pr" and ref.pool_features is None)
    ]
    if missing:
        raise ValueError(
            f"Reference {ref.source} holds only precomputed statistics, which cannot give {', '.join(missing)}; those need its images ('arr_0')."
        )
    return ref


# -------------------------------------------------------------------------------------------------- evaluate


def _available_metrics(reference: Any) -> list[str]:
    """Every metric the reference supports, when the user asked for none in particular."""
    path = Path(os.path.expanduser(str(reference))) if isinstance(reference, (str, os.PathLike)) else None
    if path is not None and path.suffix == ".npz" and path.is_file():
        keys = set(npz_keys(path))
        if "arr_0" not in keys:
            have = [m for m, kind in _STAT_KEYS.items() if _FILE_STAT_NAMES[kind][0] in keys and m != "fd_dinov2"]
            return have + ["is"] + (["pr"] if _FEATURES_KEY in keys else [])
    return ["fid", "sfid", "is", "pr"]


def _versions() -> dict[str, str | None]:
    from pixelgen.utils.versions import software_versions

    out = software_versions()
    try:
        import torch_fidelity

        out["torch_fidelity"] = torch_fidelity.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def evaluate(
    samples: str | os.PathLike | np.ndarray | torch.Tensor | ImageSet,
    reference: str | os.PathLike | np.ndarray | torch.Tensor | ImageSet,
    *,
    metrics: Sequence[str] | None = None,
    inception: InceptionFeatures | Callable | None = None,
    inception_weights: str | os.PathLike | None = None,
    dinov2: Callable | None = None,
    dinov2_weights: str | os.PathLike | None = None,
    num_samples: int | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    is_split_size: int = 5000,
    fd_method: str = "eigh",
    use_file_stats: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute the metrics of ``samples`` against ``reference``; returns ``{"metrics": ..., "settings": ...}``.

    ``metrics``: names from :data:`METRICS` (default: fid, sfid, is, pr, or what a statistics-only reference
    supports). ``inception``/``dinov2``: feature extractors (callables from uint8 (B, 3, H, W) to named (B, D)
    features, with a ``tag`` naming their weights for the cache); built from ``inception_weights`` /
    ``dinov2_weights`` when not given. ``num_samples``: use only the first N samples.
    """
    started = time.time()
    metrics = list(dict.fromkeys(metrics or _available_metrics(reference)))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}.")
    if k < 1:
        raise ValueError(f"k for precision/recall must be at least 1, got {k}.")
    sample_set = open_images(samples, name="samples")
    n = len(sample_set) if num_samples is None else min(num_samples, len(sample_set))
    if num_samples is not None and num_samples > len(sample_set):
        raise ValueError(f"num_samples={num_samples} but {sample_set.description} holds only {len(sample_set)} images.")
    if n < 2 and any(m in _STAT_KEYS for m in metrics):
        raise ValueError(f"FID-type metrics need at least 2 samples, got {n}.")
    if "pr" in metrics and n <= k:
        raise ValueError(f"Precision/recall with k={k} needs more than {k} samples, got {n}.")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    needs_inception = any(m in metrics for m in ("fid", "sfid", "is", "pr"))
    if needs_inception and inception is None:
        inception = build_inception(inception_weights, device=device)
    if "fd_dinov2" in metrics and dinov2 is None:
        from pixelgen.eval.dinov2 import build_dinov2_features

        dinov2 = build_dinov2_features(weights=dinov2_weights, device=device)

    ref = load_reference(
        reference,
        metrics=metrics,
        inception=inception,
        dinov2=dinov2,
        cache_dir=cache,
        batch_size=batch_size,
        use_file_stats=use_file_stats,
        progress=progress,
    )
    if isinstance(inception, InceptionFeatures):
        _check_dims(ref, {k2: v for k2, v in InceptionFeatures.feature_dims.items() if k2 != "logits"})

    feats: dict[str, np.ndarray] = {}
    if needs_inception:
        feats.update(
            extract_features(
                sample_set, inception, batch_size=batch_size, limit=n, progress=progress, desc="sample Inception"
            )
        )
    if "fd_dinov2" in metrics:
        feats.update(
            extract_features(
                sample_set, dinov2, batch_size=batch_size, limit=n, progress=progress, desc="sample DINOv2"
            )
        )

    results: dict[str, float] = {}
    for m in metrics:
        if m in _STAT_KEYS:
            kind = _STAT_KEYS[m]
            results[m] = frechet_distance(
                feature_statistics(feats[kind], name=f"sample {kind} features"), ref.stats[kind], method=fd_method
            )  # type: ignore[arg-type]
        elif m == "is":
            results["inception_score"], results["inception_score_std"] = inception_score(feats["logits"], is_split_size)
        elif m == "pr":
            results["precision"], results["recall"] = precision_recall(
                ref.pool_features, feats["pool"], k=k, device=device
            )  # type: ignore[arg-type]
    settings = {
        "samples": sample_set.description,
        "num_samples": n,
        "reference": ref.source,
        "reference_count": ref.count,
        "reference_stats_from_file": ref.stats_from_file,
        "metrics": metrics,
        "inception": getattr(inception, "tag", None) if needs_inception else None,
        "dinov2": getattr(dinov2, "tag", None) if "fd_dinov2" in metrics else None,
        "precision_recall_k": k,
        "is_split_size": is_split_size,
        "fd_method": fd_method,
        "batch_size": batch_size,
        "device": str(device),
        "seconds": round(time.time() - started, 2),
        "versions": _versions(),
    }
    return {"metrics": results, "settings": settings}
