"""``pixelgen sweep RUN_OR_MODEL``: EMA width × guidance scale × interval, paired samples, FID or FD-DINOv2.

Examples::

    pixelgen sweep runs/pixelgen_xl --ema 0.05,0.07,0.1 --guidance 1.5,2,2.25,2.5 --interval 0.1,0.9 \\
        --num 10000 --metric fid --ref VIRTUAL_imagenet256_labeled.npz --preset xl_cfg --out sweeps/xl
    pixelgen sweep ckpt/xl --guidance 1,2,3 --num 5000 --metric fd_dinov2 --ref ref.npz --out sweeps/xl_model

Resumable: rerun the same command after an interruption; finished settings are read back, not recomputed.
"""

from __future__ import annotations

from .common import (
    add_metric_network_arguments,
    add_sampler_step_arguments,
    apply_sampler_step_arguments,
    non_negative_int,
    positive_int,
)

HELP = "sweep EMA width x guidance (paired samples, FID or FD-DINOv2): table, plot and the final-set command"


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ema_list(text: str) -> list[float | str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    return [v if v == "classic" else _float_list(v)[0] for v in items]


def _interval(text: str) -> tuple[float, float]:
    import argparse

    values = _float_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"an interval is MIN,MAX (e.g. 0.1,0.9), got {text!r}")
    return values[0], values[1]


def add_parser(subparsers):
    from pixelgen.registry import registries

    p = subparsers.add_parser("sweep", help=HELP, description=HELP)
    p.add_argument("source", metavar="RUN_OR_MODEL", help="training run with post-hoc EMA snapshots, or a model folder")
    p.add_argument("--ref", required=True, help="reference images or statistics (as for pixelgen eval)")
    p.add_argument("--out", required=True, help="sweep folder (resumable)")
    p.add_argument(
        "--ema",
        type=_ema_list,
        default=None,
        help="relative EMA widths, e.g. 0.05,0.07,0.1, and 'classic' for the run's classic EMA (runs only)",
    )
    p.add_argument("--guidance", type=_float_list, required=True, help="guidance scales, e.g. 1.5,2,2.5")
    p.add_argument(
        "--interval",
        type=_interval,
        action="append",
        default=None,
        help="guidance interval MIN,MAX (repeat to sweep several; default: the preset's, else 0,1)",
    )
    p.add_argument(
        "--num", type=positive_int, required=True, help="samples per setting (the same labels and noise in each)"
    )
    p.add_argument("--per-class", type=positive_int, default=None, help="samples per class (default: num // classes)")
    p.add_argument("--metric", choices=["fid", "fd_dinov2"], default="fid", help="what to minimise (default fid)")
    p.add_argument("--preset", choices=registries.sampling_preset.list(), help="base sampler settings (e.g. xl_cfg)")
    p.add_argument("--sampler", help="registered sampler name (default: the preset's, else heun)")
    add_sampler_step_arguments(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed shared by every setting (paired comparison)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per network batch")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="sampling precision (recorded)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--step", type=non_negative_int, default=None, help="reconstruct the EMAs at this training step (runs only)"
    )
    add_metric_network_arguments(p)
    p.add_argument("--keep-samples", action="store_true", help="keep each setting's samples.npz after scoring")
    p.add_argument(
        "--final-num", type=positive_int, default=50_000, help="size of the final sample set in the printed command"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import torch

    from pixelgen.eval.sweep import ema_order, run_sweep
    from pixelgen.registry import registries

    preset = registries.sampling_preset.build(args.preset) if args.preset else {"sampler": "heun", "params": {}}
    sampler = args.sampler or preset["sampler"]
    params = dict(preset["params"])
    params.setdefault("num_steps", 50)
    apply_sampler_step_arguments(args, sampler, params)
    if sampler != "adams":
        params.pop("order", None)
    intervals = args.interval or [(params.get("guidance_interval_min", 0.0), params.get("guidance_interval_max", 1.0))]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run_sweep(
        args.source,
        args.out,
        reference=args.ref,
        guidance=args.guidance,
        intervals=intervals,
        ema=args.ema,
        num=args.num,
        per_class=args.per_class,
        metric=args.metric,
        sampler=sampler,
        sampler_params=params,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        device=device,
        step=args.step,
        inception_weights=args.inception_weights,
        dinov2_weights=args.dinov2_weights,
        cache_dir=args.cache_dir,
        keep_samples=args.keep_samples,
        final_num=args.final_num,
        progress=not args.no_progress,
    )
    print(f"{len(result.rows)} settings ({result.reused} read back, {result.computed} computed):")
    for row in sorted(
        result.rows,
        key=lambda r: (ema_order(r["ema"]), r["interval"], r["guidance"]),
    ):
        mark = "  <- best" if row["key"] == result.best["key"] else ""
        print(
            f"  EMA {row['ema']:>6}  cfg {row['guidance']:<5g} interval {row['interval']}  {row['metric']} {row['value']:.4f}{mark}"
        )
    b = result.best
    print(f"best: EMA {b['ema']}, guidance {b['guidance']:g}, interval {b['interval']}: {b['metric']} {b['value']:.4f}")
    print(f"table: {result.table_json} and {result.table_csv}; plot: {result.plot}")
    print("final sample set and its score:")
    for cmd in result.commands:
        print(f"  {cmd}")
    return 0
