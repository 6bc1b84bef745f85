"""Evaluation: class-balanced 50k sample sets in the ADM format, FID/sFID/IS/precision-recall, FD-DINOv2,
and the GenEval / DPG-Bench prompt sets.

>>> from pixelgen.eval import generate_class_samples, evaluate
>>> generate_class_samples(model, "samples/xl", num=50_000, per_class=50, sampler="heun",
...                        sampler_params=sampling_preset("xl_cfg").params)
>>> evaluate("samples/xl/samples.npz", "VIRTUAL_imagenet256_labeled.npz")["metrics"]   # fid, sfid, IS, P/R

Command line: ``pixelgen sample`` (:mod:`pixelgen.cli.sample`) and ``pixelgen eval``
(:mod:`pixelgen.cli.evaluate`).
"""

from __future__ import annotations

from .dinov2 import DinoV2Features, build_dinov2_features
from .frechet import GaussianStats, feature_statistics, frechet_distance, trace_sqrt_product
from .generation import (
    GenerationResult,
    check_class_count,
    class_balanced_labels,
    generate_class_samples,
)
from .images import ImageSet, open_images, open_npz_array, write_uint8_npz
from .inception import INCEPTION_WEIGHTS, InceptionFeatures, build_inception
from .metrics import METRICS, evaluate, extract_features, inception_score, load_reference, precision_recall
from .prompt_sets import PromptItem, generate_dpg, generate_geneval, read_dpg_prompts, read_geneval_metadata

__all__ = [
    "DinoV2Features",
    "build_dinov2_features",
    "GaussianStats",
    "feature_statistics",
    "frechet_distance",
    "trace_sqrt_product",
    "GenerationResult",
    "check_class_count",
    "class_balanced_labels",
    "generate_class_samples",
    "ImageSet",
    "open_images",
    "open_npz_array",
    "write_uint8_npz",
    "INCEPTION_WEIGHTS",
    "InceptionFeatures",
    "build_inception",
    "METRICS",
    "evaluate",
    "extract_features",
    "inception_score",
    "load_reference",
    "precision_recall",
    "PromptItem",
    "generate_dpg",
    "generate_geneval",
    "read_dpg_prompts",
    "read_geneval_metadata",
]
