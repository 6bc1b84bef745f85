"""``pixelgen eval SAMPLES --ref REFERENCE``: FID, sFID, IS, precision/recall and FD-DINOv2, written as JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from .common import add_metric_network_arguments, positive_int

HELP = "score a sample set (ADM .npz or image folder) against a reference: FID, sFID, IS, precision/recall, FD-DINOv2"

log = logging.getLogger("pixelgen.eval")


def add_parser(subparsers):
    p = subparsers.add_parser("eval", help=HELP, description=HELP)
    p.add_argument(
        "samples", help="samples: ADM-format .npz (arr_0 uint8 NHWC, e.g. from `pixelgen sample`) or an image folder"
    )
    p.add_argument(
        "--ref",
        required=True,
        help="reference: ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz), an image folder, or a statistics .npz",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated subset of fid,sfid,is,pr,fd_dinov2 (default: fid,sfid,is,pr, or what a statistics-only reference allows)",
    )
    p.add_argument(
        "--out", default=None, help="JSON file for the results (default: <samples>.metrics.json next to the samples)"
    )
    add_metric_network_arguments(p)
    p.add_argument("--num-samples", type=positive_int, default=None, help="use only the first N samples")
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per feature-network batch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--k", type=positive_int, default=3, help="neighbourhood size of precision/recall (ADM: 3)")
    p.add_argument(
        "--is-split-size", type=positive_int, default=5000, help="samples per Inception Score split (ADM: 5000)"
    )
    p.add_argument(
        "--recompute-ref-stats",
        action="store_true",
        help="ignore mu/sigma stored in the reference .npz and compute them from its images",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import torch

    from pixelgen.eval.metrics import evaluate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    log.info("scoring %s against %s on %s", args.samples, args.ref, device)
    result = evaluate(
        args.samples,
        args.ref,
        metrics=metrics,
        inception_weights=args.inception_weights,
        dinov2_weights=args.dinov2_weights,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=device,
        cache_dir=args.cache_dir,
        k=args.k,
        is_split_size=args.is_split_size,
        use_file_stats=not args.recompute_ref_stats,
        progress=not args.no_progress,
    )
    result["settings"]["command"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    out = Path(args.out) if args.out else Path(str(Path(args.samples)).rstrip("/") + ".metrics.json")
    from pixelgen.utils.io import atomic_save_json

    atomic_save_json(result, out)
    for name, value in result["metrics"].items():
        print(f"{name:22s} {value:.4f}")
    print(f"results written to {out}")
    return 0
